"""What ``<BOX>`` / ``<MASK>`` answers turn into on disk: COCO-style JSON, RLE masks and PNG overlays.

Why COCO conventions: evaluation (pycocotools) and most viewers read them directly. Boxes are written three ways
so no consumer has to guess: absolute ``[x1, y1, x2, y2]``, the same normalised to [0, 1] (Spider's text format),
and COCO's absolute ``bbox = [x, y, w, h]``. Masks are COCO RLE with ``counts`` as a str so the JSON is plain.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
from pycocotools import mask as mask_utils

from spider_jax.grounding.heads import Detections, ImageLike, Masks, as_rgb_uint8

__all__ = [
    "PALETTE",
    "detections_to_json",
    "draw_overlay",
    "masks_to_json",
    "masks_to_rle",
    "rle_to_masks",
    "save_json",
    "save_overlay",
    "write_overlay",
]

# Distinct, readable colours (tab10); box i and mask i share colour i.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values).reshape(-1)]


def masks_to_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLE per mask of an ``(N, H, W)`` bool array; ``counts`` decoded to str for JSON."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    # pycocotools wants (H, W, N) uint8 in Fortran order.
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def _coco_rle(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rle_to_masks(rles: Sequence[dict[str, Any]], image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Inverse of :func:`masks_to_rle`: ``(N, H, W)`` bool (``image_size`` gives H, W when there are no masks)."""
    if not rles:
        if image_size is None:
            raise ValueError("image_size is needed to decode an empty list of masks")
        return np.zeros((0, *image_size), bool)
    decoded = mask_utils.decode([_coco_rle(r) for r in rles])  # (H, W, N)
    return np.ascontiguousarray(decoded.transpose(2, 0, 1)).astype(bool)


def _box_fields(xyxy: np.ndarray, size: tuple[int, int]) -> dict[str, Any]:
    h, w = size
    x1, y1, x2, y2 = _floats(xyxy)
    return {
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "bbox_xyxy": [x1, y1, x2, y2],
        "bbox_xyxy_norm": [x1 / w, y1 / h, x2 / w, y2 / h],
        "area": (x2 - x1) * (y2 - y1),
    }


def _image_entry(size: tuple[int, int], image_id: int | str | None) -> dict[str, Any]:
    return {"id": image_id, "height": int(size[0]), "width": int(size[1])}


def detections_to_json(
    detections: Detections, image_id: int | str | None = None, masks: Masks | None = None
) -> dict[str, Any]:
    """One image's boxes (and optionally their SAM masks, paired by index) as a JSON-ready dict."""
    if masks is not None and len(masks) != len(detections):
        raise ValueError(f"{len(masks)} masks for {len(detections)} boxes")
    rles = masks_to_rle(masks.masks) if masks is not None else []
    annotations = []
    for i in range(len(detections)):
        ann = {"id": i, "image_id": image_id, "label": detections.labels[i], "score": float(detections.scores[i])}
        ann.update(_box_fields(detections.boxes_xyxy[i], detections.image_size))
        if masks is not None:
            ann["segmentation"] = rles[i]
            ann["mask_score"] = float(masks.scores[i])
            ann["mask_area"] = int(mask_utils.area(_coco_rle(rles[i])))
        annotations.append(ann)
    return {
        "image": _image_entry(detections.image_size, image_id),
        "dino_text": detections.query,  # the normalised text GroundingDINO saw (not the raw T-Prompt)
        "annotations": annotations,
    }


def masks_to_json(
    masks: Masks, image_id: int | str | None = None, labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Masks from given boxes (no detector) as a JSON-ready dict; ``bbox`` fields describe the prompt boxes."""
    rles = masks_to_rle(masks.masks)
    annotations = []
    for i, rle in enumerate(rles):
        label = labels[i] if labels is not None else ""
        ann = {"id": i, "image_id": image_id, "label": label, "score": float(masks.scores[i])}
        ann.update(_box_fields(masks.boxes_xyxy[i], masks.image_size))
        ann["segmentation"] = rle
        ann["mask_area"] = int(mask_utils.area(_coco_rle(rle)))
        annotations.append(ann)
    return {"image": _image_entry(masks.image_size, image_id), "annotations": annotations}


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Writes ``obj`` as indented UTF-8 JSON (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def draw_overlay(
    image: ImageLike, detections: Detections | None = None, masks: Masks | None = None, alpha: float = 0.45
) -> PIL.Image.Image:
    """The image with translucent coloured masks, box rectangles and ``label score`` captions."""
    rgb = as_rgb_uint8(image).astype(np.float32)
    h, w = rgb.shape[:2]
    if masks is not None:
        if masks.masks.shape[1:] != (h, w):
            raise ValueError(f"masks are {masks.masks.shape[1:]}, image is {(h, w)}")
        for i, m in enumerate(masks.masks):
            color = np.asarray(PALETTE[i % len(PALETTE)], np.float32)
            rgb[m] = (1.0 - alpha) * rgb[m] + alpha * color
    out = PIL.Image.fromarray(np.round(rgb).clip(0, 255).astype(np.uint8))
    draw = PIL.ImageDraw.Draw(out)
    font = PIL.ImageFont.load_default()
    width = max(1, round(min(h, w) / 200))
    if detections is not None:
        boxes = detections.boxes_xyxy
        pairs = zip(detections.labels, detections.scores, strict=True)
        captions = [f"{label} {score:.2f}".strip() for label, score in pairs]
    elif masks is not None:
        boxes, captions = masks.boxes_xyxy, [f"{s:.2f}" for s in masks.scores]
    else:
        boxes, captions = np.zeros((0, 4)), []
    for i, (box, caption) in enumerate(zip(boxes, captions, strict=True)):
        color = PALETTE[i % len(PALETTE)]
        x1, y1, x2, y2 = _floats(box)
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=color, width=width)
        left, top, right, bottom = draw.textbbox((x1, y1), caption, font=font)
        dy = min(y1, bottom - top)  # caption above the box when there is room, else inside it
        draw.rectangle([left, top - dy, right, bottom - dy], fill=color)
        draw.text((x1, y1 - dy), caption, fill=(255, 255, 255), font=font)
    return out


def save_overlay(
    path: str | os.PathLike,
    image: ImageLike,
    detections: Detections | None = None,
    masks: Masks | None = None,
    alpha: float = 0.45,
) -> Path:
    """:func:`draw_overlay` written as a PNG to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_overlay(image, detections, masks, alpha).save(path, format="PNG")
    return path


def write_overlay(
    image: ImageLike,
    path: str | os.PathLike,
    detections: Detections | None = None,
    masks: Masks | None = None,
    alpha: float = 0.45,
) -> Path:
    """:func:`save_overlay` with the image first (the order the response writer calls it in)."""
    return save_overlay(path, image, detections, masks, alpha)
