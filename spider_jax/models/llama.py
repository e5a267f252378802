"""LLaMA-2 / LLaMA-3 decoder in Flax Linen, numerically matching ``transformers.LlamaForCausalLM``.

Parameter names follow HF (``model/layers_3/self_attn/q_proj/kernel``) so conversion is a rename plus a
transpose. Every parameter carries logical axis names; ``spider_jax.sharding`` maps them onto the mesh.

Calling conventions
-------------------
``LlamaForCausalLM(config).apply({'params': p}, input_ids)`` returns float32 logits ``(B, L, V)``.
Add ``'lora': lora`` to the variables to run the adapters; pass ``inputs_embeds`` instead of ids to splice
modality embeddings; ``return_hidden=True`` also returns the final (post-norm) hidden states.

KV cache: ``init_cache(config, batch, max_length)`` builds the ``'cache'`` collection; then call with
``decode=True`` and ``mutable=['cache']``. Each call appends its tokens at the cache index; ``attention_mask``
covers only the tokens of that call (the cache remembers earlier ones).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spider_jax.models.lora import LoraConfig, LoRALinear
from spider_jax.sharding import constrain

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def as_dtype(name: Any) -> Any:
    if isinstance(name, str):
        if name not in _DTYPES:
            raise ValueError(f"Unknown dtype {name!r}; choose from {sorted(_DTYPES)}")
        return _DTYPES[name]
    return name


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. ``llama3`` is the Llama-3.1 scheme; ``linear`` divides all frequencies."""

    rope_type: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.rope_type not in ("llama3", "linear"):
            raise ValueError(f"Unsupported rope scaling type {self.rope_type!r}; supported: 'llama3', 'linear'")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int | None = None
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    # Execution choices (not part of the checkpoint format).
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"  # none | full | dots | dots_with_no_batch_dims
    attention_impl: str | None = None  # None (XLA) or 'cudnn' on GPUs, see jax.nn.dot_product_attention
    lora: LoraConfig | None = None

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                    f"{self.num_attention_heads}; set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.remat_policy not in _REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r} not in {sorted(_REMAT_POLICIES)}")
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraConfig.from_dict(self.lora))

    def replace(self, **kwargs) -> LlamaConfig:
        return dataclasses.replace(self, **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"Unknown LlamaConfig fields {unknown}")
        return cls(**d)


_REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def rope_inverse_frequencies(config: LlamaConfig) -> np.ndarray:
    """Per-pair rotation frequencies, computed in float32 as transformers does."""
    dim = config.head_dim
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(config.rope_theta) ** exponent)).astype(np.float32)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(config: LlamaConfig, position_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    inv_freq = jnp.asarray(rope_inverse_frequencies(config))
    freqs = position_ids.astype(jnp.float32)[..., None] * inv_freq  # (B, L, D/2)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """HF's half-rotation convention: x is (B, L, heads, D), cos/sin are (B, L, D)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x.astype(jnp.float32) * cos[:, :, None, :] + rotated.astype(jnp.float32) * sin[:, :, None, :]
    return out.astype(x.dtype)


class RMSNorm(nn.Module):
    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


def _linear(cfg: LlamaConfig, name: str, features: int, axes, bias: bool, deterministic: bool) -> LoRALinear:
    lora = cfg.lora if cfg.lora is not None and name in cfg.lora.targets else None
    return LoRALinear(
        features=features,
        axes=axes,
        use_bias=bias,
        lora=lora,
        dtype=as_dtype(cfg.dtype),
        param_dtype=as_dtype(cfg.param_dtype),
        kernel_init=nn.initializers.normal(cfg.initializer_range),
        deterministic=deterministic,
        name=name,
    )


class LlamaAttention(nn.Module):
    config: LlamaConfig
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x, cos, sin, mask, cache_index):
        cfg = self.config
        batch, length, _ = x.shape
        heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bias, det = cfg.attention_bias, self.deterministic
        q = _linear(cfg, "q_proj", heads * head_dim, ("embed", "heads"), bias, det)(x)
        k = _linear(cfg, "k_proj", kv_heads * head_dim, ("embed", "kv_heads"), bias, det)(x)
        v = _linear(cfg, "v_proj", kv_heads * head_dim, ("embed", "kv_heads"), bias, det)(x)
        q = apply_rope(q.reshape(batch, length, heads, head_dim), cos, sin)
        k = apply_rope(k.reshape(batch, length, kv_heads, head_dim), cos, sin)
        v = v.reshape(batch, length, kv_heads, head_dim)
        if self.decode:
            k, v = self._append_to_cache(k, v, cache_index)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=head_dim**-0.5, implementation=cfg.attention_impl)
        out = out.reshape(batch, length, heads * head_dim)
        return _linear(cfg, "o_proj", cfg.hidden_size, ("heads", "embed"), bias, det)(out)

    def _append_to_cache(self, k, v, cache_index):
        """Writes this call's keys/values at ``cache_index`` and returns the whole cache to attend over."""
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        if not initialized:  # init_cache: the input length *is* the cache length; nothing to append yet.
            return k, v
        start = (0, cache_index, 0, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k.astype(cached_key.value.dtype), start)
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v.astype(cached_value.value.dtype), start)
        return cached_key.value, cached_value.value


class LlamaMLP(nn.Module):
    config: LlamaConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        cfg, det = self.config, self.deterministic
        gate = _linear(cfg, "gate_proj", cfg.intermediate_size, ("embed", "mlp"), cfg.mlp_bias, det)(x)
        up = _linear(cfg, "up_proj", cfg.intermediate_size, ("embed", "mlp"), cfg.mlp_bias, det)(x)
        h = constrain(jax.nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
        return _linear(cfg, "down_proj", cfg.hidden_size, ("mlp", "embed"), cfg.mlp_bias, det)(h)


class LlamaDecoderLayer(nn.Module):
    config: LlamaConfig
    deterministic: bool = True
    decode: bool = False
    emit_hidden: bool = False  # also return the output as the scan's per-layer value (to pick a middle layer)

    @nn.compact
    def __call__(self, hidden, cos, sin, mask, cache_index):
        cfg = self.config
        dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        hidden = constrain(hidden, ("activation_batch", "activation_length", "activation_embed"))
        h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="input_layernorm")(hidden)
        h = LlamaAttention(cfg, self.deterministic, self.decode, name="self_attn")(h, cos, sin, mask, cache_index)
        hidden = hidden + h
        h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="post_attention_layernorm")(hidden)
        hidden = hidden + LlamaMLP(cfg, self.deterministic, name="mlp")(h)
        return hidden, (hidden if self.emit_hidden else None)  # (carry, per-layer output) for nn.scan


def _decoder_layer_class(cfg: LlamaConfig):
    cls = LlamaDecoderLayer
    policy = _REMAT_POLICIES[cfg.remat_policy]
    if cfg.remat_policy != "none":
        cls = nn.remat(cls, policy=policy, prevent_cse=not cfg.scan_layers)
    return cls


class LlamaModel(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        deterministic: bool = True,
        decode: bool = False,
        segment_ids=None,
        hidden_layer: int | None = None,
    ):
        """Returns ``(final hidden states (post-norm), embedding table, picked)``; ``picked`` are the hidden
        states numbered like transformers' ``output_hidden_states`` (0 = input embeddings, i = after layer i,
        ``num_hidden_layers`` or -1 = final post-norm), or None when ``hidden_layer`` is None."""
        cfg = self.config
        dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        n_layers = cfg.num_hidden_layers
        if hidden_layer is not None:
            if not -n_layers - 1 <= hidden_layer <= n_layers:
                raise ValueError(
                    f"hidden_layer {hidden_layer} out of range for {n_layers} layers: [-{n_layers + 1}, {n_layers}]"
                )
            hidden_layer %= n_layers + 1
        middle = hidden_layer is not None and 0 < hidden_layer < n_layers
        embedding = self.param(
            "embed_tokens",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), ("vocab", "embed")),
            (cfg.vocab_size, cfg.hidden_size),
            pdtype,
        )
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass either input_ids or inputs_embeds")
            # Gather from an un-sharded view: a lookup into a vocab-sharded table cannot stay sharded.
            inputs_embeds = jnp.take(constrain(embedding, (None, None)), input_ids, axis=0)
        hidden = inputs_embeds.astype(dtype)
        picked = hidden if hidden_layer == 0 else None
        batch, length = hidden.shape[:2]
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), jnp.bool_)
        attention_mask = attention_mask.astype(jnp.bool_)

        cache_index = jnp.zeros((), jnp.int32)
        if decode:
            mask, cache_index, position_ids = self._decode_mask(attention_mask, position_ids, length)
        else:
            causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
            if segment_ids is None:
                mask = causal[None, None] & attention_mask[:, None, None, :]
            else:  # packed rows: a token sees only earlier tokens of its own segment (padding = segment 0)
                same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
                mask = causal[None, None] & same
            if position_ids is None:
                position_ids = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        cos, sin = rope_cos_sin(cfg, position_ids)

        layer_cls = _decoder_layer_class(cfg)
        if cfg.scan_layers:
            stack = nn.scan(
                layer_cls,
                variable_axes={"params": 0, "lora": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_hidden_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            # A middle layer is read from the stacked per-layer outputs (the scan keeps each layer's input for
            # the backward pass anyway, so this adds at most one such stack).
            hidden, per_layer = stack(cfg, deterministic, decode, middle, name="layers")(
                hidden, cos, sin, mask, cache_index
            )
            if middle:
                picked = per_layer[hidden_layer - 1]
        else:
            for i in range(cfg.num_hidden_layers):
                hidden, _ = layer_cls(cfg, deterministic, decode, name=f"layers_{i}")(
                    hidden, cos, sin, mask, cache_index
                )
                if middle and i + 1 == hidden_layer:
                    picked = hidden
        hidden = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="norm")(hidden)
        if hidden_layer == n_layers:
            picked = hidden
        return hidden, embedding, picked

    def _decode_mask(self, attention_mask, position_ids, length):
        """Mask over the whole cache: a key is visible if it was written by now and was not padding."""
        initialized = self.has_variable("cache", "cache_index")
        batch = attention_mask.shape[0]
        index_var = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        key_mask_var = self.variable("cache", "key_mask", jnp.zeros, (batch, length), jnp.bool_)
        if not initialized:
            causal = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
            return causal, index_var.value, positions if position_ids is None else position_ids
        index = index_var.value
        max_length = key_mask_var.value.shape[1]
        key_mask = jax.lax.dynamic_update_slice(key_mask_var.value, attention_mask, (0, index))
        key_mask_var.value = key_mask
        index_var.value = index + length
        query_pos = index + jnp.arange(length)
        causal = jnp.arange(max_length)[None, :] <= query_pos[:, None]
        mask = causal[None, None] & key_mask[:, None, None, :]
        if position_ids is None:
            position_ids = jnp.broadcast_to(query_pos.astype(jnp.int32), (batch, length))
        return mask, index, position_ids


class LlamaForCausalLM(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        deterministic: bool = True,
        decode: bool = False,
        return_hidden: bool = False,
        segment_ids=None,
        hidden_layer: int = -1,
    ):
        """``segment_ids`` (B, L; 0 = padding) marks packed rows: attention stays inside each segment, and
        ``position_ids`` should restart at every segment (the input pipeline provides both).

        ``return_hidden=True`` also returns hidden states: ``hidden_layer`` numbers them as transformers'
        ``output_hidden_states`` does (0 = input embeddings, i = after layer i, -1 = final post-norm)."""
        cfg = self.config
        hidden, embedding, picked = LlamaModel(cfg, name="model")(
            input_ids, attention_mask, position_ids, inputs_embeds, deterministic, decode, segment_ids,
            hidden_layer if return_hidden else None,
        )  # fmt: skip
        if cfg.tie_word_embeddings:
            logits = jnp.dot(hidden, embedding.astype(hidden.dtype).T)
        else:
            kernel = self.param(
                "lm_head",
                nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), ("embed", "vocab")),
                (cfg.hidden_size, cfg.vocab_size),
                as_dtype(cfg.param_dtype),
            )
            logits = jnp.dot(hidden, kernel.astype(hidden.dtype))
        logits = constrain(logits.astype(jnp.float32), ("activation_batch", "activation_length", "activation_vocab"))
        return (logits, picked) if return_hidden else logits

    def embed(self, input_ids):
        """Token embeddings alone (for splicing modality embeddings before the forward pass)."""
        return self.variables["params"]["model"]["embed_tokens"][input_ids]


def init_params(config: LlamaConfig, rng: jax.Array, with_lora: bool | None = None) -> dict[str, Any]:
    """Random variables ``{'params': ..., 'lora': ...}`` (plain arrays, metadata boxes removed)."""
    model = LlamaForCausalLM(config)
    ids = jnp.zeros((1, 2), jnp.int32)
    variables = jax.jit(model.init)(rng, ids)
    if with_lora is False:
        variables = {k: v for k, v in variables.items() if k != "lora"}
    return nn.unbox(variables)


def init_lora_params(config: LlamaConfig, rng: jax.Array) -> dict[str, Any]:
    """Only the LoRA tree; the base-parameter initialisation is dead code XLA removes, so this is cheap at 7B."""
    if config.lora is None:
        raise ValueError("config.lora is None: nothing to initialise")
    model = LlamaForCausalLM(config)
    fn = jax.jit(lambda r: nn.unbox(model.init(r, jnp.zeros((1, 2), jnp.int32))["lora"]))
    return fn(rng)


def init_cache(config: LlamaConfig, batch_size: int, max_length: int) -> dict[str, Any]:
    """Zeroed KV cache for ``max_length`` positions (the cache collection, shapes derived by tracing)."""
    model = LlamaForCausalLM(config.replace(lora=None))
    ids = jnp.zeros((batch_size, max_length), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, decode=True))["cache"]
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), nn.unbox(shapes))
