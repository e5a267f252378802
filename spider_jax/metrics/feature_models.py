"""Where the metric networks' weights live, what to say when they are absent, and how media is read for them.

Why a registry: every media metric in the paper (FID/IS, FD, CLIP/CLIPSIM/CLIP-T/CLIP-I) depends on a specific
pretrained network whose weights cannot be fetched at run time here (no hub access). A metric whose network is
missing must be *skipped with a reason*, never replaced by a number from random weights, so loaders raise
:class:`MissingMetricWeights` (naming the file, where it comes from and where to put it) and callers wrap them in
:func:`try_metric`.

Weights are looked up under ``$SPIDER_METRIC_WEIGHTS`` (default ``./weights/metrics``) unless a path is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

WEIGHTS_ENV = "SPIDER_METRIC_WEIGHTS"
DEFAULT_WEIGHTS_ROOT = os.path.join("weights", "metrics")

T = TypeVar("T")
PathLike = str | os.PathLike


class MissingMetricWeights(FileNotFoundError):
    """A metric's pretrained network is not on disk; the message says what to download and where to put it."""


@dataclass(frozen=True)
class WeightsSpec:
    """One metric network: the file/folder name we expect, where it is published, and what it is used for."""

    key: str
    name: str  # file or folder name under the weights root
    source: str  # where a person downloads it
    used_for: str
    is_dir: bool = False
    required: tuple[str, ...] = ()  # files that must exist inside a folder


REGISTRY: dict[str, WeightsSpec] = {
    "inception": WeightsSpec(
        "inception",
        "pt_inception-2015-12-05-6726825d.pth",
        "the pytorch-fid release 'fid_weights' (github.com/mseitzer/pytorch-fid/releases, file "
        "pt_inception-2015-12-05-6726825d.pth; the TF 2015-12-05 Inception graph ported to PyTorch)",
        "FID and Inception Score",
    ),
    "clip": WeightsSpec(
        "clip",
        "clip-vit-large-patch14",
        "the Hugging Face repo openai/clip-vit-large-patch14 (config.json, model.safetensors, tokenizer and "
        "preprocessor files; any CLIPModel folder works, the paper does not name its CLIP variant)",
        "CLIP score, CLIPSIM, CLIP-T and CLIP-I",
        is_dir=True,
        required=("config.json",),
    ),
    "clap": WeightsSpec(
        "clap",
        "clap-htsat-unfused",
        "the Hugging Face repo laion/clap-htsat-unfused (config.json, model.safetensors, preprocessor_config.json)",
        "FD (audio Frechet distance on CLAP embeddings)",
        is_dir=True,
        required=("config.json",),
    ),
}


def weights_root() -> Path:
    """The folder holding all metric weights (``$SPIDER_METRIC_WEIGHTS`` or ``./weights/metrics``)."""
    return Path(os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_ROOT)


def resolve_weights(key: str, path: PathLike | None = None) -> Path:
    """Return the existing path of registry entry ``key`` (or of ``path``) or raise :class:`MissingMetricWeights`.

    Checking up front, before any library call, is what keeps a library from trying (and failing, or worse,
    succeeding) to download weights behind our back.
    """
    spec = REGISTRY[key]
    target = Path(path) if path is not None else weights_root() / spec.name
    missing: list[str] = []
    if spec.is_dir:
        if not target.is_dir():
            missing.append(str(target))
        else:
            missing += [str(target / f) for f in spec.required if not (target / f).exists()]
    elif not target.is_file():
        missing.append(str(target))
    if missing:
        where = f"put it at {target}" if path is not None else f"put it at {target} (or set ${WEIGHTS_ENV})"
        kind = "folder" if spec.is_dir else "file"
        raise MissingMetricWeights(
            f"{spec.used_for} needs the {kind} '{spec.name}' (missing: {', '.join(missing)}). "
            f"Download it from {spec.source} and {where}."
        )
    return target


def try_metric(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T | None, str | None]:
    """Run ``fn(*args, **kwargs)``; return ``(value, None)`` or ``(None, reason)`` when its weights are missing.

    Only :class:`MissingMetricWeights` becomes a skip: any other error is a real bug and propagates.
    """
    try:
        return fn(*args, **kwargs), None
    except MissingMetricWeights as e:
        return None, str(e)


# ------------------------------------------------------------------------------------------------ media


def load_image(item: PathLike | np.ndarray | Any) -> np.ndarray:
    """An image as ``(H, W, 3)`` array: paths are read with PIL (RGB), PIL images converted, arrays passed on.

    Arrays may be uint8 in [0, 255] or float in [0, 1]; grayscale ``(H, W)`` / ``(H, W, 1)`` is repeated to RGB
    and an alpha channel dropped, as FID tools do when they ``convert('RGB')``.
    """
    if isinstance(item, str | os.PathLike):
        from PIL import Image

        with Image.open(item) as im:
            return np.asarray(im.convert("RGB"))
    if hasattr(item, "convert") and not isinstance(item, np.ndarray):  # PIL.Image
        return np.asarray(item.convert("RGB"))
    arr = np.asarray(item)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr[..., :3]


def image_to_unit_float(arr: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] → float32 [0, 1]; float input is assumed to be in [0, 1] already (checked loosely)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    out = arr.astype(np.float32)
    if out.size and (out.min() < -1e-3 or out.max() > 1.0 + 1e-3):
        raise ValueError("float images must be in [0, 1]; pass uint8 for [0, 255] data")
    return out


def load_audio(item: PathLike | np.ndarray | tuple[np.ndarray, int], target_sr: int) -> np.ndarray:
    """A mono float32 waveform at ``target_sr``.

    ``item`` is a sound file path (read by soundfile), a ``(waveform, sample_rate)`` pair, or a bare array that is
    taken to be at ``target_sr`` already. Multi-channel audio is averaged; resampling is polyphase (scipy).
    """
    if isinstance(item, str | os.PathLike):
        import soundfile as sf

        wav, sr = sf.read(str(item), dtype="float32", always_2d=True)
        wav = wav.mean(axis=1)
    elif isinstance(item, tuple):
        wav, sr = np.asarray(item[0], dtype=np.float32), int(item[1])
    else:
        wav, sr = np.asarray(item, dtype=np.float32), target_sr
    if wav.ndim == 2:  # (channels, samples) or (samples, channels): average the short axis
        wav = wav.mean(axis=0 if wav.shape[0] < wav.shape[1] else 1)
    if wav.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {wav.shape}")
    return resample(wav, sr, target_sr)


def resample(wav: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling with the rational factor reduced by the gcd (exact for 16 k ↔ 48 k)."""
    if sr == target_sr:
        return wav.astype(np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(sr), int(target_sr))
    return resample_poly(wav, target_sr // g, sr // g).astype(np.float32)


def load_video_frames(item: PathLike | Sequence[Any] | np.ndarray, max_frames: int | None = None) -> list[np.ndarray]:
    """Frames of a video as a list of ``(H, W, 3)`` uint8 arrays.

    A path is decoded with PyAV; a ``(T, H, W, C)`` array or a list of images is passed through ``load_image``; a
    single image (``(H, W, C)`` array or PIL image) is a one-frame video, so image editing reuses the video scores.
    ``max_frames`` keeps that many frames evenly spaced over the clip (CLIPSIM is a mean over frames, so a uniform
    subsample is an unbiased estimate of it).
    """
    if isinstance(item, str | os.PathLike):
        import av

        with av.open(str(item)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    elif (isinstance(item, np.ndarray) and item.ndim == 3) or hasattr(item, "convert"):
        frames = [load_image(item)]
    else:
        frames = [load_image(f) for f in item]
    if not frames:
        raise ValueError(f"no frames in {item if isinstance(item, str | os.PathLike) else 'the given video'}")
    if max_frames is not None and len(frames) > max_frames:
        idx = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in idx]
    return frames
