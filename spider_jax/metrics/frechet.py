"""Fréchet distance (FID for images/video frames, FD for audio) and the Inception Score.

Why our own few lines instead of ``pytorch_fid.fid_score.calculate_frechet_distance``: that module imports
``pytorch_fid.inception``, which imports torchvision at import time, and no torchvision wheel that works with the
CPU torch build is reachable here. The formula below is the same computation step for step (Dowson & Landau
closed form; ``scipy.linalg.sqrtm`` of ``Σ1·Σ2``; an ``eps·I`` offset when the product is singular; the imaginary
part of the root discarded only when it is numerical noise), and the tests check it against the library whenever
the library imports.

The wrappers :func:`fid` / :func:`fd` are modality-agnostic: an *extractor* (see ``inception.py``,
``audio_features.py``) turns a batch of raw items (arrays or file paths) into a ``(B, D)`` feature matrix, and the
Gaussian statistics of a set can be cached to ``.npz`` (``mu``, ``sigma``, ``n``, ``extractor``) so a reference set
(e.g. COCO val, AudioCaps test) is embedded once.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy import linalg


class FeatureExtractor(Protocol):
    """Anything that maps a batch of raw items (arrays or paths) to a ``(B, D)`` float feature matrix."""

    name: str

    def __call__(self, batch: Sequence[Any]) -> np.ndarray: ...


@dataclass(frozen=True)
class FeatureStats:
    """Gaussian summary of a feature set: mean ``mu (D,)``, covariance ``sigma (D, D)``, sample count ``n``."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    extractor: str = ""

    def save(self, path: str | os.PathLike) -> None:
        """Write ``mu``, ``sigma``, ``n`` and the extractor name to ``path`` (``.npz``; pytorch-fid reads it too)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # a file object keeps numpy from appending a second ".npz"
            np.savez(f, mu=self.mu, sigma=self.sigma, n=self.n, extractor=self.extractor)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Read statistics written by :meth:`save` (or any ``.npz`` with ``mu`` and ``sigma``, e.g. pytorch-fid's)."""
        with np.load(path) as z:
            n = int(z["n"]) if "n" in z else -1
            name = str(z["extractor"]) if "extractor" in z else ""
            return cls(np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64), n, name)


def feature_statistics(features: np.ndarray, extractor: str = "") -> FeatureStats:
    """Mean and unbiased covariance (``np.cov(rowvar=False)``, as pytorch-fid) of an ``(N, D)`` feature matrix."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim == 1:
        feats = feats[:, None]
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need an (N, D) feature matrix with N >= 2, got shape {feats.shape}")
    return FeatureStats(feats.mean(axis=0), np.atleast_2d(np.cov(feats, rowvar=False)), feats.shape[0], extractor)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``d² = ||mu1 - mu2||² + Tr(sigma1 + sigma2 - 2·sqrt(sigma1·sigma2))``. When the product is singular (fewer
    samples than dimensions) ``sqrtm`` is not finite and ``eps`` is added to both diagonals, as pytorch-fid does;
    an imaginary component larger than 1e-3 on the diagonal is an error, smaller ones are round-off.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates",
                      RuntimeWarning, stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in sqrt(sigma1 sigma2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# ---------------------------------------------------------------------------------------- feature sets


def _batches(items: Iterable[Any], batch_size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def extract_features(
    items: Iterable[Any], extractor: FeatureExtractor, batch_size: int = 32, progress: bool = True, desc: str = ""
) -> np.ndarray:
    """Run ``extractor`` over ``items`` in batches (tqdm bar over items) and stack the ``(N, D)`` features."""
    from tqdm.auto import tqdm

    total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    feats: list[np.ndarray] = []
    with tqdm(total=total, desc=desc or getattr(extractor, "name", "features"), unit="item",
              disable=not progress) as bar:
        for batch in _batches(items, batch_size):
            out = np.asarray(extractor(batch), dtype=np.float64)
            if out.ndim != 2 or out.shape[0] != len(batch):
                raise ValueError(f"extractor returned shape {out.shape} for a batch of {len(batch)}")
            feats.append(out)
            bar.update(len(batch))
    if not feats:
        raise ValueError("no items to extract features from")
    return np.concatenate(feats, axis=0)


def compute_statistics(
    items: Iterable[Any] | FeatureStats | str | os.PathLike,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 32,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    desc: str = "",
) -> FeatureStats:
    """Statistics of a set, reusing a cache.

    ``items`` may be raw items, a ready :class:`FeatureStats`, or a path to a ``.npz`` of statistics. If ``cache``
    exists and was written with the same extractor it is returned as is; otherwise the features are computed and
    written there. A cache from another extractor is an error rather than a silently wrong number.
    """
    if isinstance(items, FeatureStats):
        return items
    if isinstance(items, str | os.PathLike):
        if str(items).endswith(".npz"):
            return FeatureStats.load(items)
        raise ValueError(f"{items!r}: pass a list of items (e.g. sorted(glob(...))) or a .npz of statistics")
    name = getattr(extractor, "name", "")
    if cache is not None and Path(cache).is_file():
        stats = FeatureStats.load(cache)
        if stats.extractor and name and stats.extractor != name:
            raise ValueError(f"cache {cache} holds '{stats.extractor}' features, not '{name}'; delete it or rename")
        return stats
    stats = feature_statistics(extract_features(items, extractor, batch_size, progress, desc), name)  # type: ignore[arg-type]
    if cache is not None:
        stats.save(cache)
    return stats


def _set_distance(a: Any, b: Any, extractor: FeatureExtractor, batch_size: int, cache_a: Any, cache_b: Any,
                  progress: bool, label: str) -> float:
    sa = compute_statistics(a, extractor, batch_size=batch_size, cache=cache_a, progress=progress, desc=f"{label} A")
    sb = compute_statistics(b, extractor, batch_size=batch_size, cache=cache_b, progress=progress, desc=f"{label} B")
    return frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)


def fid(
    images_a: Iterable[Any] | FeatureStats | str | os.PathLike,
    images_b: Iterable[Any] | FeatureStats | str | os.PathLike,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 32,
    cache_a: str | os.PathLike | None = None,
    cache_b: str | os.PathLike | None = None,
    progress: bool = True,
) -> float:
    """FID between two image sets (arrays ``(H, W, 3)``, PIL images or paths; video frames for T2V FID).

    ``extractor`` is normally :class:`spider_jax.metrics.inception.InceptionV3Extractor` (2048-d pool features of
    the FID Inception); either side may be precomputed statistics (``FeatureStats`` or ``.npz``).
    """
    return _set_distance(images_a, images_b, extractor, batch_size, cache_a, cache_b, progress, "FID")


def fd(
    audio_a: Iterable[Any] | FeatureStats | str | os.PathLike,
    audio_b: Iterable[Any] | FeatureStats | str | os.PathLike,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 16,
    cache_a: str | os.PathLike | None = None,
    cache_b: str | os.PathLike | None = None,
    progress: bool = True,
) -> float:
    """Audio Fréchet distance between two sets of waveforms (paths, ``(wav, sr)`` pairs or arrays).

    ``extractor`` is normally :class:`spider_jax.metrics.audio_features.ClapAudioExtractor`; see that module for
    why CLAP and not PANNs CNN14, and why the numbers are then not comparable with the paper's FD column.
    """
    return _set_distance(audio_a, audio_b, extractor, batch_size, cache_a, cache_b, progress, "FD")


# ---------------------------------------------------------------------------------------- inception score


def inception_score(logits: np.ndarray, splits: int = 10, *, probabilities: bool = False) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))``, mean and std over ``splits`` chunks (Salimans et al.).

    ``logits`` is ``(N, C)`` (the FID Inception's 1008-way logits for images; a classifier's logits for audio);
    pass ``probabilities=True`` if the rows are already distributions. Chunks are the contiguous
    ``[i·N//splits, (i+1)·N//splits)`` slices of the original implementation; the marginal ``p(y)`` is per chunk.
    """
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < splits:
        raise ValueError(f"need (N, C) logits with N >= splits={splits}, got shape {x.shape}")
    if probabilities:
        p = x / x.sum(axis=1, keepdims=True)
    else:
        z = x - x.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = p.shape[0]
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        py = part.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
