"""HF CLIP text encoders (SD1.5's CLIP-L/14, Zeroscope's OpenCLIP-H text) <-> our Flax parameter trees.

``load_clip_text(folder)`` reads a local transformers folder (config.json + safetensors or .bin): a
``CLIPTextModel`` (tensors with the ``text_model.`` prefix as transformers 4 / diffusers pipelines ship them, or
without it as transformers 5 saves them), a ``CLIPTextModelWithProjection``, or a full ``CLIPModel`` (its vision
tower is skipped). ``save_clip_text`` writes a folder ``transformers`` loads with ``from_pretrained``.

The generic pieces (name/shape checks, export, pipeline subfolders) are shared with ``spider_jax.convert.clap``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from spider_jax.convert.folders import (
    TRANSFORMERS_WEIGHTS,
    CheckpointMismatchError,
    FolderState,
    read_config,
    write_config,
    write_weights,
)
from spider_jax.convert.tensor_map import get_path, set_path
from spider_jax.models.llama import as_dtype
from spider_jax.models.text_encoders import CLIPTextConfig

# (flax path, HF tensor name, transposed?, flax shape)
Entry = tuple[tuple[str, ...], str, bool, tuple[int, ...]]

# ------------------------------------------------------------------------------------- shared machinery


def resolve_component(path: str | os.PathLike, component: str) -> str:
    """``path`` itself when it is a model folder, else its ``component`` subfolder (a diffusers pipeline root such
    as SD1.5's, whose text encoder lives in ``text_encoder/``)."""
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    sub = os.path.join(path, component)
    if os.path.exists(os.path.join(sub, "config.json")):
        return sub
    raise FileNotFoundError(f"{path}: neither a model folder (no config.json) nor a pipeline with {component}/")




def linear(flax_path: tuple[str, ...], hf_name: str, d_in: int, d_out: int, bias: bool = True) -> Iterator[Entry]:
    """A ``torch.nn.Linear`` (weight is (out, in)) as an ``nn.Dense`` (kernel is (in, out))."""
    yield flax_path + ("kernel",), f"{hf_name}.weight", True, (d_in, d_out)
    if bias:
        yield flax_path + ("bias",), f"{hf_name}.bias", False, (d_out,)


def layer_norm(flax_path: tuple[str, ...], hf_name: str, width: int) -> Iterator[Entry]:
    yield flax_path + ("scale",), f"{hf_name}.weight", False, (width,)
    yield flax_path + ("bias",), f"{hf_name}.bias", False, (width,)


def state_to_params(
    state: Mapping[str, np.ndarray],
    entries: Iterable[Entry],
    source: str,
    ignored: Callable[[str], bool] = lambda name: False,
    dtype: Any = None,
    what: str = "model",
) -> dict[str, Any]:
    """Renames/transposes HF tensors into a Flax tree; every name and shape is checked, so a checkpoint of another
    size or architecture fails with the offending tensor rather than deep inside ``apply``."""
    entries = list(entries)
    expected = {hf for _, hf, _, _ in entries}
    present = {n for n in state if not ignored(n)}
    missing, unexpected = sorted(expected - present), sorted(present - expected)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source}: tensors do not match the {what} config "
            f"(missing {len(missing)}: {missing[:8]}; unexpected {len(unexpected)}: {unexpected[:8]})"
        )
    params: dict[str, Any] = {}
    for path, hf_name, transpose, flax_shape in entries:
        arr = state[hf_name]
        hf_shape = tuple(flax_shape[::-1]) if transpose else tuple(flax_shape)
        if tuple(arr.shape) != hf_shape:
            raise CheckpointMismatchError(
                f"{source}: tensor {hf_name!r} has shape {tuple(arr.shape)}, the {what} config expects {hf_shape}"
            )
        arr = np.asarray(arr).T if transpose else np.asarray(arr)
        set_path(params, path, np.ascontiguousarray(arr.astype(dtype) if dtype is not None else arr))
    return params


def params_to_state(params: Mapping[str, Any], entries: Iterable[Entry], dtype: Any = None) -> dict[str, np.ndarray]:
    """Inverse of :func:`state_to_params` (host numpy; boxed ``nn.Partitioned`` leaves are unboxed)."""
    params = nn.meta.unbox(params)
    state: dict[str, np.ndarray] = {}
    for path, hf_name, transpose, flax_shape in entries:
        try:
            value = get_path(params, path)
        except (KeyError, TypeError) as e:
            raise CheckpointMismatchError(f"parameter tree lacks {'/'.join(path)} (for {hf_name!r})") from e
        arr = np.asarray(jax.device_get(value))
        if arr.shape != tuple(flax_shape):
            raise CheckpointMismatchError(
                f"parameter {'/'.join(path)} has shape {arr.shape}, the config expects {tuple(flax_shape)}"
            )
        arr = arr.T if transpose else arr
        state[hf_name] = np.ascontiguousarray(arr.astype(dtype) if dtype is not None else arr)
    return state


def torch_dtype_name(state: Mapping[str, np.ndarray]) -> str:
    first = next(arr for arr in state.values() if np.issubdtype(arr.dtype, np.floating) or arr.dtype.kind == "V")
    return {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(first.dtype, "bfloat16")


def detect_prefix(state: Mapping[str, np.ndarray], probe: str, prefixes: Iterable[str], source: str) -> str:
    """Which of ``prefixes`` the checkpoint puts before its tensor names (found via the ``probe`` tensor)."""
    prefixes = list(prefixes)
    for prefix in prefixes:
        if prefix + probe in state:
            return prefix
    raise CheckpointMismatchError(
        f"{source}: tensor {probe!r} not found under any of the prefixes {prefixes} "
        f"(first tensors: {sorted(state)[:5]})"
    )


# -------------------------------------------------------------------------------------------------- CLIP

_CLIP_PREFIXES = ("text_model.", "")
_CLIP_MODEL_ONLY = ("vision_model.", "visual_projection.", "logit_scale")


def clip_entries(config: CLIPTextConfig, hf_prefix: str = "text_model.") -> list[Entry]:
    """The name map for :func:`spider_jax.models.text_encoders.clip_text_model` of this config."""
    d, f = config.hidden_size, config.intermediate_size
    root: tuple[str, ...] = ("text_model",) if config.with_projection else ()
    p = hf_prefix
    out: list[Entry] = [
        (root + ("token_embedding",), f"{p}embeddings.token_embedding.weight", False, (config.vocab_size, d)),
        (root + ("position_embedding",), f"{p}embeddings.position_embedding.weight", False,
         (config.max_position_embeddings, d)),
    ]  # fmt: skip
    for i in range(config.num_hidden_layers):
        layer, hf = root + (f"layers_{i}",), f"{p}encoder.layers.{i}"
        out += layer_norm(layer + ("layer_norm1",), f"{hf}.layer_norm1", d)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out += linear(layer + ("self_attn", proj), f"{hf}.self_attn.{proj}", d, d)
        out += layer_norm(layer + ("layer_norm2",), f"{hf}.layer_norm2", d)
        out += linear(layer + ("fc1",), f"{hf}.mlp.fc1", d, f)
        out += linear(layer + ("fc2",), f"{hf}.mlp.fc2", f, d)
    out += layer_norm(root + ("final_layer_norm",), f"{p}final_layer_norm", d)
    if config.with_projection:
        out += linear(("text_projection",), "text_projection", d, config.projection_dim, bias=False)
    return out


def clip_config_to_hf(config: CLIPTextConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    return {
        "architectures": ["CLIPTextModelWithProjection" if config.with_projection else "CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "max_position_embeddings": config.max_position_embeddings,
        "hidden_act": config.hidden_act,
        "layer_norm_eps": config.layer_norm_eps,
        "projection_dim": config.projection_dim,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "dtype": torch_dtype,
    }


def load_clip_text(folder: str | os.PathLike, **config_overrides: Any) -> tuple[CLIPTextConfig, dict[str, Any]]:
    """``(config, params)`` from a local transformers CLIP folder; params are host numpy arrays for
    ``clip_text_model(config)``.

    ``config.with_projection`` follows the folder's architecture (override with ``with_projection=``; a projection
    in the file is skipped when False, as transformers' ``CLIPTextModel`` does). ``dtype`` / ``param_dtype``
    overrides set the compute dtype and cast the tensors.
    """
    folder = os.fspath(folder)
    config = CLIPTextConfig.from_hf_config(read_config(folder), **config_overrides)
    cast = as_dtype(config_overrides["param_dtype"]) if "param_dtype" in config_overrides else None
    state = FolderState(folder, weights=(TRANSFORMERS_WEIGHTS,))
    prefix = detect_prefix(state, "embeddings.token_embedding.weight", _CLIP_PREFIXES, folder)

    def ignored(name: str) -> bool:
        if name.endswith("position_ids"):  # a buffer older exports carry
            return True
        if name == "text_projection.weight" and not config.with_projection:
            return True
        return name.startswith(_CLIP_MODEL_ONLY)

    params = state_to_params(state, clip_entries(config, prefix), folder, ignored, cast, what="CLIP text")
    return config, params


def save_clip_text(
    config: CLIPTextConfig, params: Mapping[str, Any], folder: str | os.PathLike, dtype: Any = None
) -> None:
    """Writes ``config.json`` + ``model.safetensors`` with the ``text_model.`` prefix, which transformers 4 and 5
    (``CLIPTextModel`` or ``CLIPTextModelWithProjection`` per ``config.with_projection``) both load."""
    state = params_to_state(params, clip_entries(config, "text_model."), dtype)
    write_weights(state, folder, TRANSFORMERS_WEIGHTS)
    write_config(clip_config_to_hf(config, torch_dtype_name(state)), folder)
