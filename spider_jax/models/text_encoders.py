"""Frozen text encoders of the Spider decoders, in Flax Linen, numerically matching ``transformers``.

* :class:`CLIPTextModel` / :class:`CLIPTextModelWithProjection`: SD1.5 (CLIP-L/14, 77×768, quick_gelu) and
  Zeroscope (OpenCLIP-H text, 77×1024, gelu) differ only in :class:`CLIPTextConfig`. Outputs the final-LN hidden
  states (the UNet's cross-attention context, Spider's T_e^X) and the EOS-pooled vector.
* :class:`ClapTextModel`: the text branch of CLAP as ``transformers.ClapTextModelWithProjection`` (RoBERTa encoder,
  tanh pooler on token 0, linear-relu-linear projection). AudioLDM conditions on ``text_embeds`` after an L2
  normalisation (:func:`l2_normalize`).

Parameter names mirror the HF modules (``layers_0/self_attn/q_proj/kernel``) so ``spider_jax.convert.clip`` /
``spider_jax.convert.clap`` are a rename plus a transpose. Every parameter carries logical axis names.
Tokenizer helpers (:func:`load_clip_tokenizer`, :func:`load_clap_tokenizer`, :func:`tokenize`) read local folders.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from spider_jax.models.llama import as_dtype

# ----------------------------------------------------------------------------------------------- shared pieces

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The transformers ``ACT2FN`` entry of that name (only the ones these encoders use)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"Unsupported activation {name!r}; supported: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``torch.nn.functional.normalize(x, dim=-1)``: AudioLDM's normalisation of the CLAP ``text_embeds``."""
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
    return (x32 / jnp.maximum(norm, eps)).astype(x.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with float32 statistics and the two-pass variance torch uses (``nn.LayerNorm`` defaults to a
    one-pass variance, which costs accuracy on the large activations of CLIP's last layers)."""

    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (features,), self.param_dtype
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (features,), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        centered = x32 - mean
        var = jnp.mean(centered * centered, axis=-1, keepdims=True)
        out = centered * jax.lax.rsqrt(var + self.eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return out.astype(self.dtype)


def _dense(features: int, axes: tuple[str | None, str | None], dtype, param_dtype, name: str, bias: bool = True):
    return nn.Dense(
        features,
        use_bias=bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
        name=name,
    )


def _embedding_table(module: nn.Module, name: str, shape: tuple[int, int], axes, param_dtype) -> jax.Array:
    return module.param(name, nn.with_logical_partitioning(nn.initializers.normal(0.02), axes), shape, param_dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections (CLIP and RoBERTa share this shape)."""

    num_heads: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    names: tuple[str, str, str, str] = ("q_proj", "k_proj", "v_proj", "out_proj")
    with_output: bool = True  # CLAP applies its output projection outside (inside the post-LN block)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        batch, length, width = x.shape
        head_dim = width // self.num_heads
        q_name, k_name, v_name, o_name = self.names

        def project(name):
            y = _dense(width, ("embed", "heads"), self.dtype, self.param_dtype, name)(x)
            return y.reshape(batch, length, self.num_heads, head_dim)

        q, k, v = project(q_name), project(k_name), project(v_name)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=head_dim**-0.5)
        out = out.reshape(batch, length, width)
        if not self.with_output:
            return out
        return _dense(width, ("heads", "embed"), self.dtype, self.param_dtype, o_name)(out)


# ------------------------------------------------------------------------------------------------------- CLIP


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """Defaults are SD1.5's text encoder (openai CLIP-L/14); :data:`OPENCLIP_H_TEXT` is Zeroscope's."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = 768
    # 2 selects the legacy pooling rule (argmax of the ids = the EOT token of the original vocabulary).
    eos_token_id: int = 2
    bos_token_id: int | None = 0
    pad_token_id: int | None = 1
    with_projection: bool = False  # build CLIPTextModelWithProjection (text_projection) — see clip_text_model()
    # Execution choices (not part of the checkpoint format).
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        activation(self.hidden_act)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.with_projection and not self.projection_dim:
            raise ValueError("with_projection=True needs projection_dim")

    def replace(self, **kwargs: Any) -> CLIPTextConfig:
        return dataclasses.replace(self, **kwargs)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> CLIPTextConfig:
        """From a transformers ``config.json`` dict: a ``clip_text_model`` one, or a full ``clip`` (CLIPModel)
        one whose ``text_config`` is read. Missing keys take transformers' current defaults, as it would."""
        model_type = hf.get("model_type", "clip_text_model")
        architectures = list(hf.get("architectures") or [])
        if model_type == "clip":
            text = dict(hf.get("text_config") or {})
            projection = hf.get("projection_dim", 512)  # CLIPModel's text_projection uses the top-level width
            with_projection = True
        elif model_type == "clip_text_model":
            text = dict(hf)
            projection = text.get("projection_dim", 512)
            with_projection = any("WithProjection" in a for a in architectures)
        else:
            raise ValueError(f"config.json has model_type={model_type!r}; expected 'clip_text_model' or 'clip'")
        eos = text.get("eos_token_id", 49407)
        kwargs: dict[str, Any] = dict(
            vocab_size=text.get("vocab_size", 49408),
            hidden_size=text.get("hidden_size", 512),
            intermediate_size=text.get("intermediate_size", 2048),
            num_hidden_layers=text.get("num_hidden_layers", 12),
            num_attention_heads=text.get("num_attention_heads", 8),
            max_position_embeddings=text.get("max_position_embeddings", 77),
            hidden_act=text.get("hidden_act", "quick_gelu"),
            layer_norm_eps=text.get("layer_norm_eps", 1e-5),
            projection_dim=projection,
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            bos_token_id=text.get("bos_token_id", 49406),
            pad_token_id=text.get("pad_token_id", 1),
            with_projection=with_projection,
        )
        kwargs.update(overrides)
        return cls(**kwargs)


OPENCLIP_H_TEXT = CLIPTextConfig(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,  # diffusers' SD2/Zeroscope export drops the last of OpenCLIP-H's 24 text layers
    num_attention_heads=16,
    hidden_act="gelu",
    projection_dim=1024,
)


@flax.struct.dataclass
class TextEncoderOutput:
    """``last_hidden_state`` (B, L, D), ``pooler_output`` (B, D), ``text_embeds`` (B, P) or None."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array
    text_embeds: jax.Array | None = None


def clip_pool_indices(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """Index of the token whose state is the pooled output, per row, by transformers' rule: with the legacy
    ``eos_token_id == 2`` the largest id (CLIP's EOT is the last vocabulary entry), otherwise the first EOS
    (padding may also be EOS); a row without EOS pools token 0, as ``argmax`` of all-false gives."""
    ids = input_ids.astype(jnp.int32)
    if eos_token_id == 2:
        return jnp.argmax(ids, axis=-1)
    return jnp.argmax((ids == eos_token_id).astype(jnp.int32), axis=-1)


class CLIPEncoderLayer(nn.Module):
    config: CLIPTextConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
        cfg = self.config
        dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        h = LayerNorm(cfg.layer_norm_eps, dtype, pdtype, name="layer_norm1")(hidden)
        hidden = hidden + SelfAttention(cfg.num_attention_heads, dtype, pdtype, name="self_attn")(h, mask)
        h = LayerNorm(cfg.layer_norm_eps, dtype, pdtype, name="layer_norm2")(hidden)
        h = _dense(cfg.intermediate_size, ("embed", "mlp"), dtype, pdtype, "fc1")(h)
        h = activation(cfg.hidden_act)(h)
        return hidden + _dense(cfg.hidden_size, ("mlp", "embed"), dtype, pdtype, "fc2")(h)


class CLIPTextModel(nn.Module):
    """CLIP text transformer: token + learned position embeddings, causal pre-LN layers, final LayerNorm."""

    config: CLIPTextConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> TextEncoderOutput:
        """``input_ids`` (B, L ≤ max_position_embeddings); ``attention_mask`` (B, L) 1 = token, 0 = padding
        (SD pipelines pass none: padding then attends causally like any token, as in transformers)."""
        cfg = self.config
        dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        batch, length = input_ids.shape
        if length > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings {cfg.max_position_embeddings}")
        d = cfg.hidden_size
        tokens = _embedding_table(self, "token_embedding", (cfg.vocab_size, d), ("vocab", "embed"), pdtype)
        n_pos = cfg.max_position_embeddings
        positions = _embedding_table(self, "position_embedding", (n_pos, d), ("positions", "embed"), pdtype)
        hidden = jnp.take(tokens, input_ids, axis=0).astype(dtype) + positions[:length].astype(dtype)[None]

        mask = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.astype(jnp.bool_)[:, None, None, :]
        for i in range(cfg.num_hidden_layers):
            hidden = CLIPEncoderLayer(cfg, name=f"layers_{i}")(hidden, mask)
        hidden = LayerNorm(cfg.layer_norm_eps, dtype, pdtype, name="final_layer_norm")(hidden)
        pooled = hidden[jnp.arange(batch), clip_pool_indices(input_ids, cfg.eos_token_id)]
        return TextEncoderOutput(last_hidden_state=hidden, pooler_output=pooled)


class CLIPTextModelWithProjection(nn.Module):
    """:class:`CLIPTextModel` plus the bias-free ``text_projection`` of the pooled state (``text_embeds``)."""

    config: CLIPTextConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> TextEncoderOutput:
        cfg = self.config
        if not cfg.projection_dim:
            raise ValueError("CLIPTextModelWithProjection needs config.projection_dim")
        out = CLIPTextModel(cfg, name="text_model")(input_ids, attention_mask)
        proj = _dense(
            cfg.projection_dim, ("embed", "decoder_embed"), as_dtype(cfg.dtype), as_dtype(cfg.param_dtype),
            "text_projection", bias=False,
        )  # fmt: skip
        return out.replace(text_embeds=proj(out.pooler_output))


def clip_text_model(config: CLIPTextConfig) -> nn.Module:
    """The module whose parameter tree ``spider_jax.convert.clip.load_clip_text`` returns for this config."""
    return CLIPTextModelWithProjection(config) if config.with_projection else CLIPTextModel(config)


# ------------------------------------------------------------------------------------------------------- CLAP


@dataclasses.dataclass(frozen=True)
class ClapTextConfig:
    """Defaults are transformers' (= LAION CLAP / AudioLDM: RoBERTa-base text tower, 512-d projection)."""

    vocab_size: int = 50265
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    projection_dim: int = 512
    projection_hidden_act: str = "relu"
    pad_token_id: int = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    # Execution choices (not part of the checkpoint format).
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        activation(self.hidden_act)
        activation(self.projection_hidden_act)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )

    def replace(self, **kwargs: Any) -> ClapTextConfig:
        return dataclasses.replace(self, **kwargs)

    @property
    def max_text_length(self) -> int:
        """Longest input: RoBERTa positions start after ``pad_token_id``."""
        return self.max_position_embeddings - self.pad_token_id - 1

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> ClapTextConfig:
        """From a ``clap_text_model`` config.json dict, or a full ``clap`` (ClapModel) one: there the top-level
        ``projection_dim`` / ``projection_hidden_act`` win over the text config's, as ``ClapConfig`` does."""
        model_type = hf.get("model_type", "clap_text_model")
        if model_type == "clap":
            text = dict(hf.get("text_config") or {})
            text["projection_dim"] = hf.get("projection_dim", 512)
            text["projection_hidden_act"] = hf.get("projection_hidden_act", "relu")
        elif model_type == "clap_text_model":
            text = dict(hf)
        else:
            raise ValueError(f"config.json has model_type={model_type!r}; expected 'clap_text_model' or 'clap'")
        eos = text.get("eos_token_id", 2)
        defaults = cls()
        kwargs: dict[str, Any] = {
            f.name: text.get(f.name, getattr(defaults, f.name))
            for f in dataclasses.fields(cls)
            if f.name not in ("dtype", "param_dtype")
        }
        kwargs["eos_token_id"] = eos[0] if isinstance(eos, list) else eos
        kwargs.update(overrides)
        return cls(**kwargs)


def roberta_position_ids(input_ids: jax.Array, padding_idx: int) -> jax.Array:
    """Positions count non-padding tokens from ``padding_idx + 1``; padding tokens get ``padding_idx``."""
    not_pad = (input_ids != padding_idx).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=1) * not_pad + padding_idx


class ClapTextLayer(nn.Module):
    """Post-LN BERT layer: LN(x + attn(x)), then LN(h + ffn(h))."""

    config: ClapTextConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
        cfg = self.config
        dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        d = cfg.hidden_size
        attn = SelfAttention(
            cfg.num_attention_heads, dtype, pdtype, names=("query", "key", "value", ""), with_output=False,
            name="attention",
        )(hidden, mask)  # fmt: skip
        attn = _dense(d, ("heads", "embed"), dtype, pdtype, "attention_output")(attn)
        hidden = LayerNorm(cfg.layer_norm_eps, dtype, pdtype, name="attention_layer_norm")(hidden + attn)
        h = _dense(cfg.intermediate_size, ("embed", "mlp"), dtype, pdtype, "intermediate")(hidden)
        h = _dense(d, ("mlp", "embed"), dtype, pdtype, "output")(activation(cfg.hidden_act)(h))
        return LayerNorm(cfg.layer_norm_eps, dtype, pdtype, name="output_layer_norm")(hidden + h)


class ClapTextEncoder(nn.Module):
    """RoBERTa encoder with the BERT pooler (tanh(dense(state of token 0))): ``ClapTextModel`` in transformers."""

    config: ClapTextConfig

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, token_type_ids: jax.Array | None = None
    ) -> TextEncoderOutput:
        cfg = self.config
        dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        batch, length = input_ids.shape
        if length > cfg.max_text_length:
            raise ValueError(f"sequence length {length} exceeds the {cfg.max_text_length} tokens CLAP text can embed")
        d = cfg.hidden_size
        words = _embedding_table(self, "word_embeddings", (cfg.vocab_size, d), ("vocab", "embed"), pdtype)
        n_pos = cfg.max_position_embeddings
        positions = _embedding_table(self, "position_embeddings", (n_pos, d), ("positions", "embed"), pdtype)
        types = _embedding_table(self, "token_type_embeddings", (cfg.type_vocab_size, d), (None, "embed"), pdtype)
        if token_type_ids is None:  # transformers reads an all-zero buffer
            token_type_ids = jnp.zeros_like(input_ids)
        position_ids = roberta_position_ids(input_ids, cfg.pad_token_id)
        hidden = (
            jnp.take(words, input_ids, axis=0).astype(dtype)
            + jnp.take(types, token_type_ids, axis=0).astype(dtype)
            + jnp.take(positions, position_ids, axis=0).astype(dtype)
        )
        hidden = LayerNorm(cfg.layer_norm_eps, dtype, pdtype, name="embeddings_layer_norm")(hidden)

        if attention_mask is None:
            mask = jnp.ones((1, 1, length, length), jnp.bool_)
        else:
            mask = jnp.broadcast_to(attention_mask.astype(jnp.bool_)[:, None, None, :], (batch, 1, length, length))
        for i in range(cfg.num_hidden_layers):
            hidden = ClapTextLayer(cfg, name=f"layers_{i}")(hidden, mask)
        pooled = jnp.tanh(_dense(d, ("embed", None), dtype, pdtype, "pooler")(hidden[:, 0]))
        return TextEncoderOutput(last_hidden_state=hidden, pooler_output=pooled)


class ClapTextModel(nn.Module):
    """CLAP text branch as ``transformers.ClapTextModelWithProjection``: ``text_embeds`` = linear2(act(linear1(
    pooled))). Not normalised; AudioLDM applies :func:`l2_normalize` before using it as the class embedding."""

    config: ClapTextConfig

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, token_type_ids: jax.Array | None = None
    ) -> TextEncoderOutput:
        cfg = self.config
        dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        out = ClapTextEncoder(cfg, name="text_model")(input_ids, attention_mask, token_type_ids)
        proj = _ClapProjection(cfg.projection_dim, cfg.projection_hidden_act, dtype, pdtype, name="text_projection")
        return out.replace(text_embeds=proj(out.pooler_output))


class _ClapProjection(nn.Module):
    features: int
    act: str
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _dense(self.features, ("embed", "decoder_embed"), self.dtype, self.param_dtype, "linear1")(x)
        h = activation(self.act)(h)
        return _dense(self.features, ("decoder_embed", "decoder_embed"), self.dtype, self.param_dtype, "linear2")(h)


# -------------------------------------------------------------------------------------------------- tokenizers

_TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def _check_tokenizer_folder(folder: str | os.PathLike, kind: str) -> str:
    """transformers silently builds a 3-token tokenizer when the files are absent; fail loudly instead."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{kind} tokenizer folder {folder} does not exist")
    for names in _TOKENIZER_FILE_SETS:
        if all(os.path.exists(os.path.join(folder, n)) for n in names):
            return folder
    wanted = " or ".join(" + ".join(names) for names in _TOKENIZER_FILE_SETS)
    raise FileNotFoundError(f"{folder}: no {kind} tokenizer files (expected {wanted})")


def load_clip_tokenizer(folder: str | os.PathLike) -> Any:
    """``transformers.CLIPTokenizer`` from a local folder (e.g. an SD pipeline's ``tokenizer/``)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(_check_tokenizer_folder(folder, "CLIP"), local_files_only=True)


def load_clap_tokenizer(folder: str | os.PathLike) -> Any:
    """``transformers.RobertaTokenizer`` from a local folder (AudioLDM's ``tokenizer/``)."""
    from transformers import RobertaTokenizer

    return RobertaTokenizer.from_pretrained(_check_tokenizer_folder(folder, "CLAP (RoBERTa)"), local_files_only=True)


def tokenize(
    tokenizer: Any, texts: str | Sequence[str], max_length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)``, both int32 (B, max_length): truncated and padded to ``max_length`` as the
    diffusers pipelines do (``padding='max_length'``). ``max_length`` defaults to the tokenizer's
    ``model_max_length`` (77 for CLIP folders, 512 for AudioLDM's), which must then be set."""
    if isinstance(texts, str):
        texts = [texts]
    if max_length is None:
        max_length = int(tokenizer.model_max_length)
        if max_length > 1_000_000:  # transformers' "unset" sentinel
            raise ValueError("the tokenizer has no model_max_length (no tokenizer_config.json?); pass max_length")
    enc = tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
