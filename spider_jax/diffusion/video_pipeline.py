"""Zeroscope as Spider's video decoder: a controlling embedding S in, uint8 video frames out, the whole denoising
loop inside one ``jax.jit``.

Like :mod:`spider_jax.diffusion.pipelines` (the image decoder), the input is the conditioning itself — S^X from
the Decoders-Controller, (B, 77, 1024) for Zeroscope — not a prompt string; :meth:`VideoPipeline.encode_prompt`
gives the decoder's own T_e for convenience. What follows diffusers' ``TextToVideoSDPipeline`` exactly:

* classifier-free guidance for g > 1: the unconditional half is the text encoder's embedding of ``""`` (or a given
  negative), both halves run as one UNet batch ``[uncond, cond]``, ``ε = ε_u + g·(ε_c − ε_u)``; default g = 9;
* the scheduler steps on frames folded into the batch, ``(B·F, h, w, C)`` (this matters for per-sample operations
  such as dynamic thresholding, and sizes the DPM-Solver history);
* decoding: frames folded into the batch, ``vae.decode(z / scaling_factor)``, then the video processor's
  ``(x / 2 + 0.5).clamp(0, 1)``; uint8 by ``round(x * 255)``.

Latents are ``(B, F, h, w, C)`` (diffusers: ``(B, C, F, h, w)``); the initial noise is drawn from ``jax.random``
with the given seed, so outputs are deterministic per seed on a given backend.
"""

from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spider_jax.diffusion.pipelines import (
    CrossAttentionPipelineMixin,
    check_hidden_states,
    latent_size,
    sampling_loop,
    to_uint8,
)
from spider_jax.diffusion.unet3d import UNet3DConditionModel, UNet3DConfig
from spider_jax.diffusion.vae import AutoencoderKL, AutoencoderKLConfig


@partial(jax.jit, static_argnames=("unet", "scheduler", "guided"))
def denoise_video(
    unet: UNet3DConditionModel,
    unet_params: Any,
    scheduler: Any,
    state: Any,
    latents: jax.Array,
    cond: jax.Array,
    uncond: jax.Array,
    guidance_scale: jax.Array,
    guided: bool,
) -> jax.Array:
    """The full sampling loop (``lax.fori_loop`` over the scheduler's steps) from unit noise ``(B, F, h, w, C)`` to
    clean latents. ``state`` must come from ``scheduler.set_timesteps(n, (B·F, h, w, C))``."""
    b, f, h, w, c = latents.shape
    context = jnp.concatenate([uncond, cond]) if guided else cond
    eps_fn = lambda x, t: unet.apply({"params": unet_params}, x, t, context)
    return sampling_loop(eps_fn, scheduler, state, latents, guidance_scale, guided, step_shape=(b * f, h, w, c))


@partial(jax.jit, static_argnames=("vae", "frames_per_decode"))
def decode_video(vae: AutoencoderKL, vae_params: Any, latents: jax.Array, frames_per_decode: int = 0) -> jax.Array:
    """Latents ``(B, F, h, w, C)`` -> video in [0, 1], ``(B, F, H, W, 3)`` float32. All B·F frames go through the
    VAE as one batch (as diffusers does) unless ``frames_per_decode`` > 0 bounds the batch to save memory."""
    b, f, h, w, c = latents.shape
    z = vae.config.unscale_latents(latents.reshape(b * f, h, w, c))

    def decode(chunk: jax.Array) -> jax.Array:
        return vae.apply({"params": vae_params}, chunk, method=AutoencoderKL.decode).astype(jnp.float32)

    n = b * f
    if 0 < frames_per_decode < n:
        pad = -n % frames_per_decode
        z = jnp.concatenate([z, jnp.zeros((pad, h, w, c), z.dtype)]) if pad else z
        frames = jax.lax.map(decode, z.reshape(-1, frames_per_decode, h, w, c))
        frames = frames.reshape(-1, *frames.shape[2:])[:n]
    else:
        frames = decode(z)
    frames = jnp.clip(frames / 2 + 0.5, 0.0, 1.0)
    return frames.reshape(b, f, *frames.shape[1:])


@dataclasses.dataclass
class VideoPipeline(CrossAttentionPipelineMixin):
    """Zeroscope (``TextToVideoSDPipeline`` layout): UNet3D + VAE + scheduler, conditioned on S (B, 77, D).

    ``text_encoder`` (a :class:`spider_jax.conditioning.DecoderTextEncoder`) gives the unconditional embedding for
    guidance and :meth:`encode_prompt`; without it, pass ``negative`` to guided calls.
    """

    unet_config: UNet3DConfig
    unet_params: Any
    vae_config: AutoencoderKLConfig
    vae_params: Any
    scheduler: Any
    text_encoder: Any = None

    @classmethod
    def from_pretrained(
        cls, root: str | os.PathLike, *, scheduler: Any = None, dtype: str = "float32", text_encoder: bool = True
    ) -> VideoPipeline:
        """Loads a local diffusers text-to-video folder (``model_index.json``, ``unet/`` UNet3DConditionModel,
        ``vae/``, ``scheduler/``, ``text_encoder/`` + ``tokenizer/``). ``scheduler``: an instance, or a class name
        from ``schedulers.SCHEDULERS`` built from the folder's scheduler config (diffusers' scheduler swap)."""
        from spider_jax.convert.unet3d import load_unet3d

        return cls._from_folder(root, load_unet3d, scheduler=scheduler, dtype=dtype, text_encoder=text_encoder)

    @property
    def unet(self) -> UNet3DConditionModel:
        return UNet3DConditionModel(self.unet_config)

    def initial_noise(self, batch: int, num_frames: int, height: int, width: int, seed: int) -> jax.Array:
        """Unit Gaussian latents (B, F, h, w, C) for ``seed``."""
        h, w = latent_size(height, width, self.vae_config.downsample_factor)
        shape = (batch, num_frames, h, w, self.latent_channels)
        return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)

    def sample_latents(
        self,
        cond: jax.Array | np.ndarray,
        *,
        num_frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 9.0,
        negative: jax.Array | np.ndarray | None = None,
        seed: int = 0,
        latents: jax.Array | np.ndarray | None = None,
    ) -> jax.Array:
        """Denoised latents (B, F, h, w, C) for the conditioning ``cond`` (B, L, D). ``latents`` overrides the
        seeded initial noise (unit variance, (B, F, h, w, C); then ``num_frames``/``height``/``width`` are unused)."""
        cond = check_hidden_states(cond, self.unet_config.cross_attention_dim)
        batch = cond.shape[0]
        guided = guidance_scale > 1.0
        negative = self.guidance_negative(cond, negative, guided)
        if latents is None:
            latents = self.initial_noise(batch, num_frames, *self.size_or_default(height, width), seed)
        latents = jnp.asarray(latents, jnp.float32)
        if latents.ndim != 5 or latents.shape[0] != batch or latents.shape[-1] != self.latent_channels:
            raise ValueError(
                f"initial latents must be ({batch}, frames, h, w, {self.latent_channels}), got {latents.shape}"
            )
        b, f, h, w, c = latents.shape
        state = self.scheduler.set_timesteps(num_inference_steps, (b * f, h, w, c))
        scale = jnp.asarray(guidance_scale, jnp.float32)
        return denoise_video(self.unet, self.unet_params, self.scheduler, state, latents, cond, negative, scale, guided)

    def decode(self, latents: jax.Array | np.ndarray, frames_per_decode: int = 0) -> np.ndarray:
        """Latents (B, F, h, w, C) -> float video in [0, 1], (B, F, H, W, 3)."""
        latents = jnp.asarray(latents, jnp.float32)
        return np.asarray(decode_video(self.vae, self.vae_params, latents, frames_per_decode))

    def __call__(self, cond: jax.Array | np.ndarray, *, frames_per_decode: int = 0, **kwargs: Any) -> np.ndarray:
        """S (B, 77, D) -> uint8 video (B, F, H, W, 3). Keyword arguments as :meth:`sample_latents`."""
        return to_uint8(self.decode(self.sample_latents(cond, **kwargs), frames_per_decode))

    def save_pretrained(self, root: str | os.PathLike) -> None:
        """Writes a diffusers ``TextToVideoSDPipeline`` folder (``unet/`` UNet3DConditionModel, ``vae/``,
        ``scheduler/``, and ``text_encoder/`` + ``tokenizer/`` when this pipeline has them — diffusers needs them
        to load the folder) that diffusers and :meth:`from_pretrained` load back."""
        from spider_jax.convert.unet3d import save_unet3d

        index = {"_class_name": "TextToVideoSDPipeline", "unet": ["diffusers", "UNet3DConditionModel"]}
        self._save_folder(root, save_unet3d, index)


# ------------------------------------------------------------------------------------------ writers


def _video_uint8(frames: np.ndarray) -> np.ndarray:
    """One video as uint8 (F, H, W, 3); [0, 1] floats are converted like :func:`to_uint8`."""
    frames = np.asarray(frames)
    if frames.ndim == 5 and frames.shape[0] == 1:
        frames = frames[0]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"a video must be (frames, H, W, 3) (or (1, frames, H, W, 3)), got {frames.shape}")
    return frames if frames.dtype == np.uint8 else to_uint8(frames)


def _fps_fraction(fps: float) -> Fraction:
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: float = 8) -> str:
    """Writes one video (F, H, W, 3) as H.264 MP4 (yuv420p, so H and W must be even). Backend: PyAV (``av``, in
    requirements.txt), else imageio's ffmpeg plugin (``imageio`` + ``imageio-ffmpeg``). Returns the path."""
    frames = _video_uint8(frames)
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 (yuv420p) needs an even frame size, got {frames.shape[2]}x{frames.shape[1]}")
    path = os.fspath(path)
    rate = _fps_fraction(fps)
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        with av.open(path, mode="w") as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())  # flush the encoder
        return path
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the plugin imageio's FFMPEG format needs)
    except ImportError as e:
        raise ImportError(
            "writing MP4 needs PyAV (`pip install av`, pinned in requirements.txt) or imageio with its ffmpeg "
            "plugin (`pip install imageio imageio-ffmpeg`); neither is installed"
        ) from e
    imageio.mimwrite(path, list(frames), format="FFMPEG", fps=float(rate), codec="libx264", macro_block_size=1)
    return path


def write_gif(frames: np.ndarray, path: str | os.PathLike, fps: float = 8, loop: int = 0) -> str:
    """Writes one video (F, H, W, 3) as an animated GIF with Pillow (256-colour palette per frame). GIF delays are
    whole centiseconds, so the stored rate is the nearest one (10 fps -> 100 ms per frame); Pillow stores a frame
    identical to its predecessor as a longer delay instead. ``loop=0``: repeat forever. Returns the path."""
    from PIL import Image

    frames = _video_uint8(frames)
    duration_ms = 10 * max(1, round(100 / float(_fps_fraction(fps))))
    images = [Image.fromarray(frame) for frame in frames]
    path = os.fspath(path)
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=duration_ms,
        loop=loop,
        optimize=False,
        disposal=1,
    )
    return path
