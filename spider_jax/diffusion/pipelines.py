"""Sampling pipelines: a controlling embedding S in, images out, the whole denoising loop inside one ``jax.jit``.

Why not a port of diffusers' pipeline classes: Spider never conditions a decoder on a prompt string. The
Decoders-Controller produces S^X = T_e + α·f_L(Q̄) (TM-Fusion) and the decoder must take S as its text
conditioning, so the pipeline's input is the embedding itself (B, 77, 768 for SD1.5). Text prompts are a
convenience on top (:meth:`ImagePipeline.encode_prompt`, the same encoding the T_e stores use).

Classifier-free guidance follows ``StableDiffusionPipeline``: the unconditional branch is the text encoder's
embedding of the empty prompt (or a given negative embedding), both halves run as one UNet batch, and
``ε = ε_u + g·(ε_c − ε_u)`` for g > 1. Latents are NHWC (see ``unet2d``); the initial noise is drawn from
``jax.random`` with the given seed, so outputs are deterministic per seed on a given backend.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spider_jax.diffusion.unet2d import UNet2DConditionModel, UNet2DConfig
from spider_jax.diffusion.vae import AutoencoderKL, AutoencoderKLConfig

MODEL_INDEX = "model_index.json"


# ------------------------------------------------------------------------------------------ shared by the pipelines
# The image, audio (``audio_pipeline``) and video (``video_pipeline``) decoders read and write the same diffusers
# folder pieces (model_index.json, scheduler/, text_encoder/ + tokenizer/) and share the guidance conventions.


def read_model_index(root: str | os.PathLike) -> dict[str, Any]:
    """The pipeline folder's ``model_index.json``; ``FileNotFoundError`` when ``root`` is not a pipeline folder."""
    path = os.path.join(os.fspath(root), MODEL_INDEX)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{os.fspath(root)}: not a diffusers pipeline folder (no {MODEL_INDEX})")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def resolve_scheduler(root: str | os.PathLike, scheduler: Any = None) -> Any:
    """The scheduler a pipeline runs: None -> the folder's own (``root/scheduler``); a class name from
    ``schedulers.SCHEDULERS`` -> that class built from the folder's scheduler config (diffusers' scheduler swap);
    anything else is taken as a scheduler instance."""
    from spider_jax.diffusion import schedulers as sched

    root = os.fspath(root)
    if scheduler is None:
        return sched.load_scheduler(os.path.join(root, "scheduler"))
    if isinstance(scheduler, str):
        if scheduler not in sched.SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {sorted(sched.SCHEDULERS)}")
        return sched.SCHEDULERS[scheduler].from_pretrained(root, check_class=False)
    return scheduler


def load_text_encoder(root: str | os.PathLike, kind: str, *, dtype: str, enabled: bool = True) -> Any:
    """The folder's ``text_encoder/`` + ``tokenizer/`` as a :class:`spider_jax.conditioning.DecoderTextEncoder`
    (``kind`` ``"clip"`` or ``"clap"``), or None when not ``enabled``."""
    if not enabled:
        return None
    from spider_jax.conditioning import DecoderTextEncoder

    return DecoderTextEncoder(os.fspath(root), kind, dtype=dtype)


def write_scheduler(root: str | os.PathLike, scheduler: Any) -> list[str]:
    """Writes ``root/scheduler/scheduler_config.json``; returns the scheduler's ``model_index.json`` entry."""
    folder = os.path.join(os.fspath(root), "scheduler")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "scheduler_config.json"), "w", encoding="utf-8") as f:
        json.dump(scheduler.to_config(), f, indent=2)
    return ["diffusers", type(scheduler).__name__]


def write_text_encoder(
    root: str | os.PathLike, encoder: Any, save: Any, model_class: str, tokenizer_class: str | None = None
) -> dict[str, list[str]]:
    """Writes ``text_encoder/`` (with ``save(config, params, folder)``) and ``tokenizer/`` for a
    ``DecoderTextEncoder``; returns their ``model_index.json`` entries (none when ``encoder`` is None).
    ``tokenizer_class`` defaults to the tokenizer's own class name."""
    if encoder is None:
        return {}
    root = os.fspath(root)
    save(encoder.config, jax.device_get(encoder.params), os.path.join(root, "text_encoder"))
    encoder.tokenizer.save_pretrained(os.path.join(root, "tokenizer"))
    return {
        "text_encoder": ["transformers", model_class],
        "tokenizer": ["transformers", tokenizer_class or type(encoder.tokenizer).__name__],
    }


def write_model_index(root: str | os.PathLike, index: dict[str, Any]) -> None:
    with open(os.path.join(os.fspath(root), MODEL_INDEX), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)


def latent_size(height: int, width: int, downsample_factor: int) -> tuple[int, int]:
    """Latent (h, w) for an image size, which must be a multiple of the VAE's downsampling factor."""
    f = downsample_factor
    if height % f or width % f:
        raise ValueError(f"height and width must be multiples of {f}, got {height}x{width}")
    return height // f, width // f


def check_hidden_states(cond: Any, cross_attention_dim: Any) -> jax.Array:
    """``cond`` as float32 (B, L, D), D checked against the UNet's ``cross_attention_dim`` (when a single int)."""
    cond = jnp.asarray(cond, jnp.float32)
    if cond.ndim != 3:
        raise ValueError(f"conditioning must be (batch, tokens, width), got shape {cond.shape}")
    if isinstance(cross_attention_dim, int) and cond.shape[-1] != cross_attention_dim:
        raise ValueError(f"conditioning width {cond.shape[-1]} != the UNet's cross_attention_dim {cross_attention_dim}")
    return cond


class PipelineMixin:
    """Methods the pipeline dataclasses share; they define ``vae_config`` and ``text_encoder`` (a
    ``DecoderTextEncoder`` or None)."""

    vae_config: AutoencoderKLConfig
    text_encoder: Any

    @property
    def vae(self) -> AutoencoderKL:
        return AutoencoderKL(self.vae_config)

    def encode_prompt(self, texts: Sequence[str]) -> np.ndarray:
        """The decoder's own conditioning (T_e) of ``texts``: CLIP hidden states (B, 77, D) for the image and video
        decoders, L2-normalised CLAP text embeddings (B, P) for the audio one."""
        if self.text_encoder is None:
            raise ValueError("this pipeline was built without a text encoder; pass embeddings instead")
        return self.text_encoder(list(texts))

    def guidance_negative(
        self, cond: jax.Array, negative: Any, guided: bool, check: Callable[[Any], jax.Array] | None = None
    ) -> jax.Array:
        """The unconditional half of classifier-free guidance, broadcast to ``cond``'s shape: ``negative``, else the
        text encoder's embedding of ``""``; ``check`` validates it (default: cast to float32). Without guidance,
        ``cond`` itself (the denoising loop ignores it)."""
        if not guided:
            return cond
        if negative is None:
            negative = self.encode_prompt([""])
        negative = check(negative) if check is not None else jnp.asarray(negative, jnp.float32)
        return jnp.broadcast_to(negative, cond.shape)


class CrossAttentionPipelineMixin(PipelineMixin):
    """The image and video pipelines: S is the UNet's cross-attention context (B, L, D); fields ``unet_config``,
    ``unet_params``, ``vae_config``, ``vae_params``, ``scheduler``, ``text_encoder`` (CLIP), in that order."""

    unet_config: Any

    @classmethod
    def _from_folder(
        cls, root: str | os.PathLike, load_unet: Callable[..., Any], *, scheduler: Any, dtype: str, text_encoder: bool
    ) -> Any:
        from spider_jax.convert.diffusers_models import load_vae

        root = os.fspath(root)
        read_model_index(root)
        unet_config, unet_params = load_unet(root, dtype=dtype)
        vae_config, vae_params = load_vae(root, dtype=dtype)
        scheduler = resolve_scheduler(root, scheduler)
        encoder = load_text_encoder(root, "clip", dtype=dtype, enabled=text_encoder)
        return cls(unet_config, jax.device_put(unet_params), vae_config, jax.device_put(vae_params), scheduler, encoder)

    def _save_folder(self, root: str | os.PathLike, save_unet: Callable[..., Any], index: dict[str, Any]) -> None:
        """``unet/`` (written by ``save_unet``), ``vae/``, ``scheduler/``, ``text_encoder/`` + ``tokenizer/`` when
        present, and ``model_index.json``: ``index`` (pipeline class, UNet class, ...) plus those components."""
        from spider_jax.convert.clip import save_clip_text
        from spider_jax.convert.diffusers_models import save_vae

        root = os.fspath(root)
        os.makedirs(root, exist_ok=True)
        save_unet(self.unet_config, jax.device_get(self.unet_params), os.path.join(root, "unet"))
        save_vae(self.vae_config, jax.device_get(self.vae_params), os.path.join(root, "vae"))
        index = {**index, "vae": ["diffusers", "AutoencoderKL"], "scheduler": write_scheduler(root, self.scheduler)}
        index.update(write_text_encoder(root, self.text_encoder, save_clip_text, "CLIPTextModel", "CLIPTokenizer"))
        write_model_index(root, index)

    @property
    def latent_channels(self) -> int:
        return self.unet_config.in_channels

    def default_size(self) -> tuple[int, int]:
        """(height, width) in pixels as diffusers: UNet ``sample_size`` × the VAE's downsampling factor."""
        size = self.unet_config.sample_size
        if size is None:
            raise ValueError("the UNet config has no sample_size; pass height and width")
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        f = self.vae_config.downsample_factor
        return h * f, w * f

    def size_or_default(self, height: int | None, width: int | None) -> tuple[int, int]:
        """(height, width) with a missing side taken from :meth:`default_size`."""
        default_h, default_w = (None, None) if height and width else self.default_size()
        return height or default_h, width or default_w


def sampling_loop(
    eps_fn: Callable[[jax.Array, jax.Array], jax.Array],
    scheduler: Any,
    state: Any,
    latents: jax.Array,
    guidance_scale: jax.Array,
    guided: bool,
    step_shape: tuple[int, ...] | None = None,
) -> jax.Array:
    """The denoising loop the pipelines share, to be traced inside their ``jax.jit``: ``lax.fori_loop`` over the
    scheduler's steps from unit-variance ``latents`` to clean ones. ``eps_fn(model_in, t)`` is the UNet with its
    conditioning bound; with guidance ``model_in`` is the batch twice, ``[uncond, cond]``, and ``ε = ε_u + g·(ε_c −
    ε_u)``. ``step_shape``: the shape the scheduler steps on when it differs from the latents' (video: frames
    folded into the batch)."""
    latents = latents * scheduler.init_noise_sigma(state)

    def body(i, carry):
        x, st = carry
        model_in = scheduler.scale_model_input(st, x, i)
        if guided:
            model_in = jnp.concatenate([model_in, model_in])
        eps = eps_fn(model_in, st.timesteps[i]).astype(jnp.float32)
        if guided:
            eps_uncond, eps_cond = jnp.split(eps, 2)
            eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        if step_shape is None:
            return scheduler.step(st, eps, i, x)
        x, st = scheduler.step(st, eps.reshape(step_shape), i, x.reshape(step_shape))
        return x.reshape(latents.shape), st

    latents, _ = jax.lax.fori_loop(0, state.timesteps.shape[0], body, (latents, state))
    return latents


@partial(jax.jit, static_argnames=("unet", "scheduler", "guided"))
def denoise(
    unet: UNet2DConditionModel,
    unet_params: Any,
    scheduler: Any,
    state: Any,
    latents: jax.Array,
    cond: jax.Array,
    uncond: jax.Array,
    guidance_scale: jax.Array,
    guided: bool,
) -> jax.Array:
    """The full sampling loop (``lax.fori_loop`` over the scheduler's steps) from initial noise to clean latents.

    ``latents`` are the unit-variance noise (scaled by the scheduler's ``init_noise_sigma`` here); ``cond`` /
    ``uncond`` the cross-attention conditioning (B, L, D). Without guidance ``uncond`` is ignored.
    """
    context = jnp.concatenate([uncond, cond]) if guided else cond
    eps_fn = lambda x, t: unet.apply({"params": unet_params}, x, t, encoder_hidden_states=context)
    return sampling_loop(eps_fn, scheduler, state, latents, guidance_scale, guided)


@partial(jax.jit, static_argnames=("vae",))
def decode_latents(vae: AutoencoderKL, vae_params: Any, latents: jax.Array) -> jax.Array:
    """Diffusion latents -> images in [0, 1], (B, H, W, 3) float32 (as the pipelines' ``(x / 2 + 0.5).clamp``)."""
    z = vae.config.unscale_latents(latents)
    images = vae.apply({"params": vae_params}, z, method=AutoencoderKL.decode).astype(jnp.float32)
    return jnp.clip(images / 2 + 0.5, 0.0, 1.0)


def to_uint8(images: jax.Array | np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 with the rounding diffusers' ``numpy_to_pil`` uses (``(x * 255).round()``)."""
    return np.asarray(np.round(np.asarray(images, np.float32) * 255), np.uint8)


def save_png(images: np.ndarray, folder: str | os.PathLike, prefix: str = "image") -> list[str]:
    """Writes ``prefix_{i}.png`` per image (uint8 (B, H, W, 3) or [0, 1] floats); returns the paths."""
    from PIL import Image

    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = to_uint8(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be (B, H, W, 1|3|4), got {images.shape}")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = os.path.join(os.fspath(folder), f"{prefix}_{i}.png")
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path, format="PNG")
        paths.append(path)
    return paths


@dataclasses.dataclass
class ImagePipeline(CrossAttentionPipelineMixin):
    """Stable Diffusion 1.5 as Spider's image decoder: UNet + VAE + scheduler, conditioned on S (B, 77, 768).

    ``text_encoder`` (a :class:`spider_jax.conditioning.DecoderTextEncoder`) gives the unconditional embedding
    for guidance and :meth:`encode_prompt`; without it, pass ``negative`` to guided calls.
    """

    unet_config: UNet2DConfig
    unet_params: Any
    vae_config: AutoencoderKLConfig
    vae_params: Any
    scheduler: Any
    text_encoder: Any = None

    @classmethod
    def from_pretrained(
        cls, root: str | os.PathLike, *, scheduler: Any = None, dtype: str = "float32", text_encoder: bool = True
    ) -> ImagePipeline:
        """Loads a local diffusers Stable Diffusion folder (``model_index.json``, ``unet/``, ``vae/``,
        ``scheduler/``, ``text_encoder/`` + ``tokenizer/``). ``scheduler``: a scheduler instance, or a class name
        from ``schedulers.SCHEDULERS`` built from the folder's scheduler config (diffusers' scheduler swap)."""
        from spider_jax.convert.diffusers_models import load_unet

        return cls._from_folder(root, load_unet, scheduler=scheduler, dtype=dtype, text_encoder=text_encoder)

    @property
    def unet(self) -> UNet2DConditionModel:
        return UNet2DConditionModel(self.unet_config)

    def initial_noise(self, batch: int, height: int, width: int, seed: int) -> jax.Array:
        """Unit Gaussian latents (B, h, w, C) for ``seed``."""
        shape = (batch, *latent_size(height, width, self.vae_config.downsample_factor), self.latent_channels)
        return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)

    def sample_latents(
        self,
        cond: jax.Array | np.ndarray,
        *,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative: jax.Array | np.ndarray | None = None,
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        latents: jax.Array | np.ndarray | None = None,
    ) -> jax.Array:
        """Denoised latents (B, h, w, C) for the conditioning ``cond`` (B, L, D). ``latents`` overrides the
        seeded initial noise (unit variance, NHWC)."""
        cond = check_hidden_states(cond, self.unet_config.cross_attention_dim)
        batch = cond.shape[0]
        guided = guidance_scale > 1.0
        negative = self.guidance_negative(cond, negative, guided)
        if latents is None:
            latents = self.initial_noise(batch, *self.size_or_default(height, width), seed)
        latents = jnp.asarray(latents, jnp.float32)
        if latents.shape[0] != batch:
            raise ValueError(f"{latents.shape[0]} initial latents for {batch} conditionings")
        state = self.scheduler.set_timesteps(num_inference_steps, latents.shape)
        scale = jnp.asarray(guidance_scale, jnp.float32)
        return denoise(self.unet, self.unet_params, self.scheduler, state, latents, cond, negative, scale, guided)

    def decode(self, latents: jax.Array) -> np.ndarray:
        """Latents -> float images in [0, 1] (B, H, W, 3)."""
        return np.asarray(decode_latents(self.vae, self.vae_params, latents))

    def __call__(self, cond: jax.Array | np.ndarray, **kwargs: Any) -> np.ndarray:
        """S (B, 77, D) -> uint8 images (B, H, W, 3). Keyword arguments as :meth:`sample_latents`."""
        return to_uint8(self.decode(self.sample_latents(cond, **kwargs)))

    def save_pretrained(self, root: str | os.PathLike) -> None:
        """Writes a diffusers Stable Diffusion folder (without safety checker) that diffusers and
        :meth:`from_pretrained` load back."""
        from spider_jax.convert.diffusers_models import save_unet

        index = {
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
        self._save_folder(root, save_unet, index)
