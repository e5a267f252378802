"""GroundingDINO boxes and SAM masks for Spider's ``<BOX>`` / ``<MASK>`` answer groups.

Spider does not re-train detectors: a ``<BOX>`` group's T-Prompt is handed to GroundingDINO, a ``<MASK>`` group's to
Grounded-SAM (GroundingDINO boxes prompting SAM). Both stay in PyTorch (transformers implementations, loaded from
local folders only) behind this small typed interface; everything returned is plain numpy so the JAX side never
needs torch.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

__all__ = [
    "DINO_REPOS",
    "SAM_REPOS",
    "Detections",
    "GroundingConfig",
    "GroundingDinoHead",
    "GroundingHeads",
    "GroundingWeightsError",
    "Masks",
    "SamHead",
    "as_rgb_uint8",
    "check_weights_folder",
    "normalize_query",
]

DINO_REPOS = ("IDEA-Research/grounding-dino-tiny", "IDEA-Research/grounding-dino-base")
SAM_REPOS = ("facebook/sam-vit-base", "facebook/sam-vit-huge")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class GroundingConfig:
    """Folders and thresholds. Defaults are Grounded-SAM's (box 0.35, text 0.25, one mask per box)."""

    dino: str = ""  # local GroundingDINO folder (e.g. a download of IDEA-Research/grounding-dino-tiny)
    sam: str = ""  # local SAM folder (e.g. a download of facebook/sam-vit-base)
    box_threshold: float = 0.35  # keep a query slot when its best token probability exceeds this
    text_threshold: float = 0.25  # tokens above this form the box's label phrase
    max_boxes: int = 100  # highest-scoring boxes kept per image (0: no limit)
    multimask_output: bool = False  # True: SAM proposes 3 masks per box, the best predicted IoU is kept
    mask_threshold: float = 0.0  # on SAM's mask logits
    device: str = "cpu"
    dtype: str = "float32"  # float32 | bfloat16 | float16
    batch_size: int = 8  # images per GroundingDINO forward pass

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"grounding dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.max_boxes < 0 or self.batch_size < 1:
            raise ValueError("max_boxes must be >= 0 and batch_size >= 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None = None, **overrides: Any) -> GroundingConfig:
        """From a dict / ``ml_collections.ConfigDict``; unknown keys raise (a typo must not silently do nothing)."""
        if d is not None and hasattr(d, "to_dict"):
            d = d.to_dict()
        values = {**dict(d or {}), **overrides}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown grounding config keys {unknown}; known: {sorted(known)}")
        # ml_collections may hand ints for float fields (or numpy scalars): normalise the numeric ones.
        casts = {f.name: {"float": float, "int": int}.get(str(f.type)) for f in dataclasses.fields(cls)}
        return cls(**{k: casts[k](v) if casts[k] else v for k, v in values.items()})

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


# ------------------------------------------------------------------------------------------ weights


class GroundingWeightsError(FileNotFoundError):
    """A GroundingDINO / SAM folder is missing or incomplete; the message says what to download and where."""


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_PROCESSOR = ("processor_config.json", "preprocessor_config.json")
_TOKENIZER = ("tokenizer.json", "vocab.txt")
_KINDS = {
    "dino": ("GroundingDINO", "dino", DINO_REPOS, "vocab.txt/tokenizer.json + tokenizer_config.json"),
    "sam": ("SAM", "sam", SAM_REPOS, ""),
}


def _folder_problems(folder: str | Path, kind: str) -> list[str]:
    if not str(folder):
        return ["no folder configured"]
    path = Path(folder)
    if not path.is_dir():
        return ["the folder does not exist"]
    names = {p.name for p in path.iterdir()}
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not names & set(_WEIGHTS):
        missing.append("model.safetensors (weights)")
    if not names & set(_PROCESSOR):
        missing.append("preprocessor_config.json")
    if kind == "dino" and not names & set(_TOKENIZER):
        missing.append("tokenizer files (vocab.txt / tokenizer.json)")
    return [f"missing {', '.join(missing)}"] if missing else []


def _weights_message(folder: str | Path, kind: str, problems: list[str]) -> str:
    name, key, repos, tokenizer = _KINDS[kind]
    where = str(Path(folder).absolute()) if str(folder) else f"<unset: grounding.{key}>"
    target = where if str(folder) else f"/path/to/{repos[0].split('/')[-1]}"
    expected = "config.json, model.safetensors, preprocessor_config.json" + (f", {tokenizer}" if tokenizer else "")
    return (
        f"{name} weights not found in {where}: {'; '.join(problems)}.\n"
        f"  Download a checkpoint: `hf download {repos[0]} --local-dir {target}` (or {repos[1]}),\n"
        f"  then set grounding.{key} to that folder. It must contain {expected}.\n"
        "  Offline tests/demos: spider_jax.grounding.tiny.make_tiny_grounding_folders(root) builds tiny random ones."
    )


def check_weights_folder(folder: str | Path, kind: str) -> Path:
    """Returns the folder if it looks like a complete transformers checkpoint, else :class:`GroundingWeightsError`."""
    problems = _folder_problems(folder, kind)
    if problems:
        raise GroundingWeightsError(_weights_message(folder, kind, problems))
    return Path(folder)


def _check_all(config: GroundingConfig, kinds: Sequence[str]) -> None:
    """One error for every missing folder at once (no download-one-then-fail-on-the-next round trips)."""
    messages = []
    for kind in kinds:
        folder = getattr(config, kind)
        problems = _folder_problems(folder, kind)
        if problems:
            messages.append(_weights_message(folder, kind, problems))
    if messages:
        raise GroundingWeightsError("\n".join(messages))


# ------------------------------------------------------------------------------------------ results


@dataclasses.dataclass(frozen=True, eq=False)
class Detections:
    """GroundingDINO boxes for one image, sorted by descending score and clipped to the image."""

    boxes_xyxy: np.ndarray  # (N, 4) float32, absolute pixels [x1, y1, x2, y2]
    boxes_norm: np.ndarray  # (N, 4) float32, boxes_xyxy / [W, H, W, H] in [0, 1]
    scores: np.ndarray  # (N,) float32
    labels: tuple[str, ...]  # matched phrase per box
    image_size: tuple[int, int]  # (height, width)
    query: str = ""  # the normalised text GroundingDINO saw

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Masks:
    """SAM masks for one image, one per prompt box, at the original image size."""

    masks: np.ndarray  # (N, H, W) bool
    scores: np.ndarray  # (N,) float32, SAM's predicted IoU
    boxes_xyxy: np.ndarray  # (N, 4) float32, the absolute prompt boxes
    image_size: tuple[int, int]  # (height, width)

    def __len__(self) -> int:
        return int(self.scores.shape[0])


# ------------------------------------------------------------------------------------------ inputs

_BOX_LITERAL = re.compile(r"\[\s*[-\d.]+\s*(?:,\s*[-\d.]+\s*){3}\]")  # "[x1, y1, x2, y2]" stated in a T-Prompt
ImageLike = Any  # numpy uint8 HWC / HW, float HWC in [0, 1], PIL image, or jax.Array


def normalize_query(text: str | Sequence[str]) -> str:
    """GroundingDINO's text convention: lower case, phrases separated and terminated by ``.``.

    A list is taken as several phrases. Box literals (``[0.1, 0.2, 0.5, 0.6]``) a T-Prompt may carry are dropped.
    """
    phrases = [text] if isinstance(text, str) else list(text)
    cleaned = []
    for phrase in phrases:
        phrase = " ".join(_BOX_LITERAL.sub(" ", phrase).lower().split()).strip(" .,;:!")
        if phrase:
            cleaned.append(phrase)
    if not cleaned:
        raise ValueError(f"empty grounding query {text!r}")
    return ". ".join(cleaned) + "."


def as_rgb_uint8(image: ImageLike) -> np.ndarray:
    """(H, W, 3) uint8: grey/RGBA/float[0,1]/PIL/jax inputs all become the same thing the processors expect."""
    if isinstance(image, PIL.Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an HWC image with 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype.name == "bfloat16"):  # ml_dtypes bf16: kind "V"
            raise TypeError(f"images must be uint8 or float in [0, 1], got {arr.dtype}")
        arr = np.round(np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def _image_list(images: ImageLike | Sequence[ImageLike]) -> list[PIL.Image.Image]:
    """A batch as PIL RGB images (unambiguous channel layout for the transformers processors)."""
    if isinstance(images, PIL.Image.Image):
        images = [images]
    elif not isinstance(images, (list, tuple)):
        arr = np.asarray(images)
        images = [arr] if arr.ndim in (2, 3) else list(arr)
    return [PIL.Image.fromarray(as_rgb_uint8(im)) for im in images]


def _query_list(queries: str | Sequence[str], n: int) -> list[str]:
    if isinstance(queries, str):
        queries = [queries] * n
    if len(queries) != n:
        raise ValueError(f"{len(queries)} queries for {n} images")
    return [normalize_query(q) for q in queries]


def _to_device(batch: Mapping[str, Any], device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Tensors to the model's device; floating ones (pixels, box prompts) to the model's dtype."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------ heads


def _load(model_cls: Any, folder: Path, config: GroundingConfig) -> tuple[Any, Any]:
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = model_cls.from_pretrained(folder, local_files_only=True)
    return model.to(device=config.device, dtype=config.torch_dtype).eval(), processor


class GroundingDinoHead:
    """Text-prompted boxes: ``head(images, queries) -> list[Detections]``."""

    def __init__(self, model: Any, processor: Any, config: GroundingConfig) -> None:
        self.model, self.processor, self.config = model, processor, config
        self._special = set(getattr(processor.tokenizer, "all_special_tokens", ()))

    @classmethod
    def from_folder(cls, folder: str | Path, config: GroundingConfig = GroundingConfig()) -> GroundingDinoHead:
        import transformers

        folder = check_weights_folder(folder, "dino")
        return cls(*_load(transformers.GroundingDinoForObjectDetection, folder, config), config)

    def _clean(self, label: str) -> str:
        words = [w for w in label.split() if w not in self._special]
        return " ".join(words).strip(" .")

    @torch.no_grad()
    def __call__(
        self, images: ImageLike | Sequence[ImageLike], queries: str | Sequence[str], **thresholds: float
    ) -> list[Detections]:
        """Boxes per image; ``thresholds`` may override ``box_threshold`` / ``text_threshold`` for this call."""
        bad = sorted(set(thresholds) - {"box_threshold", "text_threshold", "max_boxes"})
        if bad:
            raise ValueError(f"per-call overrides are box_threshold / text_threshold / max_boxes, got {bad}")
        cfg = dataclasses.replace(self.config, **thresholds) if thresholds else self.config
        pils = _image_list(images)
        texts = _query_list(queries, len(pils))
        results: list[Detections] = []
        for start in range(0, len(pils), cfg.batch_size):
            chunk, chunk_texts = pils[start : start + cfg.batch_size], texts[start : start + cfg.batch_size]
            batch = self.processor(images=chunk, text=chunk_texts, return_tensors="pt", padding="longest")
            batch = _to_device(batch, cfg.device, cfg.torch_dtype)
            out = self.model(**batch)
            # Post-process in float32 whatever the model dtype: scores near the threshold must not flip.
            raw = types.SimpleNamespace(logits=out.logits.float(), pred_boxes=out.pred_boxes.float(), input_ids=None)
            sizes = [(im.height, im.width) for im in chunk]
            processed = self.processor.post_process_grounded_object_detection(
                raw, batch["input_ids"], threshold=cfg.box_threshold, text_threshold=cfg.text_threshold,
                target_sizes=sizes,
            )  # fmt: skip
            for res, size, text in zip(processed, sizes, chunk_texts, strict=True):
                results.append(self._detections(res, size, text, cfg.max_boxes))
        return results

    def _detections(self, res: Mapping[str, Any], size: tuple[int, int], query: str, max_boxes: int) -> Detections:
        h, w = size
        scores = res["scores"].float().cpu()
        order = torch.argsort(scores, descending=True, stable=True)
        if max_boxes:
            order = order[:max_boxes]
        scale = np.array([w, h, w, h], np.float32)
        boxes = res["boxes"].float().cpu()[order].numpy().reshape(-1, 4)
        boxes = np.clip(boxes, 0.0, scale).astype(np.float32)
        labels = tuple(self._clean(res["text_labels"][i]) for i in order.tolist())
        return Detections(
            boxes_xyxy=boxes, boxes_norm=(boxes / scale).astype(np.float32),
            scores=scores[order].numpy().astype(np.float32), labels=labels, image_size=(h, w), query=query,
        )  # fmt: skip


class SamHead:
    """Box-prompted masks: ``head(images, boxes) -> list[Masks]`` (one mask per box, original image size)."""

    def __init__(self, model: Any, processor: Any, config: GroundingConfig) -> None:
        self.model, self.processor, self.config = model, processor, config

    @classmethod
    def from_folder(cls, folder: str | Path, config: GroundingConfig = GroundingConfig()) -> SamHead:
        import transformers

        folder = check_weights_folder(folder, "sam")
        return cls(*_load(transformers.SamModel, folder, config), config)

    @torch.no_grad()
    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike],
        boxes: Sequence[np.ndarray | Detections | Sequence[Sequence[float]]],
        normalized: bool = False,
    ) -> list[Masks]:
        """Masks per image for its ``(N, 4)`` xyxy boxes (absolute pixels, or [0, 1] when ``normalized``)."""
        pils = _image_list(images)
        if len(boxes) != len(pils):
            raise ValueError(f"{len(boxes)} box sets for {len(pils)} images")
        return [self._one(im, b, normalized) for im, b in zip(pils, boxes, strict=True)]

    def _one(self, image: PIL.Image.Image, boxes: Any, normalized: bool) -> Masks:
        cfg = self.config
        h, w = image.height, image.width
        if isinstance(boxes, Detections):
            boxes = boxes.boxes_xyxy
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if normalized:
            boxes = boxes * np.array([w, h, w, h], np.float32)
        if len(boxes) == 0:
            empty = np.zeros((0,), np.float32)
            return Masks(np.zeros((0, h, w), bool), empty, boxes, (h, w))
        # One forward per image: the image embedding is computed once and shared by all of its box prompts.
        batch = self.processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
        out = self.model(**_to_device(batch, cfg.device, cfg.torch_dtype), multimask_output=cfg.multimask_output)
        pred, iou = out.pred_masks[0].float(), out.iou_scores[0].float()  # (N, M, h', w'), (N, M)
        best = iou.argmax(-1)  # M == 1 unless multimask_output
        rows = torch.arange(pred.shape[0], device=pred.device)
        pred, iou = pred[rows, best][:, None], iou[rows, best]
        masks = self.processor.post_process_masks(
            [pred.cpu()], batch["original_sizes"], batch["reshaped_input_sizes"], mask_threshold=cfg.mask_threshold
        )[0][:, 0]
        return Masks(masks.numpy().astype(bool), iou.cpu().numpy().astype(np.float32), boxes, (h, w))


class GroundingHeads:
    """Both heads behind one config; each loads on first use so a BOX-only run never needs SAM weights."""

    def __init__(self, config: GroundingConfig, dino: GroundingDinoHead | None = None, sam: SamHead | None = None):
        self.config = config
        self._dino, self._sam = dino, sam

    @classmethod
    def from_config(cls, config: GroundingConfig | Mapping[str, Any]) -> GroundingHeads:
        """From a :class:`GroundingConfig` or the ``cfg.grounding`` dict / ``ConfigDict`` (nothing loads yet)."""
        return cls(config if isinstance(config, GroundingConfig) else GroundingConfig.from_dict(config))

    @property
    def dino(self) -> GroundingDinoHead:
        if self._dino is None:
            self._dino = GroundingDinoHead.from_folder(self.config.dino, self.config)
        return self._dino

    @property
    def sam(self) -> SamHead:
        if self._sam is None:
            self._sam = SamHead.from_folder(self.config.sam, self.config)
        return self._sam

    def ground(
        self, images: ImageLike | Sequence[ImageLike], queries: str | Sequence[str], **thresholds: float
    ) -> list[Detections]:
        """``<BOX>``: the group's T-Prompt → GroundingDINO boxes for each image."""
        return self.dino(images, queries, **thresholds)

    def segment(
        self, images: ImageLike | Sequence[ImageLike], boxes: Sequence[Any], normalized: bool = False
    ) -> list[Masks]:
        """SAM masks for given boxes (one mask per box)."""
        return self.sam(images, boxes, normalized=normalized)

    def ground_and_segment(
        self, images: ImageLike | Sequence[ImageLike], queries: str | Sequence[str], **thresholds: float
    ) -> list[tuple[Detections, Masks]]:
        """``<MASK>`` (Grounded-SAM): GroundingDINO boxes for the T-Prompt, then SAM prompted with those boxes."""
        _check_all(self.config, [k for k, head in (("dino", self._dino), ("sam", self._sam)) if head is None])
        pils = _image_list(images)
        detections = self.ground(pils, queries, **thresholds)
        masks = self.segment(pils, detections)
        return list(zip(detections, masks, strict=True))
