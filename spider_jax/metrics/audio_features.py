"""Audio embeddings for the audio Fréchet distance (FD, paper Tab. 2 Text-to-Audio on AudioCaps).

What the paper's FD is: AudioLDM's evaluation (``audioldm_eval``), which CoDi / NExT-GPT / Spider follow, takes the
2048-d penultimate features of PANNs **CNN14** (16 kHz checkpoint ``Cnn14_16k_mAP=0.438.pth``) and computes the
Fréchet distance between generated and reference sets; its IS uses the same network's 527-way logits.

Why CLAP here instead: no maintained package gives CNN14 without a forced download. ``panns-inference`` 0.1.1
runs ``wget`` for the AudioSet label CSV *at import time* (and then fails to open it offline) and re-downloads any
checkpoint under 300 MB; ``audioldm-eval`` 0.0.3 hard-codes ``ckpt/Cnn14_16k_mAP=0.438.pth`` relative to the working
directory, ``wget``\\s it when absent, and its package import pulls VGGish/torchaudio/scikit-image/ssr-eval;
``frechet-audio-distance`` requires torchvision, laion-clap and encodec. So FD is computed on LAION **CLAP**
audio embeddings (``transformers.ClapModel`` from a local folder, e.g. ``laion/clap-htsat-unfused``), one of the
standard FAD embeddings (fadtk's "clap-laion-audio"; frechet-audio-distance's "clap"), loadable offline through
transformers, which the project already depends on.

Consequence, stated wherever the number is reported: **FD values from this extractor are not comparable with the
paper's FD column** (different network, different feature space and scale); they rank systems evaluated here
consistently, nothing more. The Frechet math is shared with FID (``frechet.py``). Audio IS needs a classifier's
logits (CNN14's) and is therefore not provided by this extractor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spider_jax.metrics.feature_models import load_audio, resolve_weights


class ClapAudioExtractor:
    """Batch of waveforms/paths → L2-normalised CLAP audio embeddings ``(B, projection_dim)``.

    Audio is mixed to mono, resampled to the feature extractor's rate (48 kHz for LAION CLAP) and cut to its
    ``max_length_s`` (10 s, the AudioCaps clip length) *before* the processor, because the processor crops longer
    clips at a random offset ("rand_trunc"/"fusion"), which would make FD non-deterministic. Shorter clips are
    repeat-padded by the processor as in CLAP training.
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, device: str = "cpu") -> None:
        path = resolve_weights("clap", model_dir)
        from transformers import ClapFeatureExtractor, ClapModel

        self.device = device
        self.model = ClapModel.from_pretrained(str(path)).to(device).eval()
        self.feature_extractor = ClapFeatureExtractor.from_pretrained(str(path))
        self.sampling_rate = int(self.feature_extractor.sampling_rate)
        self.max_samples = int(self.feature_extractor.nb_max_samples)
        self.name = f"clap-audio:{Path(path).name}"

    def preprocess(self, batch: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Waveforms at the model rate, truncated deterministically, through the CLAP feature extractor."""
        wavs = [load_audio(item, self.sampling_rate)[: self.max_samples] for item in batch]
        if any(w.size == 0 for w in wavs):
            raise ValueError("empty waveform in batch")
        inputs = self.feature_extractor(wavs, sampling_rate=self.sampling_rate, return_tensors="pt")
        return {k: v.to(self.device) for k, v in inputs.items()}

    @torch.no_grad()
    def __call__(self, batch: Sequence[Any]) -> np.ndarray:
        out = self.model.get_audio_features(**self.preprocess(batch))
        return out.pooler_output.double().cpu().numpy()
