"""Building blocks shared by the diffusion decoders (SD1.5 UNet, VAE, later Zeroscope's UNet3D and AudioLDM), in Flax
Linen, numerically matching diffusers' PyTorch modules of the same name.

Layout: activations are channels-last (NHWC for images, ``(B, L, C)`` for token sequences) because that is what
XLA's convolutions and GroupNorm prefer on TPU/GPU; the PyTorch NCHW layout only appears in the converters.
Submodule names copy diffusers' state-dict names with ``.`` before a list index turned into ``_``
(``down_blocks.0.resnets.1.conv1`` -> ``down_blocks_0/resnets_1/conv1``), so conversion is a mechanical rename plus a
kernel transpose (``spider_jax.convert.diffusers_models``). Every parameter carries logical axis names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

CONV_AXES = ("conv_kernel", "conv_kernel", "channels", "channels_out")
DENSE_AXES = ("channels", "channels_out")
BIAS_AXES = ("channels_out",)
NORM_AXES = ("norm",)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def as_dtype(name: Any) -> Any:
    """``'bfloat16'`` -> ``jnp.bfloat16`` (configs store dtype names so they serialise)."""
    if isinstance(name, str):
        if name not in _DTYPES:
            raise ValueError(f"Unknown dtype {name!r}; choose from {sorted(_DTYPES)}")
        return _DTYPES[name]
    return name


# ------------------------------------------------------------------------------------------ layer helpers


def conv2d(
    features: int,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int | Sequence[tuple[int, int]] = 1,
    *,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Conv:
    """A ``torch.nn.Conv2d``-equivalent on NHWC (symmetric integer padding unless pairs are given)."""
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=tuple(padding),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, BIAS_AXES),
        name=name,
    )


def dense(
    features: int,
    *,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), DENSE_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, BIAS_AXES),
        name=name,
    )


def group_norm(groups: int, eps: float, *, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.GroupNorm:
    """GroupNorm over the last (channel) axis; statistics in float32 with the two-pass variance torch uses."""
    return nn.GroupNorm(
        num_groups=groups,
        epsilon=eps,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, NORM_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, NORM_AXES),
        name=name,
    )


def layer_norm(eps: float, *, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, NORM_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, NORM_AXES),
        name=name,
    )


def nearest_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``F.interpolate(mode='nearest')`` on NHWC: source index ``floor(dst * in / out)`` per spatial axis."""
    _, h, w, _ = x.shape
    oh, ow = size
    if (oh, ow) == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    rows = (np.arange(oh) * h) // oh
    cols = (np.arange(ow) * w) // ow
    return x[:, rows][:, :, cols]


class _Typed(nn.Module):
    """Mixin: modules define ``dtype``/``param_dtype`` fields; this hands them to sublayers."""

    def _dt(self) -> dict[str, Any]:
        return {"dtype": as_dtype(self.dtype), "param_dtype": as_dtype(self.param_dtype)}


# ------------------------------------------------------------------------------------------ time embedding


def timestep_embedding(
    timesteps: jax.Array,
    dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1.0,
    scale: float = 1.0,
    max_period: int = 10000,
) -> jax.Array:
    """diffusers' ``get_timestep_embedding``: ``[sin, cos]`` of ``t * exp(-log(P) i / (half - shift))`` (float32).

    The frequency table is computed in numpy float32 like torch does, so the embedding of t=999 matches to the ulp.
    """
    half = dim // 2
    exponent = (-math.log(max_period) * np.arange(half, dtype=np.float32)).astype(np.float32)
    freqs = np.exp(exponent / np.float32(half - downscale_freq_shift)).astype(np.float32)
    args = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.asarray(freqs)[None, :]
    args = scale * args
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(_Typed):
    """``linear_1 -> SiLU -> linear_2``: lifts the sinusoidal embedding (or a class vector) to the time width."""

    time_embed_dim: int
    out_dim: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = dense(self.time_embed_dim, name="linear_1", **self._dt())(x.astype(as_dtype(self.dtype)))
        x = nn.silu(x)
        return dense(self.out_dim or self.time_embed_dim, name="linear_2", **self._dt())(x)


# ------------------------------------------------------------------------------------------ resnet / resampling


class ResnetBlock2D(_Typed):
    """GroupNorm-SiLU-conv twice with the time embedding added (``default``) or applied as scale/shift
    (``scale_shift``) between; a 1x1 conv shortcut when the channel count changes. ``temb=None`` (VAE) means the
    block has no ``time_emb_proj`` at all."""

    out_channels: int
    groups: int = 32
    groups_out: int | None = None
    eps: float = 1e-6
    output_scale_factor: float = 1.0
    time_embedding_norm: str = "default"
    use_in_shortcut: bool | None = None
    conv_shortcut_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        if self.time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(f"time_embedding_norm {self.time_embedding_norm!r} is not supported")
        dt = self._dt()
        h = nn.silu(group_norm(self.groups, self.eps, name="norm1", **dt)(x))
        h = conv2d(self.out_channels, 3, 1, 1, name="conv1", **dt)(h)
        scale_shift = None
        if temb is not None:
            width = self.out_channels * (2 if self.time_embedding_norm == "scale_shift" else 1)
            t = dense(width, name="time_emb_proj", **dt)(nn.silu(temb))[:, None, None, :]
            if self.time_embedding_norm == "default":
                h = h + t
            else:
                scale_shift = jnp.split(t, 2, axis=-1)
        h = group_norm(self.groups_out or self.groups, self.eps, name="norm2", **dt)(h)
        if scale_shift is not None:
            h = h * (1 + scale_shift[0]) + scale_shift[1]
        h = nn.silu(h)
        h = conv2d(self.out_channels, 3, 1, 1, name="conv2", **dt)(h)
        shortcut = self.use_in_shortcut if self.use_in_shortcut is not None else x.shape[-1] != self.out_channels
        if shortcut:
            x = conv2d(self.out_channels, 1, 1, 0, use_bias=self.conv_shortcut_bias, name="conv_shortcut", **dt)(x)
        out = x + h
        return out / self.output_scale_factor if self.output_scale_factor != 1.0 else out


class Downsample2D(_Typed):
    """Stride-2 3x3 conv. ``padding=1`` pads all sides (UNet); ``padding=0`` pads only bottom/right by one first
    (the VAE encoder), exactly as diffusers does. Without a conv it is a 2x2 average pool."""

    out_channels: int
    padding: int = 1
    use_conv: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.use_conv:
            return nn.avg_pool(x, (2, 2), (2, 2))
        pad = ((0, 1), (0, 1)) if self.padding == 0 else ((self.padding,) * 2,) * 2
        return conv2d(self.out_channels, 3, 2, pad, name="conv", **self._dt())(x)


class Upsample2D(_Typed):
    """Nearest-neighbour x2 (or to ``output_size``, when the skip connection is odd-sized) followed by a 3x3 conv."""

    out_channels: int
    use_conv: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, output_size: tuple[int, int] | None = None) -> jax.Array:
        size = output_size or (2 * x.shape[1], 2 * x.shape[2])
        x = nearest_resize(x, tuple(size))
        if self.use_conv:
            x = conv2d(self.out_channels, 3, 1, 1, name="conv", **self._dt())(x)
        return x


# ------------------------------------------------------------------------------------------ attention


class Attention(_Typed):
    """diffusers ``Attention`` (AttnProcessor2_0): optional GroupNorm on the queries' input, q/k/v projections,
    softmax(q k^T / sqrt(head_dim)) v, ``to_out.0``, optional residual and output rescale.

    ``context=None`` is self-attention. ``kv_dim`` (the checkpoint's ``cross_attention_dim``) is checked against the
    context width so a mismatch is a clear error rather than a silently re-shaped kernel. Accepts ``(B, L, C)`` or
    ``(B, H, W, C)`` (spatial self-attention, as in the VAE mid-block).
    """

    heads: int
    dim_head: int
    out_dim: int | None = None
    kv_dim: int | None = None
    bias: bool = False
    out_bias: bool = True
    norm_num_groups: int | None = None
    eps: float = 1e-5
    residual_connection: bool = False
    rescale_output_factor: float = 1.0
    upcast_attention: bool = False
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        dt = self._dt()
        spatial_shape = x.shape if x.ndim == 4 else None
        if spatial_shape is not None:
            b, h, w, c = spatial_shape
            x = x.reshape(b, h * w, c)
        residual = x
        if self.norm_num_groups is not None:
            x = group_norm(self.norm_num_groups, self.eps, name="group_norm", **dt)(x)
        kv_in = x if context is None else context.astype(as_dtype(self.dtype))
        if self.kv_dim is not None and kv_in.shape[-1] != self.kv_dim:
            what = "hidden states (self-attention)" if context is None else "encoder_hidden_states"
            raise ValueError(
                f"{self.name}: keys/values come from {what} of width {kv_in.shape[-1]}, but the layer was built "
                f"for cross_attention_dim={self.kv_dim}"
            )
        inner = self.heads * self.dim_head
        q = dense(inner, use_bias=self.bias, name="to_q", **dt)(x)
        k = dense(inner, use_bias=self.bias, name="to_k", **dt)(kv_in)
        v = dense(inner, use_bias=self.bias, name="to_v", **dt)(kv_in)
        batch = q.shape[0]
        q = q.reshape(batch, -1, self.heads, self.dim_head)
        k = k.reshape(batch, -1, self.heads, self.dim_head)
        v = v.reshape(batch, -1, self.heads, self.dim_head)
        out_dtype = q.dtype
        if self.upcast_attention and q.dtype != jnp.float32:
            q, k, v = (t.astype(jnp.float32) for t in (q, k, v))
        out = jax.nn.dot_product_attention(q, k, v, scale=self.dim_head**-0.5, implementation=self.attention_impl)
        out = out.astype(out_dtype).reshape(batch, -1, inner)
        out = dense(self.out_dim or residual.shape[-1], use_bias=self.out_bias, name="to_out_0", **dt)(out)
        if self.residual_connection:
            out = out + residual
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        if spatial_shape is not None:
            out = out.reshape(spatial_shape[:3] + (out.shape[-1],))
        return out


class GEGLU(_Typed):
    """``proj`` to twice the width, then ``a * gelu(b)`` (exact erf GELU, like torch's default)."""

    dim_out: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, gate = jnp.split(dense(2 * self.dim_out, name="proj", **self._dt())(x), 2, axis=-1)
        return h * nn.gelu(gate, approximate=False)


class _GELUProj(_Typed):
    """diffusers ``GELU`` activation module: ``proj`` then GELU (exact or tanh-approximate)."""

    dim_out: int
    approximate: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.gelu(dense(self.dim_out, name="proj", **self._dt())(x), approximate=self.approximate)


class FeedForward(_Typed):
    """``net.0`` (GEGLU or GELU projection to ``mult * dim``) then ``net.2`` back to ``dim``."""

    dim: int
    mult: int = 4
    activation_fn: str = "geglu"
    inner_dim: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inner = self.inner_dim or self.dim * self.mult
        dt = self._dt()
        if self.activation_fn == "geglu":
            h = GEGLU(inner, name="net_0", **dt)(x)
        elif self.activation_fn in ("gelu", "gelu-approximate"):
            h = _GELUProj(inner, approximate=self.activation_fn == "gelu-approximate", name="net_0", **dt)(x)
        else:
            raise ValueError(f"activation_fn {self.activation_fn!r} is not supported (geglu, gelu, gelu-approximate)")
        return dense(self.dim, name="net_2", **dt)(h)


class BasicTransformerBlock(_Typed):
    """LayerNorm -> self-attention (``attn1``), LayerNorm -> cross-attention (``attn2``), LayerNorm -> feed-forward,
    each residual. ``attn2`` exists when ``cross_attention_dim`` is set or ``double_self_attention``; with no context
    passed it attends to the hidden states (AudioLDM runs its UNet that way). ``only_cross_attention`` makes ``attn1``
    attend to the context too."""

    dim: int
    heads: int
    dim_head: int
    cross_attention_dim: int | None = None
    only_cross_attention: bool = False
    double_self_attention: bool = False
    upcast_attention: bool = False
    attention_bias: bool = False
    norm_eps: float = 1e-5
    activation_fn: str = "geglu"
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        dt = self._dt()
        attn = dict(
            heads=self.heads,
            dim_head=self.dim_head,
            bias=self.attention_bias,
            upcast_attention=self.upcast_attention,
            attention_impl=self.attention_impl,
            **dt,
        )
        h = layer_norm(self.norm_eps, name="norm1", **dt)(x)
        if self.only_cross_attention:
            x = x + Attention(kv_dim=self.cross_attention_dim, name="attn1", **attn)(h, context)
        else:
            x = x + Attention(kv_dim=self.dim, name="attn1", **attn)(h)
        if self.cross_attention_dim is not None or self.double_self_attention:
            h = layer_norm(self.norm_eps, name="norm2", **dt)(x)
            if self.double_self_attention:
                x = x + Attention(kv_dim=self.dim, name="attn2", **attn)(h)
            else:
                x = x + Attention(kv_dim=self.cross_attention_dim, name="attn2", **attn)(h, context)
        h = layer_norm(self.norm_eps, name="norm3", **dt)(x)
        return x + FeedForward(self.dim, activation_fn=self.activation_fn, name="ff", **dt)(h)


class Transformer2DModel(_Typed):
    """Spatial transformer on NHWC maps: GroupNorm (eps 1e-6), ``proj_in`` (1x1 conv, or linear with
    ``use_linear_projection``), ``num_layers`` BasicTransformerBlocks over the H*W tokens, ``proj_out``, residual."""

    heads: int
    dim_head: int
    num_layers: int = 1
    norm_num_groups: int = 32
    cross_attention_dim: int | None = None
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    double_self_attention: bool = False
    upcast_attention: bool = False
    norm_eps: float = 1e-5
    activation_fn: str = "geglu"
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        dt = self._dt()
        b, hgt, wid, channels = x.shape
        inner = self.heads * self.dim_head
        residual = x
        h = group_norm(self.norm_num_groups, 1e-6, name="norm", **dt)(x)
        if self.use_linear_projection:
            h = dense(inner, name="proj_in", **dt)(h.reshape(b, hgt * wid, channels))
        else:
            h = conv2d(inner, 1, 1, 0, name="proj_in", **dt)(h).reshape(b, hgt * wid, inner)
        for i in range(self.num_layers):
            h = BasicTransformerBlock(
                dim=inner,
                heads=self.heads,
                dim_head=self.dim_head,
                cross_attention_dim=self.cross_attention_dim,
                only_cross_attention=self.only_cross_attention,
                double_self_attention=self.double_self_attention,
                upcast_attention=self.upcast_attention,
                norm_eps=self.norm_eps,
                activation_fn=self.activation_fn,
                attention_impl=self.attention_impl,
                name=f"transformer_blocks_{i}",
                **dt,
            )(h, context)
        if self.use_linear_projection:
            h = dense(channels, name="proj_out", **dt)(h).reshape(b, hgt, wid, channels)
        else:
            h = conv2d(channels, 1, 1, 0, name="proj_out", **dt)(h.reshape(b, hgt, wid, inner))
        return h + residual


class UNetMidBlock2D(_Typed):
    """ResNet, then ``num_layers`` x (single-head-per-``attention_head_dim`` spatial self-attention with GroupNorm,
    ResNet). The VAE's mid-block (``attention_head_dim = channels``: one head) and ``UNetMidBlock2D`` of UNets."""

    channels: int
    num_layers: int = 1
    groups: int = 32
    eps: float = 1e-6
    add_attention: bool = True
    attention_head_dim: int | None = None
    output_scale_factor: float = 1.0
    time_embedding_norm: str = "default"
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        dt = self._dt()
        res = dict(
            out_channels=self.channels,
            groups=self.groups,
            eps=self.eps,
            output_scale_factor=self.output_scale_factor,
            time_embedding_norm=self.time_embedding_norm,
            **dt,
        )
        x = ResnetBlock2D(name="resnets_0", **res)(x, temb)
        head_dim = self.attention_head_dim or self.channels
        for i in range(self.num_layers):
            if self.add_attention:
                x = Attention(
                    heads=self.channels // head_dim,
                    dim_head=head_dim,
                    bias=True,
                    norm_num_groups=self.groups,
                    eps=self.eps,
                    residual_connection=True,
                    rescale_output_factor=self.output_scale_factor,
                    attention_impl=self.attention_impl,
                    name=f"attentions_{i}",
                    **dt,
                )(x)
            x = ResnetBlock2D(name=f"resnets_{i + 1}", **res)(x, temb)
        return x
