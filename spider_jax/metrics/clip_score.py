"""CLIP-based scores of the paper's tables: CLIP (I2I, ×100), CLIPSIM (T2V), CLIP-T and CLIP-I (V2V).

All of them are cosine similarities between L2-normalised CLIP projections (``transformers.CLIPModel`` +
``CLIPProcessor`` loaded from a local folder; the processor does CLIP's own resize / centre-crop / normalisation):

* ``clip_score``  — text ↔ image, one pair per sample, mean × 100 (the "CLIP" column of Image-to-Image, 30.52);
* ``clipsim``     — text ↔ every frame of a video, mean over frames then over videos (Make-A-Video / NExT-GPT
  CLIPSIM, printed as a fraction: 0.3258);
* ``clip_t``      — CLIPSIM of an *edited* video against its target prompt (Pix2Video's CLIP-T, 0.2782);
* ``clip_i``      — image ↔ image for paired images (e.g. edited vs source frame);
* ``clip_frame_consistency`` — mean cosine of consecutive frames of one video (Pix2Video's CLIP-I, 0.9715).

Why the ``scale`` arguments and their defaults: the paper prints CLIP ×100 but CLIPSIM / CLIP-T / CLIP-I as
fractions; the defaults reproduce those conventions and any other is one keyword away. Similarities are not
clamped at 0 (torchmetrics' CLIPScore clamps; the two differ only for negative cosines, which real CLIP models do
not produce on natural image/caption pairs).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spider_jax.metrics.feature_models import image_to_unit_float, load_image, load_video_frames, resolve_weights


def _as_uint8(item: Any) -> np.ndarray:
    """CLIP's processor rescales by 1/255, so float [0, 1] images are turned into uint8 first."""
    arr = load_image(item)
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(image_to_unit_float(arr) * 255.0), 0, 255).astype(np.uint8)
    return arr


class ClipScorer:
    """A local CLIP model (+ processor) that embeds texts and images into its joint space, L2-normalised."""

    def __init__(self, model_dir: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 32) -> None:
        path = resolve_weights("clip", model_dir)
        from transformers import CLIPModel, CLIPProcessor

        self.device = device
        self.batch_size = batch_size
        self.model = CLIPModel.from_pretrained(str(path)).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(str(path))
        self.name = f"clip:{Path(path).name}"

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, D)`` unit-norm text embeddings; texts longer than CLIP's context (77 tokens) are truncated."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.processor(text=list(texts[i:i + self.batch_size]), return_tensors="pt", padding=True,
                                 truncation=True)
            tok = {k: v.to(self.device) for k, v in tok.items()}
            out.append(self.model.get_text_features(**tok).pooler_output)
        return _normalise(torch.cat(out)) if out else np.zeros((0, self.model.config.projection_dim))

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """``(N, D)`` unit-norm image embeddings of arrays / PIL images / paths (batched)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            pix = self.processor(images=[_as_uint8(x) for x in images[i:i + self.batch_size]], return_tensors="pt")
            out.append(self.model.get_image_features(pixel_values=pix["pixel_values"].to(self.device)).pooler_output)
        return _normalise(torch.cat(out)) if out else np.zeros((0, self.model.config.projection_dim))


def _normalise(x: torch.Tensor) -> np.ndarray:
    x = x.double()
    return (x / x.norm(dim=-1, keepdim=True)).cpu().numpy()


def _check_pairs(a: Sequence[Any], b: Sequence[Any], what: str) -> None:
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"{what}: need the same non-zero number of items on both sides, got {len(a)} and {len(b)}")


def clip_score(scorer: ClipScorer, images: Sequence[Any], texts: Sequence[str], *, scale: float = 100.0) -> float:
    """Mean over pairs of ``scale · cos(CLIP(image_i), CLIP(text_i))`` (default ×100, the I2I "CLIP" column)."""
    _check_pairs(images, texts, "clip_score")
    sims = (scorer.embed_images(images) * scorer.embed_texts(texts)).sum(axis=1)
    return float(scale * sims.mean())


def clipsim_per_video(scorer: ClipScorer, videos: Sequence[Any], texts: Sequence[str], *,
                      max_frames: int | None = None) -> np.ndarray:
    """Per video, the mean over its frames of ``cos(CLIP(frame), CLIP(text))`` (unscaled), shape ``(N,)``.

    A video is a path (decoded with PyAV), a ``(T, H, W, 3)`` array or a list of frames.
    """
    _check_pairs(videos, texts, "clipsim")
    text_emb = scorer.embed_texts(texts)
    scores = []
    for video, t in zip(videos, text_emb, strict=True):
        frames = scorer.embed_images(load_video_frames(video, max_frames))
        scores.append(float((frames @ t).mean()))
    return np.asarray(scores)


def clipsim(scorer: ClipScorer, videos: Sequence[Any], texts: Sequence[str], *, scale: float = 1.0,
            max_frames: int | None = None) -> float:
    """CLIPSIM: mean over videos of the mean text–frame CLIP cosine (default unscaled, as the paper's 0.3258)."""
    return float(scale * clipsim_per_video(scorer, videos, texts, max_frames=max_frames).mean())


def clip_t(scorer: ClipScorer, edited_videos: Sequence[Any], target_texts: Sequence[str], *, scale: float = 1.0,
           max_frames: int | None = None) -> float:
    """CLIP-T: CLIPSIM of edited videos (or single images) against their target (edit) prompts."""
    return clipsim(scorer, edited_videos, target_texts, scale=scale, max_frames=max_frames)


def clip_i(scorer: ClipScorer, images_a: Sequence[Any], images_b: Sequence[Any], *, scale: float = 1.0) -> float:
    """CLIP-I for paired images: mean ``cos(CLIP(a_i), CLIP(b_i))`` (e.g. edited vs. source frame)."""
    _check_pairs(images_a, images_b, "clip_i")
    return float(scale * (scorer.embed_images(images_a) * scorer.embed_images(images_b)).sum(axis=1).mean())


def clip_frame_consistency(scorer: ClipScorer, videos: Sequence[Any], *, scale: float = 1.0,
                           max_frames: int | None = None) -> float:
    """Pix2Video's CLIP-I: mean over videos of the mean cosine between consecutive frames' CLIP embeddings."""
    if len(videos) == 0:
        raise ValueError("clip_frame_consistency: no videos")
    scores = []
    for video in videos:
        emb = scorer.embed_images(load_video_frames(video, max_frames))
        if emb.shape[0] < 2:
            raise ValueError("clip_frame_consistency needs videos with at least 2 frames")
        scores.append(float((emb[1:] * emb[:-1]).sum(axis=1).mean()))
    return float(scale * np.mean(scores))
