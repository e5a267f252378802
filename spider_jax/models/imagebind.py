"""ImageBind encoders (vision incl. video, audio, optionally text) in Flax Linen, matching the public PyTorch model.

Spider's E^X (the input-side embedding of a medium, 1024-d for ``imagebind_huge``) comes from these trunks; the
training step reads it from a precomputed store, so this module runs once per medium, frozen.

Architecture (facebookresearch/ImageBind ``imagebind_model.py``), per modality: preprocessor (patch embedding,
one cls token, learned position table) -> ``SimpleTransformer`` (pre-LN blocks, ``torch.nn.MultiheadAttention``
semantics: fused in-projection, optional learned ``bias_k``/``bias_v`` appended to keys/values, exact GELU MLP,
optional layer scale) -> head (LayerNorm eps 1e-6, token 0 — the EOS token for text — bias-free Linear to
``out_embed_dim``) -> postprocessor (L2 normalise; audio then multiplies by a fixed logit scale of 20, text by
its learned one clipped at 100; vision only normalises). Inputs with a clip axis are embedded clip by clip and
the *postprocessed* embeddings are averaged (not renormalised), as ``ImageBindModel.forward`` does.

Public input layouts of :func:`embed` (the layouts ImageBind's own ``data.py`` produces, channels first, float32
already normalised/mel-transformed; the rule "ndim >= 5 means a clip axis in position 1" is ImageBind's):

* ``"vision"``: image ``(B, 3, H, W)``; video ``(B, S, 3, T, H, W)`` = S clips of T = ``video_frames`` (2) frames,
  averaged over S; ``(B, S, 3, H, W)`` = S images averaged. A single image is repeated to 2 frames.
* ``"audio"``: ``(B, 1, num_mel_bins, target_len)`` one clip (128 × 204 for huge), or ``(B, S, 1, mel, time)``.
* ``"text"``: int token ids ``(B, context_length)`` (77, CLIP BPE; EOS = largest id) when ``config.text`` is set.

Output: ``(B, out_embed_dim)`` float32. Inside Flax everything is channels-last: :class:`ImageBindModel` takes
one item per row, vision ``(N, H, W, 3)`` or ``(N, T, H, W, 3)``, audio ``(N, mel, time)`` or ``(N, mel, time, 1)``,
text ``(N, L)``; :func:`embed` does the transposes and the clip reduction.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from spider_jax.models.llama import as_dtype
from spider_jax.models.text_encoders import LayerNorm, l2_normalize

MODALITIES = ("vision", "audio", "text")

# --------------------------------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class TrunkConfig:
    """The parts every modality shares: transformer width/depth and the postprocessor's logit scale."""

    embed_dim: int = 768
    num_blocks: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    pre_transformer_ln: bool = False  # LayerNorm(eps 1e-6) before the blocks (vision only in ImageBind)
    add_bias_kv: bool = False  # learned key/value appended to every sequence (audio, depth, thermal, imu)
    layer_scale_type: str | None = None  # None | "per_channel" | "scalar" (unused by the released model)
    layer_scale_init_value: float = 1e-4
    logit_scale_init: float | None = None  # None: the postprocessor only normalises
    logit_scale_learnable: bool = False  # learnable: a Parameter in torch, else a buffer (both are in the file)
    max_logit_scale: float = 100.0

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.layer_scale_type not in (None, "per_channel", "scalar"):
            raise ValueError(f"layer_scale_type {self.layer_scale_type!r}; expected None, 'per_channel' or 'scalar'")

    @property
    def mlp_dim(self) -> int:
        return int(self.mlp_ratio * self.embed_dim)


@dataclasses.dataclass(frozen=True)
class VisionConfig(TrunkConfig):
    """RGB images and videos: a Conv3d patch embedding over (time, height, width) — images are 2-frame videos."""

    embed_dim: int = 1280
    num_blocks: int = 32
    num_heads: int = 16
    pre_transformer_ln: bool = True
    image_size: int = 224
    video_frames: int = 2  # frames per clip; a still image is repeated to this many
    kernel_size: tuple[int, int, int] = (2, 14, 14)  # stride = kernel (non-overlapping patches)
    in_channels: int = 3

    @property
    def grid(self) -> tuple[int, int, int]:
        kt, kh, kw = self.kernel_size
        return self.video_frames // kt, self.image_size // kh, self.image_size // kw

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid)


@dataclasses.dataclass(frozen=True)
class AudioConfig(TrunkConfig):
    """Log-mel spectrograms as 1-channel images: overlapping Conv2d patches (kernel 16, stride 10) + LayerNorm."""

    embed_dim: int = 768
    num_blocks: int = 12
    num_heads: int = 12
    add_bias_kv: bool = True
    logit_scale_init: float | None = 20.0
    num_mel_bins: int = 128
    target_len: int = 204
    kernel_size: int = 16
    stride: int = 10

    @property
    def grid(self) -> tuple[int, int]:
        k, s = self.kernel_size, self.stride
        return (self.num_mel_bins - k) // s + 1, (self.target_len - k) // s + 1

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid)


@dataclasses.dataclass(frozen=True)
class TextConfig(TrunkConfig):
    """OpenCLIP-style causal text tower pooled at the EOS token (the largest id of each row)."""

    embed_dim: int = 1024
    num_blocks: int = 24
    num_heads: int = 16
    logit_scale_init: float | None = 1 / 0.07
    logit_scale_learnable: bool = True
    vocab_size: int = 49408
    context_length: int = 77


@dataclasses.dataclass(frozen=True)
class ImageBindConfig:
    """Which modality towers exist (None = absent) and their sizes; defaults are ``imagebind_huge`` without text."""

    vision: VisionConfig | None = VisionConfig()
    audio: AudioConfig | None = AudioConfig()
    text: TextConfig | None = None
    out_embed_dim: int = 1024
    # Execution choices (not part of the checkpoint format).
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if getattr(self, m) is not None)

    def modality(self, name: str) -> TrunkConfig:
        cfg = getattr(self, name, None) if name in MODALITIES else None
        if cfg is None:
            raise ValueError(f"modality {name!r} is not in this ImageBind config (has {self.modalities})")
        return cfg

    def replace(self, **kwargs: Any) -> ImageBindConfig:
        return dataclasses.replace(self, **kwargs)


def imagebind_huge(text: bool = False, **overrides: Any) -> ImageBindConfig:
    """The released ``imagebind_huge`` (vision ViT-H 1280×32, audio 768×12, text 1024×24 when ``text``)."""
    return ImageBindConfig(vision=VisionConfig(), audio=AudioConfig(), text=TextConfig() if text else None, **overrides)


def imagebind_tiny(text: bool = True, **overrides: Any) -> ImageBindConfig:
    """A test-sized model: width 32, 2 blocks, 4 heads, out 16; images 28 px (2×2 patches), audio 16 mel × 24."""
    trunk = dict(embed_dim=32, num_blocks=2, num_heads=4)
    return ImageBindConfig(
        vision=VisionConfig(**trunk, image_size=28, kernel_size=(2, 14, 14)),
        audio=AudioConfig(**trunk, num_mel_bins=16, target_len=24, kernel_size=8, stride=4),
        text=TextConfig(**trunk, vocab_size=99, context_length=16) if text else None,
        out_embed_dim=16,
        **overrides,
    )


# --------------------------------------------------------------------------------------------------- modules


def _dense(features: int, axes: tuple[str | None, str | None], dtype, param_dtype, name: str, bias: bool = True):
    return nn.Dense(
        features,
        use_bias=bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
        name=name,
    )


def _param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str | None, ...], init=None):
    init = init or nn.initializers.normal(0.02)
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, as_dtype(module.param_dtype))


def _cls_and_positions(module: nn.Module, patches: jax.Array, num_patches: int, modality: str) -> jax.Array:
    """Prepends the cls token and adds the learned positions (ImageBind's ``RGBDTPreprocessor``)."""
    if patches.shape[1] != num_patches:
        raise ValueError(
            f"{modality}: input gives {patches.shape[1]} patches, the position table has {num_patches} "
            "(ImageBind interpolates other sizes; we take only the configured input size)"
        )
    width, dtype = patches.shape[-1], module.dtype
    cls = _param(module, "cls_token", (1, width), (None, "embed"))
    pos = _param(module, "pos_embed", (1 + num_patches, width), ("positions", "embed"))
    cls = jnp.broadcast_to(cls.astype(dtype)[None], (patches.shape[0], 1, width))
    return jnp.concatenate([cls, patches.astype(dtype)], axis=1) + pos.astype(dtype)[None]


class VisionPreprocessor(nn.Module):
    """Image ``(N, H, W, C)`` or clip ``(N, T, H, W, C)`` -> tokens ``(N, 1 + patches, D)``."""

    config: VisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        if x.ndim == 4:
            x = x[:, None]
        if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"vision input {x.shape}: expected (N, H, W, {cfg.in_channels}) or (N, T, H, W, C)")
        if x.shape[1] == 1:  # PadIm2Video(pad_type="repeat"): a still image becomes a constant clip
            x = jnp.repeat(x, cfg.video_frames, axis=1)
        conv = nn.Conv(
            cfg.embed_dim,
            kernel_size=cfg.kernel_size,
            strides=cfg.kernel_size,
            padding="VALID",
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("conv_kernel",) * 3 + ("channels", "embed")
            ),
            name="patch_embed",
        )
        patches = conv(x.astype(self.dtype))
        patches = patches.reshape(patches.shape[0], -1, cfg.embed_dim)  # (t, h, w) order, as torch's flatten(2)
        return _cls_and_positions(self, patches, cfg.num_patches, "vision")


class AudioPreprocessor(nn.Module):
    """Mel spectrogram ``(N, mel, time[, 1])`` -> tokens ``(N, 1 + patches, D)``."""

    config: AudioConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] != 1:
            raise ValueError(f"audio input {x.shape}: expected (N, mel, time) or (N, mel, time, 1)")
        k, s = cfg.kernel_size, cfg.stride
        conv = nn.Conv(
            cfg.embed_dim,
            kernel_size=(k, k),
            strides=(s, s),
            padding="VALID",
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("conv_kernel",) * 2 + ("channels", "embed")
            ),
            name="patch_embed",
        )
        patches = conv(x.astype(self.dtype))
        patches = patches.reshape(patches.shape[0], -1, cfg.embed_dim)
        patches = LayerNorm(1e-5, self.dtype, self.param_dtype, name="patch_norm")(patches)  # torch default eps
        return _cls_and_positions(self, patches, cfg.num_patches, "audio")


class TextPreprocessor(nn.Module):
    """Token ids ``(N, L)`` -> token + position embeddings ``(N, L, D)`` (no cls token; the mask is causal)."""

    config: TextConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        cfg = self.config
        if ids.ndim != 2 or ids.shape[1] != cfg.context_length:
            raise ValueError(f"text input {ids.shape}: expected (N, {cfg.context_length}) token ids")
        table = _param(self, "token_embedding", (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed"))
        pos = _param(self, "pos_embed", (cfg.context_length, cfg.embed_dim), ("positions", "embed"))
        return jnp.take(table, ids, axis=0).astype(self.dtype) + pos.astype(self.dtype)[None]


class MultiheadSelfAttention(nn.Module):
    """``torch.nn.MultiheadAttention(x, x, x)``: fused q/k/v in-projection, optional ``bias_k``/``bias_v`` rows
    appended to keys and values (always attendable), scaled dot-product, out-projection."""

    num_heads: int
    add_bias_kv: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        batch, length, width = x.shape
        head_dim = width // self.num_heads
        qkv = _dense(3 * width, ("embed", "heads"), self.dtype, self.param_dtype, "in_proj")(x)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        if self.add_bias_kv:
            extra = []
            for name in ("bias_k", "bias_v"):
                b = _param(self, name, (width,), ("heads",), nn.initializers.xavier_normal(in_axis=-1, out_axis=-1))
                extra.append(jnp.broadcast_to(b.astype(self.dtype), (batch, 1, width)))
            k = jnp.concatenate([k, extra[0]], axis=1)
            v = jnp.concatenate([v, extra[1]], axis=1)
            if mask is not None:
                mask = jnp.concatenate([mask, jnp.ones(mask.shape[:-1] + (1,), jnp.bool_)], axis=-1)

        def heads(t):
            return t.reshape(batch, t.shape[1], self.num_heads, head_dim)

        out = jax.nn.dot_product_attention(
            heads(q), heads(k), heads(v), mask=None if mask is None else mask[None, None], scale=head_dim**-0.5
        )
        out = out.reshape(batch, length, width)
        return _dense(width, ("heads", "embed"), self.dtype, self.param_dtype, "out_proj")(out)


class Block(nn.Module):
    """ImageBind's ``BlockWithMasking`` at inference (drop path and dropout are identities)."""

    config: TrunkConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _gamma(self, name: str) -> jax.Array | float:
        cfg = self.config
        if cfg.layer_scale_type is None:
            return 1.0
        shape = (cfg.embed_dim,) if cfg.layer_scale_type == "per_channel" else (1,)
        init = nn.initializers.constant(cfg.layer_scale_init_value)
        return _param(self, name, shape, ("norm",), init).astype(self.dtype)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        dt, pdt = self.dtype, self.param_dtype
        h = LayerNorm(1e-6, dt, pdt, name="norm_1")(x)
        h = MultiheadSelfAttention(cfg.num_heads, cfg.add_bias_kv, dt, pdt, name="attn")(h, mask)
        x = x + h * self._gamma("layer_scale_gamma1")
        h = LayerNorm(1e-6, dt, pdt, name="norm_2")(x)
        h = _dense(cfg.mlp_dim, ("embed", "mlp"), dt, pdt, "fc1")(h)
        h = jax.nn.gelu(h, approximate=False)
        h = _dense(cfg.embed_dim, ("mlp", "embed"), dt, pdt, "fc2")(h)
        return x + h * self._gamma("layer_scale_gamma2")


class SimpleTransformer(nn.Module):
    """Optional pre-LayerNorm (``ln_pre``) then ``num_blocks`` pre-LN blocks; ``mask`` (L, L) True = attend."""

    config: TrunkConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        if cfg.pre_transformer_ln:
            tokens = LayerNorm(1e-6, self.dtype, self.param_dtype, name="ln_pre")(tokens)
        for i in range(cfg.num_blocks):
            tokens = Block(cfg, self.dtype, self.param_dtype, name=f"blocks_{i}")(tokens, mask)
        return tokens


class Head(nn.Module):
    """LayerNorm(eps 1e-6) -> the token at ``index`` (0 = cls, or one per row) -> bias-free Linear."""

    out_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, index: jax.Array | None = None) -> jax.Array:
        if index is None:  # SelectElement(0) after the norm; LayerNorm is per token, so selecting first is equal
            tokens = LayerNorm(1e-6, self.dtype, self.param_dtype, name="norm")(tokens[:, 0])
        else:
            tokens = LayerNorm(1e-6, self.dtype, self.param_dtype, name="norm")(tokens[jnp.arange(len(index)), index])
        return _dense(self.out_dim, ("embed", "encoder_embed"), self.dtype, self.param_dtype, "proj", bias=False)(
            tokens
        )


class Postprocessor(nn.Module):
    """L2 normalisation (float32), then ``min(exp(log_logit_scale), max) * x`` when the modality has a scale."""

    config: TrunkConfig
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = l2_normalize(x.astype(jnp.float32))
        if cfg.logit_scale_init is None:
            return x
        init = nn.initializers.constant(math.log(cfg.logit_scale_init))
        log_scale = _param(self, "log_logit_scale", (), (), init).astype(jnp.float32)
        return jnp.minimum(jnp.exp(log_scale), cfg.max_logit_scale) * x


class ModalityEncoder(nn.Module):
    """preprocessor -> trunk -> head -> postprocessor for one modality; one item per row, channels-last."""

    modality: str
    config: TrunkConfig
    out_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dt, pdt = self.config, self.dtype, self.param_dtype
        mask = index = None
        if self.modality == "vision":
            tokens = VisionPreprocessor(cfg, dt, pdt, name="preprocessor")(x)
        elif self.modality == "audio":
            tokens = AudioPreprocessor(cfg, dt, pdt, name="preprocessor")(x)
        elif self.modality == "text":
            tokens = TextPreprocessor(cfg, dt, pdt, name="preprocessor")(x)
            mask = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), jnp.bool_))
            index = jnp.argmax(x, axis=-1)  # EOS = the largest id (SelectEOSAndProject)
        else:
            raise ValueError(f"unknown modality {self.modality!r}; expected one of {MODALITIES}")
        tokens = SimpleTransformer(cfg, dt, pdt, name="trunk")(tokens, mask)
        out = Head(self.out_dim, dt, pdt, name="head")(tokens, index)
        return Postprocessor(cfg, pdt, name="postprocessor")(out)


class ImageBindModel(nn.Module):
    """``{modality: one item per row, channels-last}`` -> ``{modality: (N, out_embed_dim) float32}``.

    Parameters live under ``params[modality]/{preprocessor,trunk,head,postprocessor}``; only the modalities the
    call receives are initialised, so :func:`dummy_inputs` passes all of them.
    """

    config: ImageBindConfig

    @nn.compact
    def __call__(self, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        cfg = self.config
        dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        return {
            m: ModalityEncoder(m, cfg.modality(m), cfg.out_embed_dim, dt, pdt, name=m)(x) for m, x in inputs.items()
        }


def dummy_inputs(config: ImageBindConfig, batch: int = 1) -> dict[str, jax.Array]:
    """Zero inputs of the configured sizes (channels-last), one entry per modality: for ``init``/``eval_shape``."""
    out: dict[str, jax.Array] = {}
    if config.vision is not None:
        v = config.vision
        out["vision"] = jnp.zeros((batch, v.image_size, v.image_size, v.in_channels), jnp.float32)
    if config.audio is not None:
        a = config.audio
        out["audio"] = jnp.zeros((batch, a.num_mel_bins, a.target_len, 1), jnp.float32)
    if config.text is not None:
        out["text"] = jnp.zeros((batch, config.text.context_length), jnp.int32)
    return out


def init_params(config: ImageBindConfig, rng: jax.Array | None = None) -> dict[str, Any]:
    """Randomly initialised (boxed, logically partitioned) parameters of every configured modality."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return ImageBindModel(config).init(rng, dummy_inputs(config))["params"]


# ------------------------------------------------------------------------------------------------ public API


def to_channels_last(modality: str, x: jax.Array) -> jax.Array:
    """One item per row, ImageBind's channels-first layout -> ours: (N,C,H,W)->(N,H,W,C), (N,C,T,H,W)->(N,T,H,W,C),
    (N,1,mel,time)->(N,mel,time,1); text is returned as is."""
    if modality == "text":
        return x
    if x.ndim < 4:
        raise ValueError(f"{modality} input {x.shape}: expected a channels-first batch (N, C, ...) per clip")
    return jnp.moveaxis(x, 1, -1)


@functools.partial(jax.jit, static_argnames=("config", "modality"))
def _embed(params: Mapping[str, Any], inputs: jax.Array, config: ImageBindConfig, modality: str) -> jax.Array:
    x = inputs
    clips = modality != "text" and x.ndim >= 5  # ImageBind's reduce_list: (B, S, ...) = S clips per item
    if clips:
        batch, num_clips = x.shape[:2]
        x = x.reshape((batch * num_clips,) + x.shape[2:])
    x = to_channels_last(modality, x)
    out = ImageBindModel(config).apply({"params": params}, {modality: x})[modality]
    if clips:
        out = out.reshape(batch, num_clips, -1).mean(axis=1)  # mean of the postprocessed clip embeddings
    return out


def embed(params: Mapping[str, Any], config: ImageBindConfig, modality: str, inputs: Any) -> jax.Array:
    """ImageBind embedding ``(B, out_embed_dim)`` float32 of a batch in ImageBind's public layout (module docstring):
    ``vision`` (B,3,H,W) or (B,S,3,T,H,W) videos, ``audio`` (B,1,mel,time) or (B,S,1,mel,time), ``text`` (B,L) ids.

    ``params``: the tree :func:`spider_jax.convert.imagebind.load_imagebind` returns (a ``{"params": ...}`` wrapper
    and boxed leaves are accepted). Jitted per (config, modality, shape).
    """
    config.modality(modality)
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    params = nn.meta.unbox(params)
    x = jnp.asarray(inputs, jnp.int32 if modality == "text" else None)
    if modality != "text" and not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return _embed(params, x, config=config, modality=modality)
