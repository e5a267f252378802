"""HF LLaMA checkpoints (config.json + safetensors, sharded or not) <-> our Flax parameter tree.

``load_hf_checkpoint(path)`` reads a local folder written by ``transformers`` (or Meta weights converted by it);
``save_hf_checkpoint(config, params, path)`` writes one that ``transformers.LlamaForCausalLM.from_pretrained``
loads. With ``lora=`` the adapters are merged first, so the export runs anywhere without peft.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from spider_jax.convert.folders import (  # noqa: F401  (CheckpointMismatchError re-exported)
    TRANSFORMERS_WEIGHTS,
    CheckpointMismatchError,
    FolderState,
    read_config,
    write_weights,
)
from spider_jax.convert.tensor_map import get_path, set_path
from spider_jax.models import lora as lora_lib
from spider_jax.models.llama import LlamaConfig, RopeScaling, as_dtype

# Buffers some older exports carry; they are recomputed, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ----------------------------------------------------------------------------------------------- config


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> LlamaConfig:
    """LlamaConfig from a transformers config.json dict (v4 rope_theta + rope_scaling, or v5 rope_parameters)."""
    model_type = hf.get("model_type", "llama")
    if model_type not in ("llama", "mistral"):
        raise ValueError(
            f"config.json has model_type={model_type!r}; only LLaMA-architecture checkpoints are supported"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={hf['hidden_act']!r} is not supported (LLaMA uses 'silu')")
    rope = dict(hf.get("rope_parameters") or {})
    legacy_scaling = hf.get("rope_scaling") or {}
    rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type") or legacy_scaling.get("rope_type") or legacy_scaling.get("type") or "default"
    params = {**legacy_scaling, **rope}
    scaling = None
    if rope_type == "llama3":
        scaling = RopeScaling(
            rope_type="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    elif rope_type == "linear":
        scaling = RopeScaling(rope_type="linear", factor=float(params["factor"]))
    elif rope_type != "default":
        raise ValueError(f"RoPE type {rope_type!r} is not supported (supported: default, linear, llama3)")
    heads = hf["num_attention_heads"]
    eos = hf.get("eos_token_id", 2)
    kwargs = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope_theta),
        rope_scaling=scaling,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        initializer_range=hf.get("initializer_range", 0.02),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
        pad_token_id=hf.get("pad_token_id"),
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def config_to_hf(config: LlamaConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_theta": config.rope_theta, "rope_type": "default"}
    if config.rope_scaling is not None:
        s = config.rope_scaling
        rope.update(rope_type=s.rope_type, factor=s.factor)
        if s.rope_type == "llama3":
            rope.update(
                low_freq_factor=s.low_freq_factor,
                high_freq_factor=s.high_freq_factor,
                original_max_position_embeddings=s.original_max_position_embeddings,
            )
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        # Both spellings, so transformers 4.x and 5.x read the same file.
        "rope_theta": config.rope_theta,
        "rope_scaling": None if config.rope_scaling is None else {k: v for k, v in rope.items() if k != "rope_theta"},
        "rope_parameters": rope,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.attention_bias,
        "attention_dropout": 0.0,
        "mlp_bias": config.mlp_bias,
        "initializer_range": config.initializer_range,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "dtype": torch_dtype,
        "use_cache": True,
    }


# ------------------------------------------------------------------------------------------- name map

_PROJECTIONS = (
    ("self_attn", "q_proj", "attention_bias"),
    ("self_attn", "k_proj", "attention_bias"),
    ("self_attn", "v_proj", "attention_bias"),
    ("self_attn", "o_proj", "attention_bias"),
    ("mlp", "gate_proj", "mlp_bias"),
    ("mlp", "up_proj", "mlp_bias"),
    ("mlp", "down_proj", "mlp_bias"),
)


def _layer_entries(config: LlamaConfig) -> Iterator[tuple[tuple[str, ...], str, bool, tuple[int, ...]]]:
    """(flax path inside a layer, HF suffix, transposed?, flax shape) for one decoder layer."""
    d, hd = config.hidden_size, config.head_dim
    out_dims = {
        "q_proj": config.num_attention_heads * hd,
        "k_proj": config.num_key_value_heads * hd,
        "v_proj": config.num_key_value_heads * hd,
        "o_proj": d,
        "gate_proj": config.intermediate_size,
        "up_proj": config.intermediate_size,
        "down_proj": d,
    }
    in_dims = {"o_proj": config.num_attention_heads * hd, "down_proj": config.intermediate_size}
    for block, proj, bias_flag in _PROJECTIONS:
        shape = (in_dims.get(proj, d), out_dims[proj])
        yield (block, proj, "kernel"), f"{block}.{proj}.weight", True, shape
        if getattr(config, bias_flag):
            yield (block, proj, "bias"), f"{block}.{proj}.bias", False, (out_dims[proj],)
    yield ("input_layernorm", "scale"), "input_layernorm.weight", False, (d,)
    yield ("post_attention_layernorm", "scale"), "post_attention_layernorm.weight", False, (d,)


def _global_entries(config: LlamaConfig) -> Iterator[tuple[tuple[str, ...], str, bool, tuple[int, ...]]]:
    yield ("model", "embed_tokens"), "model.embed_tokens.weight", False, (config.vocab_size, config.hidden_size)
    yield ("model", "norm", "scale"), "model.norm.weight", False, (config.hidden_size,)
    if not config.tie_word_embeddings:
        yield ("lm_head",), "lm_head.weight", True, (config.hidden_size, config.vocab_size)


def expected_hf_names(config: LlamaConfig) -> list[str]:
    names = [hf for _, hf, _, _ in _global_entries(config)]
    for i in range(config.num_hidden_layers):
        names += [f"model.layers.{i}.{hf}" for _, hf, _, _ in _layer_entries(config)]
    return names




# ------------------------------------------------------------------------------------- state dicts


def hf_state_dict_to_params(
    state: Mapping[str, np.ndarray], config: LlamaConfig, dtype: Any = None, source: str = "state dict"
) -> dict[str, Any]:
    """Renames/transposes HF tensors into our tree, checking every name and shape first."""
    expected = set(expected_hf_names(config))
    present = {n for n in state if not n.endswith(_IGNORED_SUFFIXES)}
    missing = sorted(expected - present)
    unexpected = sorted(present - expected)
    if config.tie_word_embeddings and "lm_head.weight" in unexpected:
        unexpected.remove("lm_head.weight")  # some exports store the tied head explicitly
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source}: tensors do not match the LLaMA config "
            f"(missing {len(missing)}: {missing[:8]}; unexpected {len(unexpected)}: {unexpected[:8]})"
        )

    def fetch(hf_name: str, transpose: bool, flax_shape: tuple[int, ...]) -> np.ndarray:
        arr = state[hf_name]
        hf_shape = tuple(flax_shape[::-1]) if transpose else tuple(flax_shape)
        if tuple(arr.shape) != hf_shape:
            raise CheckpointMismatchError(
                f"{source}: tensor {hf_name!r} has shape {tuple(arr.shape)}, the config expects {hf_shape}"
            )
        arr = np.asarray(arr)
        if transpose:
            arr = arr.T
        return np.ascontiguousarray(arr.astype(dtype) if dtype is not None else arr)

    params: dict[str, Any] = {}
    for path, hf_name, transpose, shape in _global_entries(config):
        set_path(params, path, fetch(hf_name, transpose, shape))
    layer_entries = list(_layer_entries(config))
    if config.scan_layers:
        for path, suffix, transpose, shape in layer_entries:
            stacked = np.stack(
                [fetch(f"model.layers.{i}.{suffix}", transpose, shape) for i in range(config.num_hidden_layers)]
            )
            set_path(params, ("model", "layers") + path, stacked)
    else:
        for i in range(config.num_hidden_layers):
            for path, suffix, transpose, shape in layer_entries:
                set_path(params, ("model", f"layers_{i}") + path, fetch(f"model.layers.{i}.{suffix}", transpose, shape))
    return params


def params_to_hf_state_dict(params: Mapping[str, Any], config: LlamaConfig, dtype: Any = None) -> dict[str, np.ndarray]:
    """Inverse of :func:`hf_state_dict_to_params`; arrays are gathered to host numpy."""

    def host(x, transpose):
        arr = np.asarray(jax.device_get(x))
        arr = arr.T if transpose else arr
        return np.ascontiguousarray(arr.astype(dtype) if dtype is not None else arr)

    state: dict[str, np.ndarray] = {}
    try:
        for path, hf_name, transpose, _ in _global_entries(config):
            state[hf_name] = host(get_path(params, path), transpose)
        for path, suffix, transpose, _ in _layer_entries(config):
            for i in range(config.num_hidden_layers):
                if config.scan_layers:
                    value = get_path(params, ("model", "layers") + path)[i]
                else:
                    value = get_path(params, ("model", f"layers_{i}") + path)
                state[f"model.layers.{i}.{suffix}"] = host(value, transpose)
    except KeyError as e:
        raise CheckpointMismatchError(f"parameter tree lacks {e} expected by the config") from e
    return state


# ---------------------------------------------------------------------------------------- folders


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    return read_config(path)


def load_hf_checkpoint(path: str | os.PathLike, **config_overrides: Any) -> tuple[LlamaConfig, dict[str, Any]]:
    """Reads a local HF LLaMA folder. Returns ``(config, params)`` with params as host numpy arrays.

    ``config_overrides`` set execution fields such as ``scan_layers=True``, ``dtype='bfloat16'`` (compute) or
    ``lora=LoraConfig(...)``. Tensors keep the file's dtype unless ``param_dtype`` is given, then they are cast.
    """
    folder = os.fspath(path)
    config = config_from_hf(read_hf_config(folder), **config_overrides)
    cast = as_dtype(config_overrides["param_dtype"]) if "param_dtype" in config_overrides else None
    state = FolderState(folder, weights=(TRANSFORMERS_WEIGHTS,))
    return config, hf_state_dict_to_params(state, config, dtype=cast, source=folder)


def save_hf_checkpoint(
    config: LlamaConfig,
    params: Mapping[str, Any],
    path: str | os.PathLike,
    lora: Mapping[str, Any] | None = None,
    dtype: Any = None,
    max_shard_size: int = 5 * 2**30,
    tokenizer_dir: str | os.PathLike | None = None,
) -> None:
    """Writes ``config.json`` + safetensors (sharded with an index above ``max_shard_size`` bytes).

    ``lora`` (with ``config.lora`` set) is merged into the kernels first. ``tokenizer_dir`` files are copied beside.
    """
    folder = os.fspath(path)
    os.makedirs(folder, exist_ok=True)
    if lora is not None:
        if config.lora is None:
            raise ValueError("lora tree given but config.lora is None: the scale alpha/r is unknown")
        params = lora_lib.merge(params, lora, config.lora)
    state = params_to_hf_state_dict(params, config, dtype=dtype)
    first = next(iter(state.values()))
    torch_dtype = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(first.dtype, "bfloat16")
    write_weights(state, folder, TRANSFORMERS_WEIGHTS, max_shard_size)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config_to_hf(config, torch_dtype), f, indent=2)
    if tokenizer_dir is not None:
        _copy_tokenizer_files(os.fspath(tokenizer_dir), folder)


def _copy_tokenizer_files(src: str, dst: str) -> None:
    import shutil

    for name in os.listdir(src):
        if name.startswith("tokenizer") or name in ("special_tokens_map.json", "added_tokens.json"):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
