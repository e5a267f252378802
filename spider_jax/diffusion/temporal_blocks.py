"""Temporal building blocks of the video UNet (Zeroscope / ModelScope T2V), matching diffusers' modules of the
same name: ``TemporalConvLayer`` (resnet.py) and ``TransformerTemporalModel`` (transformer_temporal.py).

Layout: the video UNet keeps frames folded into the batch, ``(B·F, H, W, C)``, so every spatial block from
``blocks.py`` is reused unchanged; these blocks unfold the frame axis, mix information along it, and fold it back.
``num_frames`` is a Python int (a static shape), passed at call time.

Two details that decide numerical parity with diffusers:

* Their GroupNorms see 5-D ``(B, C, F, H, W)`` tensors, so the statistics are taken over *all frames* of a video,
  not per frame; here the norms run on ``(B, F, …, C)``, which Flax reduces over every non-batch axis the same way.
* diffusers' temporal convolutions are ``Conv3d`` with kernel ``(3, 1, 1)``; here they are 2-D convolutions with
  kernel ``(3, 1)`` over ``(frames, H·W)``, whose HWIO kernel ``(3, 1, I, O)`` is the Conv3d weight
  ``(O, I, 3, 1, 1)`` without its last unit axis (``spider_jax.convert.unet3d`` maps one onto the other).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from spider_jax.diffusion.blocks import (
    BIAS_AXES,
    CONV_AXES,
    BasicTransformerBlock,
    _Typed,
    dense,
    group_norm,
)

Dtype = Any

# diffusers' TemporalConvLayer: conv{i} = Sequential(GroupNorm, SiLU, [Dropout,] Conv3d); index of each part.
TEMPORAL_CONV_PARTS = {1: (0, 2), 2: (0, 3), 3: (0, 3), 4: (0, 3)}


def temporal_conv(
    features: int, *, zero_init: bool = False, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, name: str
) -> nn.Conv:
    """A ``Conv3d(kernel=(3, 1, 1), padding=(1, 0, 0))`` on ``(B, F, H·W, C)``: 3 taps along frames, zero padded."""
    init = nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()
    return nn.Conv(
        features,
        (3, 1),
        strides=(1, 1),
        padding=((1, 1), (0, 0)),
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(init, CONV_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, BIAS_AXES),
        name=name,
    )


def unfold_frames(x: jax.Array, num_frames: int) -> jax.Array:
    """``(B·F, …)`` -> ``(B, F, …)``; frames of one video are consecutive (diffusers' ``repeat_interleave`` order)."""
    if x.shape[0] % num_frames:
        raise ValueError(f"leading axis {x.shape[0]} is not a multiple of num_frames={num_frames}")
    return x.reshape(x.shape[0] // num_frames, num_frames, *x.shape[1:])


class TemporalConvLayer(_Typed):
    """Four (GroupNorm -> SiLU -> temporal conv) stages and a residual. The last conv starts at zero (as in
    diffusers), so a freshly initialised layer is the identity. Dropout is an inference no-op and omitted."""

    channels: int
    norm_num_groups: int = 32
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
        dt = self._dt()
        bf, h, w, c = x.shape
        if c != self.channels:
            raise ValueError(f"{self.name}: input has {c} channels, the layer was built for {self.channels}")
        y = unfold_frames(x, num_frames).reshape(bf // num_frames, num_frames, h * w, c)
        identity = y
        for stage, (norm_idx, conv_idx) in TEMPORAL_CONV_PARTS.items():
            y = group_norm(self.norm_num_groups, self.eps, name=f"conv{stage}_{norm_idx}", **dt)(y)
            y = nn.silu(y)
            y = temporal_conv(c, zero_init=stage == 4, name=f"conv{stage}_{conv_idx}", **dt)(y)
        return (identity + y).reshape(bf, h, w, c)


class TransformerTemporalModel(_Typed):
    """Attention along the frame axis at every pixel: GroupNorm (eps 1e-6, over all frames), linear ``proj_in``,
    BasicTransformerBlocks over sequences of F tokens (``double_self_attention``: ``attn2`` is a second
    self-attention, as diffusers builds it; no text conditioning), linear ``proj_out``, residual."""

    heads: int
    dim_head: int
    num_layers: int = 1
    norm_num_groups: int = 32
    activation_fn: str = "geglu"
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
        dt = self._dt()
        bf, h, w, c = x.shape
        b = bf // num_frames
        inner = self.heads * self.dim_head
        y = group_norm(self.norm_num_groups, 1e-6, name="norm", **dt)(unfold_frames(x, num_frames))
        y = y.transpose(0, 2, 3, 1, 4).reshape(b * h * w, num_frames, c)  # one sequence of frames per pixel
        y = dense(inner, name="proj_in", **dt)(y)
        for i in range(self.num_layers):
            y = BasicTransformerBlock(
                dim=inner,
                heads=self.heads,
                dim_head=self.dim_head,
                double_self_attention=True,
                activation_fn=self.activation_fn,
                attention_impl=self.attention_impl,
                name=f"transformer_blocks_{i}",
                **dt,
            )(y)
        y = dense(c, name="proj_out", **dt)(y)
        y = y.reshape(b, h, w, num_frames, c).transpose(0, 3, 1, 2, 4).reshape(bf, h, w, c)
        return y + x
