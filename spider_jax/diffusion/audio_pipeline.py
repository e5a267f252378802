"""AudioLDM as Spider's audio decoder: a controlling embedding S (B, 512) in, waveforms out.

Why a pipeline of our own rather than a port of diffusers' ``AudioLDMPipeline``: Spider conditions the decoder on
S^A = T_e + α·f_L(Q̄) from the Decoders-Controller, never on a prompt string, so the input is the embedding itself.
Everything else copies ``AudioLDMPipeline`` (diffusers 0.42, ``pipelines/deprecated/audioldm``):

* S is the UNet's ``class_labels`` (``class_embed_type='simple_projection'``), ``encoder_hidden_states`` is None.
  S is used as given (diffusers does not re-normalise ``prompt_embeds``); :meth:`AudioPipeline.encode_prompt` gives
  the pipeline's own L2-normalised CLAP ``text_embeds`` for strings.
* Classifier-free guidance for ``guidance_scale > 1``: the unconditional half is the L2-normalised CLAP embedding
  of ``""`` (diffusers pads it to ``prompt_embeds.shape[1]`` tokens, we to the tokenizer's ``model_max_length``;
  both use the attention mask, so the padding length does not change the embedding — and the two are equal, 512,
  for the released checkpoints), batched as ``[uncond, cond]``; ``ε = ε_u + g·(ε_c − ε_u)``.
* Length: ``f = prod(vocoder.upsample_rates) / sampling_rate`` seconds per mel frame; ``frames =
  int(audio_length_in_s / f)`` rounded up to a multiple of the VAE factor; latents ``(B, frames / vae_factor,
  mel_bins / vae_factor, C)`` (NHWC: time is the height, mel bins the width); the default length is the UNet's
  ``sample_size`` × vae factor × f. After sampling: VAE decode -> mel ``(B, frames, mel_bins)`` -> HiFi-GAN ->
  waveform, cropped to ``int(audio_length_in_s · sampling_rate)`` samples.

The whole sampling loop is one ``jax.jit`` (``lax.fori_loop`` over the scheduler's steps); the initial noise comes
from ``jax.random`` with the given seed, so outputs are deterministic per seed on a given backend.
"""

from __future__ import annotations

import dataclasses
import math
import os
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spider_jax.diffusion.pipelines import (
    MODEL_INDEX,
    PipelineMixin,
    load_text_encoder,
    read_model_index,
    resolve_scheduler,
    sampling_loop,
    write_model_index,
    write_scheduler,
    write_text_encoder,
)
from spider_jax.diffusion.unet2d import UNet2DConditionModel, UNet2DConfig
from spider_jax.diffusion.vae import AutoencoderKL, AutoencoderKLConfig
from spider_jax.diffusion.vocoder import HifiGan, HifiGanConfig

WAV_SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")


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
    """Unit-variance noise -> clean latents, the whole loop in one program. ``cond`` / ``uncond`` are the (B, P)
    class-label embeddings (``uncond`` ignored without guidance); there are no encoder hidden states."""
    labels = jnp.concatenate([uncond, cond]) if guided else cond
    eps_fn = lambda x, t: unet.apply({"params": unet_params}, x, t, None, labels)
    return sampling_loop(eps_fn, scheduler, state, latents, guidance_scale, guided)


@partial(jax.jit, static_argnames=("vae", "vocoder"))
def decode_audio(
    vae: AutoencoderKL, vae_params: Any, vocoder: HifiGan, vocoder_params: Any, latents: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Latents (B, h, w, C) -> (mel (B, frames, bins), waveform (B, samples)), both float32, uncropped."""
    z = vae.config.unscale_latents(latents)
    mel = vae.apply({"params": vae_params}, z, method=AutoencoderKL.decode).astype(jnp.float32)[..., 0]
    return mel, vocoder.apply({"params": vocoder_params}, mel)


def write_wav(
    waveforms: np.ndarray | jax.Array,
    folder: str | os.PathLike,
    sample_rate: int = 16000,
    *,
    prefix: str = "audio",
    subtype: str = "PCM_16",
) -> list[str]:
    """Writes ``prefix_{i}.wav`` per waveform ((B, N) or (N,) floats in [-1, 1]); returns the paths.

    Default 16-bit PCM (what players and the FD/KL metric tools expect; values are clipped to [-1, 1] first, the
    vocoder's tanh already keeps them there); ``subtype='FLOAT'`` keeps the float32 samples bit-exact.
    """
    import soundfile

    if subtype not in WAV_SUBTYPES:
        raise ValueError(f"unknown WAV subtype {subtype!r}; expected one of {WAV_SUBTYPES}")
    waves = np.asarray(waveforms, np.float32)
    if waves.ndim == 1:
        waves = waves[None]
    if waves.ndim != 2:
        raise ValueError(f"waveforms must be (B, samples) or (samples,), got shape {waves.shape}")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, wave in enumerate(waves):
        path = os.path.join(os.fspath(folder), f"{prefix}_{i}.wav")
        soundfile.write(path, np.clip(wave, -1.0, 1.0), int(sample_rate), subtype=subtype, format="WAV")
        paths.append(path)
    return paths


@dataclasses.dataclass(frozen=True)
class AudioShape:
    """What ``audio_length_in_s`` turns into: mel frames (VAE-aligned), output samples, latent (h, w, C)."""

    audio_length_in_s: float
    frames: int
    samples: int
    latent_shape: tuple[int, int, int]


@dataclasses.dataclass
class AudioPipeline(PipelineMixin):
    """AudioLDM: UNet + VAE + HiFi-GAN + scheduler, conditioned on S (B, P) with P = the UNet's
    ``projection_class_embeddings_input_dim`` (512 for the released checkpoints).

    ``text_encoder`` (:class:`spider_jax.conditioning.DecoderTextEncoder`, kind ``"clap"``) gives the unconditional
    embedding for guidance and :meth:`encode_prompt`; without it, pass ``negative`` to guided calls.
    """

    unet_config: UNet2DConfig
    unet_params: Any
    vae_config: AutoencoderKLConfig
    vae_params: Any
    vocoder_config: HifiGanConfig
    vocoder_params: Any
    scheduler: Any
    text_encoder: Any = None

    def __post_init__(self):
        unet, vae, voc = self.unet_config, self.vae_config, self.vocoder_config
        if unet.class_embed_type != "simple_projection" or not unet.projection_class_embeddings_input_dim:
            raise ValueError(
                f"AudioLDM's UNet takes S as a simple_projection class embedding; this UNet has "
                f"class_embed_type={unet.class_embed_type!r}"
            )
        if vae.out_channels != 1:
            raise ValueError(f"the VAE must decode a 1-channel mel spectrogram, it has out_channels={vae.out_channels}")
        if unet.in_channels != vae.latent_channels:
            raise ValueError(f"UNet in_channels {unet.in_channels} != VAE latent_channels {vae.latent_channels}")
        if voc.model_in_dim % vae.downsample_factor:
            raise ValueError(
                f"the vocoder's {voc.model_in_dim} mel bins must be divisible by the VAE scale factor "
                f"{vae.downsample_factor}"
            )

    @classmethod
    def from_pretrained(
        cls, root: str | os.PathLike, *, scheduler: Any = None, dtype: str = "float32", text_encoder: bool = True
    ) -> AudioPipeline:
        """Loads a local diffusers AudioLDM folder (``model_index.json``; ``unet/``, ``vae/``, ``scheduler/``,
        ``vocoder/``, and ``text_encoder/`` + ``tokenizer/`` unless ``text_encoder=False``). ``scheduler``: an
        instance, or a class name from ``schedulers.SCHEDULERS`` built from the folder's scheduler config."""
        from spider_jax.convert.diffusers_models import load_unet, load_vae
        from spider_jax.convert.vocoder import load_vocoder

        root = os.fspath(root)
        index = read_model_index(root)
        if "vocoder" not in index:
            index_path = os.path.join(root, MODEL_INDEX)
            raise ValueError(f"{index_path} has no vocoder: not an AudioLDM pipeline ({index.get('_class_name')})")
        unet_config, unet_params = load_unet(root, dtype=dtype)
        vae_config, vae_params = load_vae(root, dtype=dtype)
        vocoder_config, vocoder_params = load_vocoder(root, dtype=dtype)
        scheduler = resolve_scheduler(root, scheduler)
        encoder = load_text_encoder(root, "clap", dtype=dtype, enabled=text_encoder)
        return cls(
            unet_config=unet_config,
            unet_params=jax.device_put(unet_params),
            vae_config=vae_config,
            vae_params=jax.device_put(vae_params),
            vocoder_config=vocoder_config,
            vocoder_params=jax.device_put(vocoder_params),
            scheduler=scheduler,
            text_encoder=encoder,
        )

    # ------------------------------------------------------------------------------------------ shapes

    @property
    def unet(self) -> UNet2DConditionModel:
        return UNet2DConditionModel(self.unet_config)

    @property
    def vocoder(self) -> HifiGan:
        return HifiGan(self.vocoder_config)

    @property
    def embedding_dim(self) -> int:
        """Width P of S (the CLAP projection dim the UNet's class embedding reads)."""
        return int(self.unet_config.projection_class_embeddings_input_dim)

    @property
    def sample_rate(self) -> int:
        return int(self.vocoder_config.sampling_rate)

    @property
    def seconds_per_frame(self) -> float:
        """diffusers' ``vocoder_upsample_factor``: one mel frame's duration."""
        return float(np.prod(self.vocoder_config.upsample_rates) / self.vocoder_config.sampling_rate)

    def default_audio_length_in_s(self) -> float:
        """The UNet's ``sample_size`` (latent time rows) × VAE factor × seconds per frame (5.12 s for AudioLDM)."""
        size = self.unet_config.sample_size
        rows = size[0] if isinstance(size, tuple) else size
        if rows is None:
            raise ValueError("the UNet config has no sample_size; pass audio_length_in_s")
        return rows * self.vae_config.downsample_factor * self.seconds_per_frame

    def audio_shape(self, audio_length_in_s: float | None = None) -> AudioShape:
        """Frames, output samples and latent shape for a duration, with ``AudioLDMPipeline``'s arithmetic."""
        f = np.prod(self.vocoder_config.upsample_rates) / self.vocoder_config.sampling_rate
        vsf = self.vae_config.downsample_factor
        if audio_length_in_s is None:
            audio_length_in_s = self.default_audio_length_in_s()
        if audio_length_in_s < f * vsf:
            raise ValueError(f"audio_length_in_s must be at least {f * vsf} s, got {audio_length_in_s}")
        frames = int(audio_length_in_s / f)
        samples = int(audio_length_in_s * self.vocoder_config.sampling_rate)
        if frames % vsf:
            frames = math.ceil(frames / vsf) * vsf
        latent = (frames // vsf, self.vocoder_config.model_in_dim // vsf, self.unet_config.in_channels)
        return AudioShape(float(audio_length_in_s), frames, samples, latent)

    # ------------------------------------------------------------------------------------------ sampling

    def initial_noise(self, batch: int, audio_length_in_s: float | None = None, seed: int = 0) -> jax.Array:
        """Unit Gaussian latents (B, h, w, C) for ``seed``."""
        shape = (batch, *self.audio_shape(audio_length_in_s).latent_shape)
        return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)

    def _check_embedding(self, x: Any, what: str) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        want = self.embedding_dim
        if x.ndim != 2 or x.shape[-1] != want:
            raise ValueError(
                f"{what} must be (batch, {want}) — the UNet's projection_class_embeddings_input_dim — "
                f"got shape {x.shape}"
            )
        return x

    def sample_latents(
        self,
        cond: jax.Array | np.ndarray,
        *,
        audio_length_in_s: float | None = None,
        num_inference_steps: int = 10,
        guidance_scale: float = 2.5,
        negative: jax.Array | np.ndarray | None = None,
        seed: int = 0,
        latents: jax.Array | np.ndarray | None = None,
    ) -> jax.Array:
        """Denoised latents (B, h, w, C) for S = ``cond`` (B, P). ``latents`` overrides the seeded initial noise
        (unit variance, NHWC); defaults are diffusers' (10 steps, guidance 2.5)."""
        cond = self._check_embedding(cond, "conditioning S")
        batch = cond.shape[0]
        guided = guidance_scale > 1.0
        negative = self.guidance_negative(
            cond, negative, guided, lambda x: self._check_embedding(x, "negative embedding")
        )
        if latents is None:
            latents = self.initial_noise(batch, audio_length_in_s, seed)
        latents = jnp.asarray(latents, jnp.float32)
        if latents.shape[0] != batch:
            raise ValueError(f"{latents.shape[0]} initial latents for {batch} conditionings")
        state = self.scheduler.set_timesteps(num_inference_steps, latents.shape)
        scale = jnp.asarray(guidance_scale, jnp.float32)
        return denoise(self.unet, self.unet_params, self.scheduler, state, latents, cond, negative, scale, guided)

    def decode_mel(self, latents: jax.Array) -> np.ndarray:
        """Latents -> the VAE's mel spectrogram (B, frames, mel_bins)."""
        return np.asarray(decode_audio(self.vae, self.vae_params, self.vocoder, self.vocoder_params, latents)[0])

    def decode(self, latents: jax.Array | np.ndarray, audio_length_in_s: float | None = None) -> np.ndarray:
        """Latents -> float32 waveforms (B, samples), cropped to ``int(audio_length_in_s · sample_rate)`` as diffusers
        does; without a length, the vocoder's full output for these latents is returned."""
        latents = jnp.asarray(latents, jnp.float32)
        _, wave = decode_audio(self.vae, self.vae_params, self.vocoder, self.vocoder_params, latents)
        wave = np.asarray(wave)
        if audio_length_in_s is not None:
            wave = wave[:, : self.audio_shape(audio_length_in_s).samples]
        return wave

    def __call__(
        self, cond: jax.Array | np.ndarray, *, audio_length_in_s: float | None = None, **kwargs: Any
    ) -> np.ndarray:
        """S (B, P) -> float32 waveforms (B, samples) at :attr:`sample_rate`. Keywords as :meth:`sample_latents`.
        Without ``audio_length_in_s`` and ``latents`` the UNet's default length is used."""
        if audio_length_in_s is None and kwargs.get("latents") is None:
            audio_length_in_s = self.default_audio_length_in_s()
        latents = self.sample_latents(cond, audio_length_in_s=audio_length_in_s, **kwargs)
        return self.decode(latents, audio_length_in_s)

    # ------------------------------------------------------------------------------------------ export

    def save_pretrained(self, root: str | os.PathLike) -> None:
        """Writes a diffusers AudioLDM folder that ``AudioLDMPipeline.from_pretrained`` and :meth:`from_pretrained`
        load back (the text encoder + tokenizer only when this pipeline has them)."""
        from spider_jax.convert.clap import save_clap_text
        from spider_jax.convert.diffusers_models import save_unet, save_vae
        from spider_jax.convert.vocoder import save_vocoder

        root = os.fspath(root)
        os.makedirs(root, exist_ok=True)
        save_unet(self.unet_config, jax.device_get(self.unet_params), os.path.join(root, "unet"))
        save_vae(self.vae_config, jax.device_get(self.vae_params), os.path.join(root, "vae"))
        save_vocoder(self.vocoder_config, jax.device_get(self.vocoder_params), os.path.join(root, "vocoder"))
        index: dict[str, Any] = {
            "_class_name": "AudioLDMPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": write_scheduler(root, self.scheduler),
            "vocoder": ["transformers", "SpeechT5HifiGan"],
        }
        index.update(write_text_encoder(root, self.text_encoder, save_clap_text, "ClapTextModelWithProjection"))
        write_model_index(root, index)
