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
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spider_jax.diffusion.unet2d import UNet2DConditionModel, UNet2DConfig
from spider_jax.diffusion.vae import AutoencoderKL, AutoencoderKLConfig

MODEL_INDEX = "model_index.json"


def _read_model_index(root: str) -> dict[str, Any]:
    path = os.path.join(root, MODEL_INDEX)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{root}: not a diffusers pipeline folder (no {MODEL_INDEX})")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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
    latents = latents * scheduler.init_noise_sigma(state)
    context = jnp.concatenate([uncond, cond]) if guided else cond

    def body(i, carry):
        x, st = carry
        model_in = scheduler.scale_model_input(st, x, i)
        if guided:
            model_in = jnp.concatenate([model_in, model_in])
        eps = unet.apply({"params": unet_params}, model_in, st.timesteps[i], encoder_hidden_states=context)
        eps = eps.astype(jnp.float32)
        if guided:
            eps_uncond, eps_cond = jnp.split(eps, 2)
            eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        return scheduler.step(st, eps, i, x)

    latents, _ = jax.lax.fori_loop(0, state.timesteps.shape[0], body, (latents, state))
    return latents


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
class ImagePipeline:
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
        from spider_jax.convert.diffusers_models import load_unet, load_vae
        from spider_jax.diffusion import schedulers as sched

        root = os.fspath(root)
        _read_model_index(root)
        unet_config, unet_params = load_unet(root, dtype=dtype)
        vae_config, vae_params = load_vae(root, dtype=dtype)
        if scheduler is None:
            scheduler = sched.load_scheduler(os.path.join(root, "scheduler"))
        elif isinstance(scheduler, str):
            if scheduler not in sched.SCHEDULERS:
                raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {sorted(sched.SCHEDULERS)}")
            scheduler = sched.SCHEDULERS[scheduler].from_pretrained(root, check_class=False)
        encoder = None
        if text_encoder:
            from spider_jax.conditioning import DecoderTextEncoder

            encoder = DecoderTextEncoder(root, "clip", dtype=dtype)
        return cls(unet_config, jax.device_put(unet_params), vae_config, jax.device_put(vae_params), scheduler, encoder)

    @property
    def unet(self) -> UNet2DConditionModel:
        return UNet2DConditionModel(self.unet_config)

    @property
    def vae(self) -> AutoencoderKL:
        return AutoencoderKL(self.vae_config)

    @property
    def latent_channels(self) -> int:
        return self.unet_config.in_channels

    def default_size(self) -> tuple[int, int]:
        """(height, width) in pixels as diffusers: UNet ``sample_size`` × the VAE's downsampling factor."""
        size = self.unet_config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        f = self.vae_config.downsample_factor
        return h * f, w * f

    def encode_prompt(self, texts: Sequence[str]) -> np.ndarray:
        """The decoder's own text conditioning (T_e) of ``texts``: (B, 77, D)."""
        if self.text_encoder is None:
            raise ValueError("this pipeline was built without a text encoder; pass embeddings instead")
        return self.text_encoder(list(texts))

    def initial_noise(self, batch: int, height: int, width: int, seed: int) -> jax.Array:
        """Unit Gaussian latents (B, h, w, C) for ``seed``."""
        f = self.vae_config.downsample_factor
        if height % f or width % f:
            raise ValueError(f"height and width must be multiples of {f}, got {height}x{width}")
        shape = (batch, height // f, width // f, self.latent_channels)
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
        cond = jnp.asarray(cond, jnp.float32)
        if cond.ndim != 3:
            raise ValueError(f"conditioning must be (batch, tokens, width), got shape {cond.shape}")
        want = self.unet_config.cross_attention_dim
        if isinstance(want, int) and cond.shape[-1] != want:
            raise ValueError(f"conditioning width {cond.shape[-1]} != the UNet's cross_attention_dim {want}")
        batch = cond.shape[0]
        guided = guidance_scale > 1.0
        if guided:
            if negative is None:
                negative = jnp.broadcast_to(jnp.asarray(self.encode_prompt([""])), cond.shape)
            negative = jnp.asarray(negative, jnp.float32)
            if negative.shape != cond.shape:
                negative = jnp.broadcast_to(negative, cond.shape)
        else:
            negative = cond
        if latents is None:
            default_h, default_w = self.default_size()
            latents = self.initial_noise(batch, height or default_h, width or default_w, seed)
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
        from spider_jax.convert.clip import save_clip_text
        from spider_jax.convert.diffusers_models import save_unet, save_vae

        root = os.fspath(root)
        os.makedirs(root, exist_ok=True)
        save_unet(self.unet_config, jax.device_get(self.unet_params), os.path.join(root, "unet"))
        save_vae(self.vae_config, jax.device_get(self.vae_params), os.path.join(root, "vae"))
        os.makedirs(os.path.join(root, "scheduler"), exist_ok=True)
        with open(os.path.join(root, "scheduler", "scheduler_config.json"), "w", encoding="utf-8") as f:
            json.dump(self.scheduler.to_config(), f, indent=2)
        index: dict[str, Any] = {
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", type(self.scheduler).__name__],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
        if self.text_encoder is not None:
            encoder = self.text_encoder
            save_clip_text(encoder.config, jax.device_get(encoder.params), os.path.join(root, "text_encoder"))
            encoder.tokenizer.save_pretrained(os.path.join(root, "tokenizer"))
            index["text_encoder"] = ["transformers", "CLIPTextModel"]
            index["tokenizer"] = ["transformers", "CLIPTokenizer"]
        with open(os.path.join(root, MODEL_INDEX), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
