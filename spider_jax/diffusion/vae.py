"""``AutoencoderKL`` (the Stable Diffusion / AudioLDM VAE) in Flax Linen, matching diffusers numerically.

Channels-last like the UNet: images/mel maps are ``(B, H, W, C)``, latents ``(B, H/f, W/f, latent_channels)`` with
``f = 2 ** (len(block_out_channels) - 1)``. ``encode`` returns the diagonal Gaussian's ``(mean, logvar)``
(logvar clamped to [-30, 20] as diffusers does); :func:`sample_latent` draws from it with a PRNG key. Diffusion
models work on ``(z - shift_factor) * scaling_factor``: :meth:`AutoencoderKLConfig.scale_latents` /
:meth:`AutoencoderKLConfig.unscale_latents` apply that (the pipelines' ``1 / scaling_factor * latents``).

    vae = AutoencoderKL(config)
    mean, logvar = vae.apply({'params': p}, images, method=vae.encode)
    images = vae.apply({'params': p}, latents, method=vae.decode)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from spider_jax.diffusion.blocks import (
    Downsample2D,
    ResnetBlock2D,
    UNetMidBlock2D,
    Upsample2D,
    _Typed,
    as_dtype,
    conv2d,
    group_norm,
)
from spider_jax.diffusion.config_utils import config_from_hf, config_to_hf

_UNSUPPORTED = {"act_fn": ("silu", "swish")}


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig:
    """diffusers ``AutoencoderKL`` config fields, plus execution choices."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, int] = 512
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    # Execution choices (not part of the checkpoint format).
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str | None = None

    def __post_init__(self):
        for name in ("down_block_types", "up_block_types", "block_out_channels", "latents_mean", "latents_std"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.sample_size, list):
            object.__setattr__(self, "sample_size", tuple(self.sample_size))
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        if set(self.down_block_types) != {"DownEncoderBlock2D"}:
            raise ValueError(f"down_block_types {self.down_block_types} not supported (only DownEncoderBlock2D)")
        if set(self.up_block_types) != {"UpDecoderBlock2D"}:
            raise ValueError(f"up_block_types {self.up_block_types} not supported (only UpDecoderBlock2D)")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def scale_latents(self, z: jax.Array) -> jax.Array:
        """VAE latents -> the diffusion model's latent space."""
        return (z - (self.shift_factor or 0.0)) * self.scaling_factor

    def unscale_latents(self, z: jax.Array) -> jax.Array:
        """Diffusion latents -> what :meth:`AutoencoderKL.decode` expects."""
        return z / self.scaling_factor + (self.shift_factor or 0.0)

    def replace(self, **kwargs: Any) -> AutoencoderKLConfig:
        return dataclasses.replace(self, **kwargs)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> AutoencoderKLConfig:
        return config_from_hf(cls, hf, overrides, unsupported=_UNSUPPORTED, label="VAE")

    def to_hf_config(self) -> dict[str, Any]:
        return config_to_hf(self, {"_class_name": "AutoencoderKL", "act_fn": "silu"})


def _mid_block(cfg: AutoencoderKLConfig, dt: dict) -> UNetMidBlock2D:
    return UNetMidBlock2D(
        channels=cfg.block_out_channels[-1],
        groups=cfg.norm_num_groups,
        eps=1e-6,
        add_attention=cfg.mid_block_add_attention,
        attention_head_dim=cfg.block_out_channels[-1],  # a single head
        attention_impl=cfg.attention_impl,
        name="mid_block",
        **dt,
    )


class DownEncoderBlock2D(_Typed):
    """``num_layers`` ResNets without time embedding, then the bottom/right-padded stride-2 conv."""

    out_channels: int
    num_layers: int
    groups: int
    add_downsample: bool
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, groups=self.groups, eps=1e-6, name=f"resnets_{i}", **self._dt())(x)
        if self.add_downsample:
            x = Downsample2D(self.out_channels, padding=0, name="downsamplers_0", **self._dt())(x)
        return x


class UpDecoderBlock2D(_Typed):
    """``num_layers`` ResNets without time embedding, then nearest x2 + conv."""

    out_channels: int
    num_layers: int
    groups: int
    add_upsample: bool
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, groups=self.groups, eps=1e-6, name=f"resnets_{i}", **self._dt())(x)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, name="upsamplers_0", **self._dt())(x)
        return x


class Encoder(nn.Module):
    """conv_in -> DownEncoderBlocks -> mid-block (ResNet, attention, ResNet) -> GroupNorm/SiLU -> conv_out to
    2 x latent_channels (mean and logvar)."""

    config: AutoencoderKLConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        dt = {"dtype": as_dtype(cfg.dtype), "param_dtype": as_dtype(cfg.param_dtype)}
        chans = cfg.block_out_channels
        x = conv2d(chans[0], 3, 1, 1, name="conv_in", **dt)(x)
        for i, ch in enumerate(chans):
            x = DownEncoderBlock2D(
                ch, cfg.layers_per_block, cfg.norm_num_groups, i < len(chans) - 1, name=f"down_blocks_{i}", **dt
            )(x)
        x = _mid_block(cfg, dt)(x)
        x = nn.silu(group_norm(cfg.norm_num_groups, 1e-6, name="conv_norm_out", **dt)(x))
        return conv2d(2 * cfg.latent_channels, 3, 1, 1, name="conv_out", **dt)(x)


class Decoder(nn.Module):
    """conv_in -> mid-block -> UpDecoderBlocks (layers_per_block + 1 ResNets each) -> GroupNorm/SiLU -> conv_out."""

    config: AutoencoderKLConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        dt = {"dtype": as_dtype(cfg.dtype), "param_dtype": as_dtype(cfg.param_dtype)}
        chans = tuple(reversed(cfg.block_out_channels))
        x = conv2d(chans[0], 3, 1, 1, name="conv_in", **dt)(z)
        x = _mid_block(cfg, dt)(x)
        for i, ch in enumerate(chans):
            x = UpDecoderBlock2D(
                ch, cfg.layers_per_block + 1, cfg.norm_num_groups, i < len(chans) - 1, name=f"up_blocks_{i}", **dt
            )(x)
        x = nn.silu(group_norm(cfg.norm_num_groups, 1e-6, name="conv_norm_out", **dt)(x))
        return conv2d(cfg.out_channels, 3, 1, 1, name="conv_out", **dt)(x)


class AutoencoderKL(nn.Module):
    """Encoder + ``quant_conv`` (1x1) to the posterior; ``post_quant_conv`` (1x1) + Decoder back to pixels."""

    config: AutoencoderKLConfig

    def setup(self):
        cfg = self.config
        dt = {"dtype": as_dtype(cfg.dtype), "param_dtype": as_dtype(cfg.param_dtype)}
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = conv2d(2 * cfg.latent_channels, 1, 1, 0, **dt) if cfg.use_quant_conv else None
        self.post_quant_conv = conv2d(cfg.latent_channels, 1, 1, 0, **dt) if cfg.use_post_quant_conv else None

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Images ``(B, H, W, in_channels)`` -> posterior ``(mean, logvar)``, each ``(B, h, w, latent_channels)``."""
        h = self.encoder(x.astype(as_dtype(self.config.dtype)))
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        """Unscaled latents ``(B, h, w, latent_channels)`` -> images ``(B, H, W, out_channels)``."""
        z = z.astype(as_dtype(self.config.dtype))
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Reconstruction: decode the posterior mode, or a sample when ``key`` is given."""
        mean, logvar = self.encode(x)
        z = mean if key is None else sample_latent(mean, logvar, key)
        return self.decode(z)


def sample_latent(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """A draw from the diagonal Gaussian posterior: ``mean + exp(logvar / 2) * N(0, 1)``."""
    noise = jax.random.normal(key, mean.shape, jnp.float32).astype(mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * noise


def init_params(config: AutoencoderKLConfig, rng: jax.Array) -> Any:
    """Random parameters (boxed with logical axis names; ``nn.unbox`` them for ``apply``)."""
    side = config.downsample_factor
    return AutoencoderKL(config).init(rng, jnp.zeros((1, side, side, config.in_channels), jnp.float32))["params"]


def abstract_params(config: AutoencoderKLConfig) -> Any:
    """Parameter shapes/dtypes without allocating (for sharding and the converters' checks)."""
    return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
