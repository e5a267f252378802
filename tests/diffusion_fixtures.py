"""Builders shared by the diffusion tests (test_unet_vae, test_pipelines, test_audio, test_video): tiny diffusers /
transformers models with perturbed weights, the pieces of their pipeline folders, layout transposes, and edited
checkpoints for the error tests.

Weights are perturbed so that zero-initialised layers (``proj_out``, ``conv_out``, the temporal convs' last stage)
cannot hide a mismatch. Our layouts are channels-last (``(B, H, W, C)``, ``(B, F, H, W, C)``); diffusers' put
channels second.
"""

from __future__ import annotations

import os
import shutil

import diffusers
import numpy as np
import torch
import transformers

from spider_jax.convert.safetensors_io import SafetensorsFile, save_file
from spider_jax.demo_assets import make_clap_text_folder, make_clip_text_folder
from spider_jax.demo_decoders import TINY_VAE

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"

# SD1.5's block layout at toy width (cross-attention width 32).
SD_UNET_TINY = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
    sample_size=16,
)
VAE_TINY = TINY_VAE  # the demo decoders' two-level VAE (factor 2)


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    """Adds ``scale``-std Gaussian noise (own generator, ``seed``) to every weight; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def saved_model(folder, build, seed: int, perturb_seed: int | None = None, scale: float = 0.05):
    """``(folder, model)``: ``build()`` under torch seed ``seed``, perturbed (``perturb_seed``, default ``seed``),
    written to ``folder`` with ``save_pretrained``."""
    torch.manual_seed(seed)
    model = perturb(build(), seed if perturb_seed is None else perturb_seed, scale)
    model.save_pretrained(folder)
    return folder, model


def tiny_vae(**overrides) -> diffusers.AutoencoderKL:
    """A two-level ``AutoencoderKL`` (factor 2) for 16x16 inputs; draws its init from torch's global RNG."""
    return diffusers.AutoencoderKL(**{**VAE_TINY, "sample_size": 16, **overrides})


def scaled_linear_scheduler(name: str, beta_start: float = 0.00085, beta_end: float = 0.012, **extra):
    """A diffusers scheduler with the scaled-linear betas the SD-family checkpoints ship (SD1.5 / Zeroscope values
    by default), ``set_alpha_to_one=False``, ``steps_offset=1``."""
    return getattr(diffusers, name)(
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        steps_offset=1,
        **extra,
    )


def text_components(root: str, kind: str, width: int, tokens: int, seed: int = 3) -> dict:
    """``text_encoder`` + ``tokenizer`` for a diffusers pipeline constructor: a tiny random CLIP text model
    (``kind='clip'``) or CLAP text branch (``'clap'``), written under ``root/_text`` first."""
    if kind == "clip":
        text = make_clip_text_folder(os.path.join(root, "_text"), width, tokens, seed=seed)
        model, tokenizer = transformers.CLIPTextModel, transformers.CLIPTokenizer
    else:
        text = make_clap_text_folder(os.path.join(root, "_text"), width, tokens, seed=seed)
        model, tokenizer = transformers.ClapTextModelWithProjection, transformers.RobertaTokenizer
    return {
        "text_encoder": model.from_pretrained(os.path.join(text, "text_encoder")),
        "tokenizer": tokenizer.from_pretrained(os.path.join(text, "tokenizer")),
    }


def torch_pipeline(cls, root, **kwargs):
    """``cls.from_pretrained(root, **kwargs)`` with the progress bar off."""
    pipe = cls.from_pretrained(str(root), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def channels_second(x) -> np.ndarray:
    """Ours -> diffusers: ``(B, ..., C)`` -> ``(B, C, ...)``."""
    x = np.asarray(x)
    return x.transpose(0, x.ndim - 1, *range(1, x.ndim - 1))


def channels_last(x) -> np.ndarray:
    """diffusers -> ours: ``(B, C, ...)`` -> ``(B, ..., C)``."""
    x = np.asarray(x)
    return x.transpose(0, *range(2, x.ndim), 1)


def read_state(folder, weights: str = DIFFUSERS_WEIGHTS) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in SafetensorsFile(os.path.join(folder, weights)).items()}


def write_checkpoint(folder, state: dict, like, weights: str = DIFFUSERS_WEIGHTS):
    """A model folder holding ``state`` and the ``config.json`` of the folder ``like``; returns ``folder``."""
    os.makedirs(folder, exist_ok=True)
    save_file(state, os.path.join(folder, weights))
    shutil.copyfile(os.path.join(like, "config.json"), os.path.join(folder, "config.json"))
    return folder
