"""transformers ``SpeechT5HifiGan`` folders (AudioLDM's ``vocoder/``) <-> our Flax :class:`HifiGan` parameters.

``load_vocoder(path)`` reads ``config.json`` + ``model.safetensors`` (or a sharded index / legacy ``.bin``) from a
vocoder folder or from a diffusers pipeline root (``model_index.json``, then ``vocoder/``). ``save_vocoder`` writes
a folder ``SpeechT5HifiGan.from_pretrained`` loads.

What ``save_pretrained`` writes: plain ``weight`` tensors (transformers never applies weight norm at init), plus the
``mean`` / ``scale`` normalisation buffers. Checkpoints saved with weight norm still applied are folded on load
(``weight = g · v / ‖v‖``, norm over every axis but 0 — torch's ``weight_norm(dim=0)``), both the legacy
``weight_g`` / ``weight_v`` names and the ``parametrizations.weight.original0/1`` ones. Layouts: ``Conv1d``
``(out, in, k)`` <-> Flax ``(k, in, out)``; ``ConvTranspose1d`` ``(in, out, k)`` <-> Flax ``(k, in, out)``. Names
and shapes are derived from the module's abstract parameter tree; anything missing, unexpected or mis-shaped raises
:class:`CheckpointMismatchError` naming the tensor.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from spider_jax.convert.diffusers_models import component_folder
from spider_jax.convert.folders import (
    TRANSFORMERS_WEIGHTS,
    CheckpointMismatchError,
    FolderState,
    read_config,
    write_config,
    write_weights,
)
from spider_jax.convert.tensor_map import flat_params, params_to_tensors, tensors_to_params
from spider_jax.diffusion import vocoder
from spider_jax.diffusion.blocks import as_dtype
from spider_jax.diffusion.vocoder import HifiGanConfig

__all__ = [
    "CheckpointMismatchError",
    "expected_tensors",
    "load_vocoder",
    "params_to_state_dict",
    "save_vocoder",
    "state_dict_to_params",
]

_LEAF = {"kernel": "weight", "bias": "bias", "mean": "mean", "scale": "scale"}
_WEIGHT_NORM = (  # (magnitude suffix, direction suffix) -> folded into ".weight"
    (".weight_g", ".weight_v"),
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


def torch_name(path: tuple[str, ...]) -> str:
    """``('resblocks_2', 'convs1_0', 'kernel')`` -> ``'resblocks.2.convs1.0.weight'`` (every ``_N`` is a list)."""
    parts: list[str] = []
    for part in path[:-1]:
        m = re.fullmatch(r"(.+)_(\d+)", part)
        parts += [m.group(1), m.group(2)] if m else [part]
    if path[-1] not in _LEAF:
        raise ValueError(f"parameter {'/'.join(path)} has no SpeechT5HifiGan equivalent")
    parts.append(_LEAF[path[-1]])
    return ".".join(parts)


def _is_transposed(path: tuple[str, ...]) -> bool:
    return path[0].startswith("upsampler_") and path[-1] == "kernel"


def _to_torch(arr: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    if arr.ndim != 3:
        return arr
    return arr.transpose(1, 2, 0) if _is_transposed(path) else arr.transpose(2, 1, 0)


def _from_torch(arr: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    if arr.ndim != 3:
        return arr
    return arr.transpose(2, 0, 1) if _is_transposed(path) else arr.transpose(2, 1, 0)


def _torch_shape(shape: tuple[int, ...], path: tuple[str, ...]) -> tuple[int, ...]:
    if len(shape) != 3:
        return shape
    k, i, o = shape
    return (i, o, k) if _is_transposed(path) else (o, i, k)


def expected_tensors(abstract: Any) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """``torch name -> (flax path, torch shape)`` for an abstract parameter tree."""
    return {torch_name(path): (path, _torch_shape(tuple(leaf.shape), path)) for path, leaf in flat_params(abstract)}


def _fold_weight_norm(state: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Plain ``.weight`` tensors for every weight-normalised pair; other tensors unchanged."""
    out: dict[str, np.ndarray] = {}
    pending = set(state)
    for name in sorted(state):
        for g_suffix, v_suffix in _WEIGHT_NORM:
            if not name.endswith(g_suffix):
                continue
            base = name[: -len(g_suffix)]
            if base + v_suffix not in state:
                raise CheckpointMismatchError(f"{source}: {name!r} has no matching {base + v_suffix!r}")
            g = np.asarray(state[name], np.float64)
            v = np.asarray(state[base + v_suffix], np.float64)
            norm = np.sqrt((v**2).sum(axis=tuple(range(1, v.ndim)), keepdims=True))
            out[base + ".weight"] = (g * v / norm).astype(np.asarray(state[name]).dtype)
            pending -= {name, base + v_suffix}
    for name in pending:
        if name not in out:
            out[name] = state[name]
    return out


def state_dict_to_params(
    state: Mapping[str, np.ndarray], abstract: Any, dtype: Any = None, source: str = "state dict"
) -> dict[str, Any]:
    """``SpeechT5HifiGan`` tensors -> our nested params dict, checking every name and shape against ``abstract``."""
    if any(n.endswith(g) for n in state for g, _ in _WEIGHT_NORM):
        state = _fold_weight_norm(state, source)
    return tensors_to_params(
        state, expected_tensors(abstract), _from_torch, dtype=dtype, source=source, what="the vocoder config"
    )


def params_to_state_dict(params: Mapping[str, Any], abstract: Any, dtype: Any = None) -> dict[str, np.ndarray]:
    """Inverse of :func:`state_dict_to_params` (host numpy, torch layouts); checks the tree against ``abstract``."""
    return params_to_tensors(
        params, expected_tensors(abstract), torch_name, _to_torch, dtype=dtype, what="vocoder parameter"
    )


def load_vocoder(path: str | os.PathLike, subfolder: str = "vocoder", **overrides: Any) -> tuple[HifiGanConfig, dict]:
    """``(config, params)`` from a ``SpeechT5HifiGan`` folder or a diffusers pipeline root holding ``vocoder/``.

    ``overrides`` set execution fields (``dtype='bfloat16'``; ``param_dtype`` — the tensors are then cast).
    """
    folder = component_folder(path, subfolder)
    hf = read_config(folder)
    archs = hf.get("architectures") or ["SpeechT5HifiGan"]
    if "SpeechT5HifiGan" not in archs:
        raise ValueError(f"{folder}/config.json describes {archs}, expected SpeechT5HifiGan")
    config = HifiGanConfig.from_hf_config(hf, **overrides)
    cast = as_dtype(overrides["param_dtype"]) if "param_dtype" in overrides else None
    state = FolderState(folder, weights=(TRANSFORMERS_WEIGHTS,))
    return config, state_dict_to_params(state, vocoder.abstract_params(config), dtype=cast, source=folder)


def save_vocoder(
    config: HifiGanConfig, params: Mapping[str, Any], folder: str | os.PathLike, dtype: Any = None
) -> None:
    """Writes ``config.json`` + ``model.safetensors`` for ``transformers.SpeechT5HifiGan.from_pretrained``."""
    state = params_to_state_dict(params, vocoder.abstract_params(config), dtype=dtype)
    write_weights(state, folder, TRANSFORMERS_WEIGHTS)
    first = state["conv_pre.weight"].dtype
    hf = config.to_hf_config()
    hf["dtype"] = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(first, "bfloat16")
    write_config(hf, folder)
