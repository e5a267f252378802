"""HiFi-GAN vocoder (AudioLDM's mel spectrogram -> waveform step) in Flax Linen, matching transformers'
``SpeechT5HifiGan`` numerically.

Layout: the input is ``(B, frames, mel_bins)`` — the same as the PyTorch model's input, which is already
channels-last — and the output a ``(B, samples)`` waveform in [-1, 1] (tanh). Internally activations stay
``(B, length, channels)`` (what XLA's 1D convolutions prefer); the PyTorch ``(out, in, k)`` / ``(in, out, k)``
kernel layouts only appear in ``spider_jax.convert.vocoder``.

Details that the port must copy exactly (read from ``modeling_speecht5.py``):

* ``normalize_before``: ``(mel - mean) / scale`` with the checkpoint's per-bin buffers (stored here as frozen
  parameters ``mean`` / ``scale`` so they travel with the weights);
* ``conv_pre`` (k=7, pad 3) -> per stage: leaky ReLU (config slope), ``ConvTranspose1d`` (stride r, kernel k,
  padding ``(k - r) // 2``: output length ``(L - 1) * r - 2p + k``, which is ``r * L + 1`` when ``k - r`` is odd),
  then the mean of the multi-receptive-field residual blocks;
* the last activation before ``conv_post`` is ``F.leaky_relu`` with torch's *default* slope 0.01, not the config's.

Submodule names follow the state dict with ``.N`` list indices turned into ``_N`` (``resblocks.2.convs1.0`` ->
``resblocks_2/convs1_0``); every parameter carries logical axis names (``conv_kernel``, ``channels``,
``channels_out``), all replicated by ``sharding.LOGICAL_RULES`` — the batch is what gets sharded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from spider_jax.diffusion.blocks import as_dtype
from spider_jax.diffusion.config_utils import config_from_hf, config_to_hf

CONV1D_AXES = ("conv_kernel", "channels", "channels_out")
BIAS_AXES = ("channels_out",)
MEL_AXES = ("channels",)
TORCH_DEFAULT_LEAKY_SLOPE = 0.01  # F.leaky_relu() without a slope, used once before conv_post

_EXECUTION_FIELDS = ("dtype", "param_dtype")


def _tuple(value: Any) -> tuple:
    return tuple(_tuple(v) for v in value) if isinstance(value, list | tuple) else value


@dataclasses.dataclass(frozen=True)
class HifiGanConfig:
    """``SpeechT5HifiGanConfig`` fields, plus execution dtypes. Defaults are transformers' defaults."""

    model_in_dim: int = 80
    sampling_rate: int = 16000
    upsample_initial_channel: int = 512
    upsample_rates: tuple[int, ...] = (4, 4, 4, 4)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 8, 8)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    leaky_relu_slope: float = 0.1
    normalize_before: bool = True
    initializer_range: float = 0.01
    # Execution choices (not part of the checkpoint format).
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        for name in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes", "resblock_dilation_sizes"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError(
                f"upsample_rates {self.upsample_rates} and upsample_kernel_sizes {self.upsample_kernel_sizes} "
                "must have the same length"
            )
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError(
                f"resblock_kernel_sizes {self.resblock_kernel_sizes} and resblock_dilation_sizes "
                f"{self.resblock_dilation_sizes} must have the same length"
            )
        for k, r in zip(self.upsample_kernel_sizes, self.upsample_rates, strict=True):
            if k < r:
                raise ValueError(f"upsample kernel {k} shorter than its stride {r} is not supported")

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame (the product of the upsampling strides; +1 sample per odd ``k - r``
        stage at the edges, see :meth:`num_samples`)."""
        return math.prod(self.upsample_rates)

    def num_samples(self, frames: int) -> int:
        """Exact waveform length for ``frames`` mel frames (ConvTranspose1d's ``(L - 1) r - 2p + k`` per stage)."""
        n = frames
        for r, k in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True):
            n = (n - 1) * r - 2 * ((k - r) // 2) + k
        return n

    def replace(self, **kwargs: Any) -> HifiGanConfig:
        return dataclasses.replace(self, **kwargs)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> HifiGanConfig:
        """From a transformers ``config.json`` dict (unknown keys such as ``architectures`` are ignored)."""
        model_type = hf.get("model_type", "speecht5_hifigan")
        if model_type != "speecht5_hifigan":
            raise ValueError(f"vocoder config has model_type {model_type!r}, expected 'speecht5_hifigan'")
        return config_from_hf(cls, hf, overrides, exec_fields=_EXECUTION_FIELDS)

    def to_hf_config(self) -> dict[str, Any]:
        """The ``config.json`` dict ``SpeechT5HifiGan.from_pretrained`` reads."""
        head = {"architectures": ["SpeechT5HifiGan"], "model_type": "speecht5_hifigan"}
        return config_to_hf(self, head, exec_fields=_EXECUTION_FIELDS)


# ------------------------------------------------------------------------------------------ layers


def conv1d(features: int, kernel_size: int, dilation: int = 1, *, dtype: Any, param_dtype: Any, name: str) -> nn.Conv:
    """``torch.nn.Conv1d`` with 'same' padding ``(k·d − d) // 2`` on ``(B, L, C)``."""
    pad = (kernel_size * dilation - dilation) // 2
    return nn.Conv(
        features,
        (kernel_size,),
        kernel_dilation=(dilation,),
        padding=((pad, pad),),
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV1D_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, BIAS_AXES),
        name=name,
    )


class ConvTranspose1d(nn.Module):
    """``torch.nn.ConvTranspose1d(stride=r, padding=p)`` on ``(B, L, C)``, output ``(L - 1) r - 2p + k``.

    Why written out instead of ``nn.ConvTranspose``: torch's padding *removes* ``p`` samples from each end of the
    full transposed convolution, which is a stride-dilated input convolved with the flipped kernel under padding
    ``k - 1 - p``; spelling that out keeps the semantics exact. The kernel is stored ``(k, in, out)`` — torch's
    ``(in, out, k)`` moved, not flipped — so conversion is a pure transpose.
    """

    features: int
    kernel_size: int
    stride: int
    padding: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, p = self.kernel_size, self.padding
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV1D_AXES),
            (k, x.shape[-1], self.features),
            self.param_dtype,
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, BIAS_AXES), (self.features,), self.param_dtype
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jax.lax.conv_general_dilated(
            x,
            kernel[::-1],
            window_strides=(1,),
            padding=((k - 1 - p, k - 1 - p),),
            lhs_dilation=(self.stride,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + bias


class HifiGanResidualBlock(nn.Module):
    """One multi-receptive-field branch: per dilation, leaky ReLU -> dilated conv -> leaky ReLU -> conv, + skip."""

    channels: int
    kernel_size: int
    dilations: tuple[int, ...]
    slope: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dt = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        for i, d in enumerate(self.dilations):
            h = nn.leaky_relu(x, self.slope)
            h = conv1d(self.channels, self.kernel_size, d, name=f"convs1_{i}", **dt)(h)
            h = nn.leaky_relu(h, self.slope)
            h = conv1d(self.channels, self.kernel_size, 1, name=f"convs2_{i}", **dt)(h)
            x = x + h
        return x


class HifiGan(nn.Module):
    """``SpeechT5HifiGan``: log-mel ``(B, frames, model_in_dim)`` (or unbatched ``(frames, model_in_dim)``) ->
    waveform ``(B, samples)`` float32 (or ``(samples,)``)."""

    config: HifiGanConfig

    @nn.compact
    def __call__(self, spectrogram: jax.Array) -> jax.Array:
        cfg = self.config
        dt = {"dtype": as_dtype(cfg.dtype), "param_dtype": as_dtype(cfg.param_dtype)}
        if spectrogram.ndim not in (2, 3) or spectrogram.shape[-1] != cfg.model_in_dim:
            raise ValueError(
                f"spectrogram must be (batch, frames, {cfg.model_in_dim}) or (frames, {cfg.model_in_dim}), "
                f"got shape {spectrogram.shape}"
            )
        batched = spectrogram.ndim == 3
        x = spectrogram if batched else spectrogram[None]
        mean = self.param("mean", nn.with_logical_partitioning(nn.initializers.zeros, MEL_AXES), (cfg.model_in_dim,))
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, MEL_AXES), (cfg.model_in_dim,))
        if cfg.normalize_before:
            x = (x.astype(jnp.float32) - mean.astype(jnp.float32)) / scale.astype(jnp.float32)
        x = x.astype(dt["dtype"])

        x = conv1d(cfg.upsample_initial_channel, 7, name="conv_pre", **dt)(x)
        n_kernels = len(cfg.resblock_kernel_sizes)
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)):
            channels = cfg.upsample_initial_channel // 2 ** (i + 1)
            x = nn.leaky_relu(x, cfg.leaky_relu_slope)
            x = ConvTranspose1d(channels, kernel, rate, (kernel - rate) // 2, name=f"upsampler_{i}", **dt)(x)
            branches = [
                HifiGanResidualBlock(
                    channels, k, tuple(d), cfg.leaky_relu_slope, name=f"resblocks_{i * n_kernels + j}", **dt
                )(x)
                for j, (k, d) in enumerate(zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True))
            ]
            x = sum(branches[1:], branches[0]) / n_kernels
        x = nn.leaky_relu(x, TORCH_DEFAULT_LEAKY_SLOPE)
        x = conv1d(1, 7, name="conv_post", **dt)(x)
        waveform = jnp.tanh(x[..., 0].astype(jnp.float32))
        return waveform if batched else waveform[0]


def init_params(config: HifiGanConfig, rng: jax.Array) -> Any:
    """Random parameters (boxed with logical axis names; ``nn.unbox`` them for ``apply``)."""
    return HifiGan(config).init(rng, jnp.zeros((1, 4, config.model_in_dim), jnp.float32))["params"]


def abstract_params(config: HifiGanConfig) -> Any:
    """Shapes/dtypes without allocating (sharding and the converter's name/shape checks)."""
    return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))


def vocode(config: HifiGanConfig, params: Any, spectrogram: jax.Array | Sequence) -> jax.Array:
    """Convenience (not jitted): mel ``(B, frames, bins)`` -> waveform ``(B, samples)``."""
    return HifiGan(config).apply({"params": params}, jnp.asarray(spectrogram))
