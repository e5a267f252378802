"""Conditional 2D UNet (Stable Diffusion 1.5 / AudioLDM architecture) in Flax Linen, matching diffusers'
``UNet2DConditionModel`` numerically.

Public layout is channels-last: ``UNet2DConditionModel(config).apply({'params': p}, sample, t, context)`` takes the
noisy latents as ``(B, H, W, C)`` and returns ε as ``(B, H, W, C)``; transpose from diffusers' NCHW with
``x.transpose(0, 2, 3, 1)``. ``timesteps`` is a scalar or ``(B,)``; ``encoder_hidden_states`` is ``(B, L, D)`` (CLIP
text states for SD1.5) or ``None`` (AudioLDM: the transformer blocks then self-attend twice); ``class_labels`` is the
``(B, projection_class_embeddings_input_dim)`` vector of ``class_embed_type='simple_projection'`` (AudioLDM's CLAP
embedding), added to or concatenated with the time embedding.

``UNet2DConfig.from_hf_config(json_dict)`` reads a diffusers ``unet/config.json``; features beyond SD1.x/AudioLDM
(SDXL additions, fourier time embeddings, dual cross-attention, ...) are rejected with an error naming the key.
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
    UNetMidBlock2D,
    Upsample2D,
    _Typed,
    as_dtype,
    conv2d,
    dense,
    group_norm,
    timestep_embedding,
)
from spider_jax.diffusion.config_utils import check_block_types, config_from_hf, config_to_hf

_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
_MID_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None)
_CLASS_EMBED_TYPES = (None, "simple_projection", "projection", "timestep")

# diffusers config keys we do not implement: key -> the only accepted value(s).
_UNSUPPORTED = {
    "addition_embed_type": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "num_class_embeds": (None,),
    "num_attention_heads": (None,),
    "dual_cross_attention": (False,),
    "act_fn": ("silu", "swish"),
    "attention_type": ("default",),
    "cross_attention_norm": (None,),
    "reverse_transformer_layers_per_block": (None,),
}


def _per_block(value: Any, n: int, name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries, expected one per block ({n})")
        return tuple(value)
    return (value,) * n


@dataclasses.dataclass(frozen=True)
class UNet2DConfig:
    """The diffusers ``UNet2DConditionModel`` config fields we implement, plus execution choices."""

    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple[int, ...] | None = 1280
    transformer_layers_per_block: int | tuple[int, ...] = 1
    attention_head_dim: int | tuple[int, ...] = 8  # diffusers' naming quirk: this is the number of heads
    use_linear_projection: bool = False
    upcast_attention: bool = False
    class_embed_type: str | None = None
    projection_class_embeddings_input_dim: int | None = None
    class_embeddings_concat: bool = False
    resnet_time_scale_shift: str = "default"
    time_embedding_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    # Execution choices (not part of the checkpoint format).
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str | None = None  # None (XLA) or 'cudnn', see jax.nn.dot_product_attention

    def __post_init__(self):
        for name in ("down_block_types", "up_block_types", "block_out_channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in (
            "only_cross_attention",
            "layers_per_block",
            "cross_attention_dim",
            "transformer_layers_per_block",
            "attention_head_dim",
        ):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.sample_size, list):
            object.__setattr__(self, "sample_size", tuple(self.sample_size))
        n = len(self.block_out_channels)
        check_block_types(self.down_block_types, self.up_block_types, self.block_out_channels, _DOWN_TYPES, _UP_TYPES)
        if self.mid_block_type not in _MID_TYPES:
            raise ValueError(f"mid_block_type {self.mid_block_type!r} is not supported (supported: {_MID_TYPES})")
        if self.class_embed_type not in _CLASS_EMBED_TYPES:
            raise ValueError(f"class_embed_type {self.class_embed_type!r} not supported ({_CLASS_EMBED_TYPES})")
        if (
            self.class_embed_type in ("simple_projection", "projection")
            and not self.projection_class_embeddings_input_dim
        ):
            raise ValueError(f"class_embed_type={self.class_embed_type!r} needs projection_class_embeddings_input_dim")
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(f"resnet_time_scale_shift {self.resnet_time_scale_shift!r} is not supported")
        uses_cross = any("CrossAttn" in t for t in self.down_block_types + self.up_block_types)
        uses_cross = uses_cross or self.mid_block_type == "UNetMidBlock2DCrossAttn"
        if uses_cross and (self.cross_attention_dim is None or None in self.cross_dims):
            raise ValueError("cross-attention blocks need cross_attention_dim")
        for i, (heads, ch) in enumerate(zip(self.heads, self.block_out_channels, strict=True)):
            if ch % heads:
                raise ValueError(f"block {i}: {ch} channels are not divisible by {heads} heads (attention_head_dim)")
        _per_block(self.layers_per_block, n, "layers_per_block")
        _per_block(self.transformer_layers_per_block, n, "transformer_layers_per_block")
        _per_block(self.only_cross_attention, n, "only_cross_attention")

    # Per-block views, in down-block order (up blocks use them reversed, as diffusers does).
    @property
    def heads(self) -> tuple[int, ...]:
        return _per_block(self.attention_head_dim, len(self.block_out_channels), "attention_head_dim")

    @property
    def cross_dims(self) -> tuple[int | None, ...]:
        return _per_block(self.cross_attention_dim, len(self.block_out_channels), "cross_attention_dim")

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def num_upsamplers(self) -> int:
        return len(self.block_out_channels) - 1

    def replace(self, **kwargs: Any) -> UNet2DConfig:
        return dataclasses.replace(self, **kwargs)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> UNet2DConfig:
        """Config from a diffusers ``config.json`` dict; unsupported features raise ``ValueError`` naming the key."""
        return config_from_hf(cls, hf, overrides, unsupported=_UNSUPPORTED, label="UNet")

    def to_hf_config(self) -> dict[str, Any]:
        """The diffusers ``config.json`` for this UNet (``UNet2DConditionModel.from_pretrained`` reads it)."""
        return config_to_hf(self, {"_class_name": "UNet2DConditionModel"}, unsupported=_UNSUPPORTED)


class UNetDownBlock(_Typed):
    """``CrossAttnDownBlock2D`` (with ``has_attention``) or ``DownBlock2D``: ResNet (+ transformer) per layer, then
    an optional stride-2 conv. Returns the output and the skip activations the up path consumes."""

    config: UNet2DConfig
    out_channels: int
    num_layers: int
    has_attention: bool
    add_downsample: bool
    heads: int = 8
    cross_attention_dim: int | None = None
    transformer_layers: int = 1
    only_cross_attention: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb, context):
        skips = []
        for i in range(self.num_layers):
            x = ResnetBlock2D(name=f"resnets_{i}", **_resnet_kwargs(self.config, self.out_channels, self._dt()))(
                x, temb
            )
            if self.has_attention:
                x = _transformer(self, f"attentions_{i}")(x, context)
            skips.append(x)
        if self.add_downsample:
            x = Downsample2D(self.out_channels, self.config.downsample_padding, name="downsamplers_0", **self._dt())(x)
            skips.append(x)
        return x, skips


class UNetUpBlock(_Typed):
    """``CrossAttnUpBlock2D`` / ``UpBlock2D``: per layer, concatenate the matching skip on channels, ResNet
    (+ transformer); then an optional nearest x2 + conv to the next skip's spatial size."""

    config: UNet2DConfig
    out_channels: int
    num_layers: int
    has_attention: bool
    add_upsample: bool
    heads: int = 8
    cross_attention_dim: int | None = None
    transformer_layers: int = 1
    only_cross_attention: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, skips, temb, context, upsample_size=None):
        for i in range(self.num_layers):
            x = jnp.concatenate([x, skips[-1 - i]], axis=-1)
            x = ResnetBlock2D(name=f"resnets_{i}", **_resnet_kwargs(self.config, self.out_channels, self._dt()))(
                x, temb
            )
            if self.has_attention:
                x = _transformer(self, f"attentions_{i}")(x, context)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, name="upsamplers_0", **self._dt())(x, upsample_size)
        return x


class UNetMidBlock2DCrossAttn(_Typed):
    """ResNet, then ``num_layers`` x (transformer, ResNet), all at the bottom resolution."""

    config: UNet2DConfig
    channels: int
    heads: int
    cross_attention_dim: int | None
    transformer_layers: int = 1
    num_layers: int = 1
    only_cross_attention: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb, context):
        res = _resnet_kwargs(self.config, self.channels, self._dt(), self.config.mid_block_scale_factor)
        x = ResnetBlock2D(name="resnets_0", **res)(x, temb)
        for i in range(self.num_layers):
            x = _transformer(self, f"attentions_{i}", self.channels)(x, context)
            x = ResnetBlock2D(name=f"resnets_{i + 1}", **res)(x, temb)
        return x


def _resnet_kwargs(cfg: UNet2DConfig, out_channels: int, dt: dict, scale: float = 1.0) -> dict[str, Any]:
    return dict(
        out_channels=out_channels,
        groups=cfg.norm_num_groups,
        eps=cfg.norm_eps,
        output_scale_factor=scale,
        time_embedding_norm=cfg.resnet_time_scale_shift,
        **dt,
    )


def _transformer(block: Any, name: str, channels: int | None = None) -> Transformer2DModel:
    cfg: UNet2DConfig = block.config
    channels = channels or block.out_channels
    return Transformer2DModel(
        heads=block.heads,
        dim_head=channels // block.heads,
        num_layers=block.transformer_layers,
        norm_num_groups=cfg.norm_num_groups,
        cross_attention_dim=block.cross_attention_dim,
        use_linear_projection=cfg.use_linear_projection,
        only_cross_attention=block.only_cross_attention,
        upcast_attention=cfg.upcast_attention,
        attention_impl=cfg.attention_impl,
        name=name,
        **block._dt(),
    )


class UNet2DConditionModel(nn.Module):
    """ε-prediction UNet; see the module docstring for the NHWC calling convention."""

    config: UNet2DConfig

    @nn.compact
    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array | float | int,
        encoder_hidden_states: jax.Array | None = None,
        class_labels: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        dt = {"dtype": as_dtype(cfg.dtype), "param_dtype": as_dtype(cfg.param_dtype)}
        n = len(cfg.block_out_channels)
        batch = sample.shape[0]
        x = sample.astype(dt["dtype"])
        if cfg.center_input_sample:
            x = 2 * x - 1.0
        if encoder_hidden_states is not None:
            encoder_hidden_states = encoder_hidden_states.astype(dt["dtype"])

        # time (+ class) embedding
        t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), (batch,))
        t_emb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = TimestepEmbedding(cfg.time_embed_dim, name="time_embedding", **dt)(t_emb.astype(dt["dtype"]))
        if cfg.class_embed_type is not None:
            if class_labels is None:
                raise ValueError(f"class_embed_type={cfg.class_embed_type!r}: class_labels must be given")
            labels = jnp.asarray(class_labels)
            if cfg.class_embed_type == "timestep":
                labels = timestep_embedding(
                    labels.reshape(-1), cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift
                )
            labels = labels.astype(dt["dtype"])
            if cfg.class_embed_type == "simple_projection":
                class_emb = dense(cfg.time_embed_dim, name="class_embedding", **dt)(labels)
            else:
                class_emb = TimestepEmbedding(cfg.time_embed_dim, name="class_embedding", **dt)(labels)
            emb = jnp.concatenate([emb, class_emb], -1) if cfg.class_embeddings_concat else emb + class_emb

        x = conv2d(
            cfg.block_out_channels[0], cfg.conv_in_kernel, 1, (cfg.conv_in_kernel - 1) // 2, name="conv_in", **dt
        )(x)

        layers = _per_block(cfg.layers_per_block, n, "layers_per_block")
        tlayers = _per_block(cfg.transformer_layers_per_block, n, "transformer_layers_per_block")
        only_cross = _per_block(cfg.only_cross_attention, n, "only_cross_attention")
        heads, cross = cfg.heads, cfg.cross_dims
        if encoder_hidden_states is None:
            self._check_self_attention_only(cfg)

        skips = [x]
        for i, kind in enumerate(cfg.down_block_types):
            x, block_skips = UNetDownBlock(
                out_channels=cfg.block_out_channels[i],
                num_layers=layers[i],
                has_attention=kind == "CrossAttnDownBlock2D",
                add_downsample=i < n - 1,
                heads=heads[i],
                cross_attention_dim=cross[i],
                transformer_layers=tlayers[i],
                only_cross_attention=only_cross[i],
                config=cfg,
                name=f"down_blocks_{i}",
                **dt,
            )(x, emb, encoder_hidden_states)
            skips += block_skips

        if cfg.mid_block_type == "UNetMidBlock2DCrossAttn":
            x = UNetMidBlock2DCrossAttn(
                channels=cfg.block_out_channels[-1],
                heads=heads[-1],
                cross_attention_dim=cross[-1],
                transformer_layers=tlayers[-1],
                config=cfg,
                name="mid_block",
                **dt,
            )(x, emb, encoder_hidden_states)
        elif cfg.mid_block_type == "UNetMidBlock2D":
            x = UNetMidBlock2D(
                channels=cfg.block_out_channels[-1],
                num_layers=0,
                groups=cfg.norm_num_groups,
                eps=cfg.norm_eps,
                add_attention=False,
                output_scale_factor=cfg.mid_block_scale_factor,
                time_embedding_norm=cfg.resnet_time_scale_shift,
                name="mid_block",
                **dt,
            )(x, emb)

        rev = lambda seq: tuple(reversed(seq))
        for i, kind in enumerate(cfg.up_block_types):
            count = rev(layers)[i] + 1
            block_skips, skips = skips[-count:], skips[:-count]
            last = i == n - 1
            x = UNetUpBlock(
                out_channels=rev(cfg.block_out_channels)[i],
                num_layers=count,
                has_attention=kind == "CrossAttnUpBlock2D",
                add_upsample=not last,
                heads=rev(heads)[i],
                cross_attention_dim=rev(cross)[i],
                transformer_layers=rev(tlayers)[i],
                only_cross_attention=rev(only_cross)[i],
                config=cfg,
                name=f"up_blocks_{i}",
                **dt,
            )(x, block_skips, emb, encoder_hidden_states, None if last else tuple(skips[-1].shape[1:3]))

        x = nn.silu(group_norm(cfg.norm_num_groups, cfg.norm_eps, name="conv_norm_out", **dt)(x))
        return conv2d(cfg.out_channels, cfg.conv_out_kernel, 1, (cfg.conv_out_kernel - 1) // 2, name="conv_out", **dt)(
            x
        )

    @staticmethod
    def _check_self_attention_only(cfg: UNet2DConfig) -> None:
        """Without encoder states, attn2 attends to the block's own features, so its kv width must be the block's."""
        chans, cross = cfg.block_out_channels, cfg.cross_dims
        blocks = [(f"down_blocks.{i}", chans[i], cross[i]) for i, k in enumerate(cfg.down_block_types) if "Cross" in k]
        blocks += [
            (f"up_blocks.{i}", chans[::-1][i], cross[::-1][i]) for i, k in enumerate(cfg.up_block_types) if "Cross" in k
        ]
        if cfg.mid_block_type == "UNetMidBlock2DCrossAttn":
            blocks.append(("mid_block", chans[-1], cross[-1]))
        for where, ch, dim in blocks:
            if dim != ch:
                raise ValueError(
                    f"encoder_hidden_states is None, so {where}'s cross-attention attends to its own {ch}-channel "
                    f"features, but it was built for cross_attention_dim={dim}; pass encoder_hidden_states"
                )


def dummy_inputs(config: UNet2DConfig, batch: int = 1) -> dict[str, Any]:
    """Smallest valid inputs, for ``init`` / ``jax.eval_shape`` (the parameter shapes do not depend on them)."""
    side = 2**config.num_upsamplers
    cross = config.cross_dims
    uniform = cross[0] is not None and all(c == cross[0] for c in cross)
    inputs: dict[str, Any] = {
        "sample": jnp.zeros((batch, side, side, config.in_channels), jnp.float32),
        "timesteps": jnp.zeros((batch,), jnp.float32),
        "encoder_hidden_states": jnp.zeros((batch, 1, cross[0]), jnp.float32) if uniform else None,
        "class_labels": None,
    }
    if config.class_embed_type in ("simple_projection", "projection"):
        inputs["class_labels"] = jnp.zeros((batch, config.projection_class_embeddings_input_dim), jnp.float32)
    elif config.class_embed_type == "timestep":
        inputs["class_labels"] = jnp.zeros((batch,), jnp.float32)
    return inputs


def init_params(config: UNet2DConfig, rng: jax.Array) -> Any:
    """Random parameters (boxed with logical axis names; ``nn.unbox`` them for ``apply``)."""
    return UNet2DConditionModel(config).init(rng, **dummy_inputs(config))["params"]


def abstract_params(config: UNet2DConfig) -> Any:
    """Shapes/dtypes (boxed with logical names) without allocating: feeds ``sharding.shardings_for`` and the
    converters' name/shape checks."""
    return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
