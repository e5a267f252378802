"""Conditional video UNet (Zeroscope / ModelScope text-to-video) in Flax Linen, matching diffusers'
``UNet3DConditionModel`` numerically.

Public layout is channels-last with frames second: ``UNet3DConditionModel(config).apply({'params': p}, sample, t,
context)`` takes noisy latents ``(B, F, H, W, C)`` and returns ε of the same shape (diffusers: ``(B, C, F, H, W)``;
convert with ``x.transpose(0, 2, 3, 4, 1)``). Inside, frames are folded into the batch, ``(B·F, H, W, C)``, so the
spatial blocks (ResNets, spatial transformers, resamplers) are the SD1.5 ones from ``blocks.py``; the temporal
blocks (``temporal_blocks.py``) mix along frames. The text conditioning ``(B, L, D)`` and the time embedding are
repeated per frame, as diffusers does.

Architecture facts read from diffusers (not configurable there, so fixed here):

* ``attention_head_dim`` is the width of every attention head: ``transformer_in`` (temporal attention right after
  ``conv_in``) has 8 such heads, the block transformers ``channels // attention_head_dim`` (diffusers passes
  ``(channels // n, n)`` positionally into ``(num_attention_heads, attention_head_dim)``, so unlike the 2-D UNet
  the config value really is the head width here; Zeroscope: 64);
* every spatial transformer uses linear ``proj_in``/``proj_out``; the mid-block is always
  ``UNetMidBlock3DCrossAttn``; temporal-conv GroupNorms use eps 1e-5, the ResNets ``norm_eps``.

``UNet3DConfig.from_hf_config(json_dict)`` reads a diffusers ``unet/config.json``; ``to_hf_config`` writes one.
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
    TimestepEmbedding,
    Transformer2DModel,
    Upsample2D,
    _Typed,
    as_dtype,
    conv2d,
    group_norm,
    timestep_embedding,
)
from spider_jax.diffusion.config_utils import check_block_types, config_from_hf, config_to_hf
from spider_jax.diffusion.temporal_blocks import TemporalConvLayer, TransformerTemporalModel

_DOWN_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
_UP_TYPES = ("CrossAttnUpBlock3D", "UpBlock3D")
TRANSFORMER_IN_HEADS = 8  # fixed in diffusers' UNet3DConditionModel.__init__

# diffusers config keys we do not implement: key -> the only accepted value(s).
_UNSUPPORTED = {
    "act_fn": ("silu", "swish"),
    "num_attention_heads": (None,),
    "time_cond_proj_dim": (None,),
}


@dataclasses.dataclass(frozen=True)
class UNet3DConfig:
    """The diffusers ``UNet3DConditionModel`` config fields, plus execution choices (defaults: diffusers')."""

    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1024
    attention_head_dim: int | tuple[int, ...] = 64  # width per head (blocks and transformer_in)
    # Execution choices (not part of the checkpoint format).
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str | None = None  # None (XLA) or 'cudnn', see jax.nn.dot_product_attention

    def __post_init__(self):
        for name in ("down_block_types", "up_block_types", "block_out_channels", "attention_head_dim", "sample_size"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        check_block_types(self.down_block_types, self.up_block_types, self.block_out_channels, _DOWN_TYPES, _UP_TYPES)
        if not isinstance(self.attention_head_dim, int):
            # diffusers builds transformer_in with attention_head_dim as its head width, which must be one int.
            raise ValueError(
                f"attention_head_dim={self.attention_head_dim!r}: UNet3DConditionModel needs a single int "
                "(it is also transformer_in's head width)"
            )
        if not isinstance(self.layers_per_block, int):
            raise ValueError(f"layers_per_block must be an int for UNet3DConditionModel, got {self.layers_per_block!r}")
        if self.norm_num_groups is None:
            raise ValueError("norm_num_groups=None is not supported (the ResNets and temporal layers need groups)")
        for i, ch in enumerate(self.block_out_channels):
            for key in ("attention_head_dim", "norm_num_groups"):
                if ch % getattr(self, key):
                    raise ValueError(f"block {i}: {ch} channels are not divisible by {key}={getattr(self, key)}")

    def heads(self, channels: int) -> int:
        """Heads of the spatial / temporal transformers of a block with ``channels`` channels."""
        return channels // self.attention_head_dim

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @property
    def num_upsamplers(self) -> int:
        return len(self.block_out_channels) - 1

    def replace(self, **kwargs: Any) -> UNet3DConfig:
        return dataclasses.replace(self, **kwargs)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> UNet3DConfig:
        """Config from a diffusers ``config.json`` dict; unsupported features raise ``ValueError`` naming the key."""
        return config_from_hf(cls, hf, overrides, unsupported=_UNSUPPORTED, label="UNet3D")

    def to_hf_config(self) -> dict[str, Any]:
        """The diffusers ``config.json`` for this UNet (``UNet3DConditionModel.from_pretrained`` reads it)."""
        return config_to_hf(self, {"_class_name": "UNet3DConditionModel"}, unsupported=_UNSUPPORTED)


class _Block3D(_Typed):
    """Shared constructors: a layer of a 3D block is ResNet -> temporal conv (-> spatial transformer with
    cross-attention -> temporal transformer)."""

    config: UNet3DConfig

    def _resnet(self, name: str, channels: int, scale: float = 1.0) -> ResnetBlock2D:
        cfg = self.config
        return ResnetBlock2D(
            out_channels=channels,
            groups=cfg.norm_num_groups,
            eps=cfg.norm_eps,
            output_scale_factor=scale,
            name=name,
            **self._dt(),
        )

    def _temporal_layer(self, i: int, x: jax.Array, num_frames: int) -> jax.Array:
        ch = x.shape[-1]
        return TemporalConvLayer(ch, self.config.norm_num_groups, name=f"temp_convs_{i}", **self._dt())(x, num_frames)

    def _attention_layer(self, i: int, x: jax.Array, context: jax.Array, num_frames: int) -> jax.Array:
        cfg, ch = self.config, x.shape[-1]
        heads = cfg.heads(ch)
        x = Transformer2DModel(
            heads=heads,
            dim_head=cfg.attention_head_dim,
            norm_num_groups=cfg.norm_num_groups,
            cross_attention_dim=cfg.cross_attention_dim,
            use_linear_projection=True,
            attention_impl=cfg.attention_impl,
            name=f"attentions_{i}",
            **self._dt(),
        )(x, context)
        return TransformerTemporalModel(
            heads=heads,
            dim_head=cfg.attention_head_dim,
            norm_num_groups=cfg.norm_num_groups,
            attention_impl=cfg.attention_impl,
            name=f"temp_attentions_{i}",
            **self._dt(),
        )(x, num_frames)


class DownBlock3D(_Block3D):
    """``CrossAttnDownBlock3D`` (``has_attention``) or ``DownBlock3D``; returns the output and its skips."""

    out_channels: int
    num_layers: int = 1
    has_attention: bool = True
    add_downsample: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb, context, num_frames):
        skips = []
        for i in range(self.num_layers):
            x = self._resnet(f"resnets_{i}", self.out_channels)(x, temb)
            x = self._temporal_layer(i, x, num_frames)
            if self.has_attention:
                x = self._attention_layer(i, x, context, num_frames)
            skips.append(x)
        if self.add_downsample:
            x = Downsample2D(self.out_channels, self.config.downsample_padding, name="downsamplers_0", **self._dt())(x)
            skips.append(x)
        return x, skips


class UpBlock3D(_Block3D):
    """``CrossAttnUpBlock3D`` / ``UpBlock3D``: per layer concatenate a skip, then the layer; optional upsample."""

    out_channels: int
    num_layers: int = 1
    has_attention: bool = True
    add_upsample: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, skips, temb, context, num_frames, upsample_size=None):
        for i in range(self.num_layers):
            x = jnp.concatenate([x, skips[-1 - i]], axis=-1)
            x = self._resnet(f"resnets_{i}", self.out_channels)(x, temb)
            x = self._temporal_layer(i, x, num_frames)
            if self.has_attention:
                x = self._attention_layer(i, x, context, num_frames)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, name="upsamplers_0", **self._dt())(x, upsample_size)
        return x


class UNetMidBlock3DCrossAttn(_Block3D):
    """ResNet -> temporal conv, then (spatial transformer -> temporal transformer -> ResNet -> temporal conv)."""

    channels: int
    num_layers: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb, context, num_frames):
        scale = self.config.mid_block_scale_factor
        x = self._resnet("resnets_0", self.channels, scale)(x, temb)
        x = self._temporal_layer(0, x, num_frames)
        for i in range(self.num_layers):
            x = self._attention_layer(i, x, context, num_frames)
            x = self._resnet(f"resnets_{i + 1}", self.channels, scale)(x, temb)
            x = self._temporal_layer(i + 1, x, num_frames)
        return x


class UNet3DConditionModel(nn.Module):
    """ε-prediction video UNet; see the module docstring for the ``(B, F, H, W, C)`` calling convention."""

    config: UNet3DConfig

    @nn.compact
    def __call__(
        self, sample: jax.Array, timesteps: jax.Array | float | int, encoder_hidden_states: jax.Array
    ) -> jax.Array:
        cfg = self.config
        dt = {"dtype": as_dtype(cfg.dtype), "param_dtype": as_dtype(cfg.param_dtype)}
        if sample.ndim != 5:
            raise ValueError(f"sample must be (batch, frames, height, width, channels), got shape {sample.shape}")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != cfg.cross_attention_dim:
            raise ValueError(
                f"encoder_hidden_states must be (batch, tokens, {cfg.cross_attention_dim}), "
                f"got shape {encoder_hidden_states.shape}"
            )
        b, f, h, w, c = sample.shape
        n = len(cfg.block_out_channels)
        x = sample.astype(dt["dtype"]).reshape(b * f, h, w, c)

        t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), (b,))
        t_emb = timestep_embedding(t, cfg.block_out_channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        emb = TimestepEmbedding(cfg.time_embed_dim, name="time_embedding", **dt)(t_emb.astype(dt["dtype"]))
        emb = jnp.repeat(emb, f, axis=0)  # repeat_interleave: frames of one video are consecutive
        context = jnp.repeat(encoder_hidden_states.astype(dt["dtype"]), f, axis=0)

        x = conv2d(cfg.block_out_channels[0], 3, 1, 1, name="conv_in", **dt)(x)
        x = TransformerTemporalModel(
            heads=TRANSFORMER_IN_HEADS,
            dim_head=cfg.attention_head_dim,
            norm_num_groups=cfg.norm_num_groups,
            attention_impl=cfg.attention_impl,
            name="transformer_in",
            **dt,
        )(x, f)

        skips = [x]
        for i, kind in enumerate(cfg.down_block_types):
            x, block_skips = DownBlock3D(
                config=cfg,
                out_channels=cfg.block_out_channels[i],
                num_layers=cfg.layers_per_block,
                has_attention=kind == "CrossAttnDownBlock3D",
                add_downsample=i < n - 1,
                name=f"down_blocks_{i}",
                **dt,
            )(x, emb, context, f)
            skips += block_skips

        x = UNetMidBlock3DCrossAttn(config=cfg, channels=cfg.block_out_channels[-1], name="mid_block", **dt)(
            x, emb, context, f
        )

        reversed_channels = tuple(reversed(cfg.block_out_channels))
        for i, kind in enumerate(cfg.up_block_types):
            count = cfg.layers_per_block + 1
            block_skips, skips = skips[-count:], skips[:-count]
            last = i == n - 1
            x = UpBlock3D(
                config=cfg,
                out_channels=reversed_channels[i],
                num_layers=count,
                has_attention=kind == "CrossAttnUpBlock3D",
                add_upsample=not last,
                name=f"up_blocks_{i}",
                **dt,
            )(x, block_skips, emb, context, f, None if last else tuple(skips[-1].shape[1:3]))

        x = nn.silu(group_norm(cfg.norm_num_groups, cfg.norm_eps, name="conv_norm_out", **dt)(x))
        x = conv2d(cfg.out_channels, 3, 1, 1, name="conv_out", **dt)(x)
        return x.reshape(b, f, h, w, cfg.out_channels)


def dummy_inputs(config: UNet3DConfig, batch: int = 1, frames: int = 2) -> dict[str, Any]:
    """Smallest valid inputs, for ``init`` / ``jax.eval_shape`` (parameter shapes do not depend on them)."""
    side = 2**config.num_upsamplers
    return {
        "sample": jnp.zeros((batch, frames, side, side, config.in_channels), jnp.float32),
        "timesteps": jnp.zeros((batch,), jnp.float32),
        "encoder_hidden_states": jnp.zeros((batch, 1, config.cross_attention_dim), jnp.float32),
    }


def init_params(config: UNet3DConfig, rng: jax.Array) -> Any:
    """Random parameters (boxed with logical axis names; ``nn.unbox`` them for ``apply``)."""
    return UNet3DConditionModel(config).init(rng, **dummy_inputs(config))["params"]


def abstract_params(config: UNet3DConfig) -> Any:
    """Shapes/dtypes (boxed with logical names) without allocating: feeds ``sharding.shardings_for`` and the
    converter's name/shape checks."""
    return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
