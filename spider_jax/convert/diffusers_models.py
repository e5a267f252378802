"""diffusers ``UNet2DConditionModel`` / ``AutoencoderKL`` folders <-> our Flax parameter trees.

``load_unet(folder)`` / ``load_vae(folder)`` read ``config.json`` + ``diffusion_pytorch_model.safetensors`` (or a
sharded index / legacy ``.bin``) from a model folder, or from a pipeline root holding ``model_index.json`` (then the
``unet`` / ``vae`` subfolder is used). ``save_unet`` / ``save_vae`` write folders that diffusers'
``from_pretrained`` loads.

Why the mapping is derived rather than listed: the Flax modules use diffusers' submodule names (list indices as
``_N``), so the expected tensor names and shapes come from the model's own abstract parameter tree; a wrong, missing
or unexpected tensor raises :class:`CheckpointMismatchError` naming it. Kernels: conv OIHW <-> HWIO, linear
``(out, in)`` <-> ``(in, out)``. Old VAE checkpoints (``query/key/value/proj_attn`` attention names, 1x1-conv
attention weights) are read too, as diffusers does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from spider_jax.convert.folders import (
    DIFFUSERS_WEIGHTS,
    CheckpointMismatchError,
    FolderState,
    read_config,
    write_config,
    write_weights,
)
from spider_jax.convert.tensor_map import flat_params, params_to_tensors, tensors_to_params
from spider_jax.diffusion import unet2d, vae
from spider_jax.diffusion.blocks import as_dtype
from spider_jax.diffusion.unet2d import UNet2DConfig
from spider_jax.diffusion.vae import AutoencoderKLConfig

__all__ = [
    "CheckpointMismatchError",
    "component_folder",
    "load_component",
    "load_unet",
    "load_vae",
    "params_to_state_dict",
    "save_component",
    "save_unet",
    "save_vae",
    "state_dict_to_params",
]

# Flax module names that stand for a torch ModuleList entry: ``resnets_1`` <-> ``resnets.1``.
_LIST_MODULES = {
    "down_blocks",
    "up_blocks",
    "resnets",
    "attentions",
    "downsamplers",
    "upsamplers",
    "transformer_blocks",
    "to_out",
    "net",
}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}
# diffusers' pre-0.14 attention-block names (VAE mid-block), renamed on load like ModelMixin does.
_LEGACY_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


# ------------------------------------------------------------------------------------------ name map


def torch_name(path: tuple[str, ...]) -> str:
    """``('down_blocks_0', 'resnets_1', 'conv1', 'kernel')`` -> ``'down_blocks.0.resnets.1.conv1.weight'``."""
    parts: list[str] = []
    for part in path[:-1]:
        m = re.fullmatch(r"(.+)_(\d+)", part)
        if m and m.group(1) in _LIST_MODULES:
            parts += [m.group(1), m.group(2)]
        else:
            parts.append(part)
    if path[-1] not in _LEAF:
        raise ValueError(f"parameter {'/'.join(path)} has no diffusers equivalent")
    parts.append(_LEAF[path[-1]])
    return ".".join(parts)


def _to_torch_layout(arr: np.ndarray, path: tuple[str, ...] = ()) -> np.ndarray:
    if arr.ndim == 4:  # HWIO -> OIHW
        return arr.transpose(3, 2, 0, 1)
    if arr.ndim == 2:  # (in, out) -> (out, in)
        return arr.T
    return arr


def _from_torch_layout(arr: np.ndarray, path: tuple[str, ...] = ()) -> np.ndarray:
    if arr.ndim == 4:  # OIHW -> HWIO
        return arr.transpose(2, 3, 1, 0)
    if arr.ndim == 2:
        return arr.T
    return arr


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(flax_shape) == 4:
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if len(flax_shape) == 2:
        return flax_shape[::-1]
    return flax_shape


def _leaves(abstract: Any) -> Iterator[tuple[tuple[str, ...], tuple[int, ...]]]:
    for path, leaf in flat_params(abstract):
        yield path, tuple(leaf.shape)


def expected_tensors(abstract: Any) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """``torch name -> (flax path, torch shape)`` for an abstract parameter tree."""
    return {torch_name(path): (path, _torch_shape(shape)) for path, shape in _leaves(abstract)}


# ------------------------------------------------------------------------------------------ state dicts


def _resolve_legacy(state: Mapping[str, np.ndarray], name: str) -> str | None:
    """The checkpoint's name for ``name`` if it uses diffusers' old attention-block spelling, else None."""
    for new, old in _LEGACY_ATTENTION.items():
        marker = f".{new}."
        if marker in name:
            candidate = name.replace(marker, f".{old}.")
            if candidate in state:
                return candidate
    return None


def _squeeze_1x1(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Old VAEs store attention projections as 1x1 convolutions (out, in, 1, 1)."""
    return arr[:, :, 0, 0] if arr.ndim == 4 and len(shape) == 2 and arr.shape[2:] == (1, 1) else arr


def state_dict_to_params(
    state: Mapping[str, np.ndarray], abstract: Any, dtype: Any = None, source: str = "state dict"
) -> dict[str, Any]:
    """diffusers tensors -> our nested params dict, checking every name and shape against ``abstract``."""
    expected = expected_tensors(abstract)
    legacy = {}
    for name in expected:
        if name not in state:
            old = _resolve_legacy(state, name)
            if old is not None:
                legacy[name] = old
    return tensors_to_params(
        state, expected, _from_torch_layout, dtype=dtype, source=source, stored_names=legacy, adapt=_squeeze_1x1
    )


def params_to_state_dict(params: Mapping[str, Any], abstract: Any, dtype: Any = None) -> dict[str, np.ndarray]:
    """Inverse of :func:`state_dict_to_params` (host numpy, torch layouts); checks the tree against ``abstract``."""
    return params_to_tensors(params, expected_tensors(abstract), torch_name, _to_torch_layout, dtype=dtype)


# ------------------------------------------------------------------------------------------ folders


def component_folder(path: str | os.PathLike, component: str) -> str:
    """``path`` itself when it is a model folder (has ``config.json``); ``path/component`` when it is a diffusers
    pipeline root (has ``model_index.json``)."""
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    if os.path.exists(os.path.join(path, "model_index.json")):
        sub = os.path.join(path, component)
        if not os.path.isdir(sub):
            raise FileNotFoundError(f"{path} is a pipeline root (model_index.json) without a {component!r} folder")
        return sub
    raise FileNotFoundError(f"{path}: neither a model folder (config.json) nor a pipeline root (model_index.json)")


def _check_class(hf: Mapping[str, Any], expected: str, folder: str) -> None:
    name = hf.get("_class_name", expected)
    if name != expected:
        raise ValueError(f"{folder}/config.json describes a {name}, expected {expected}")


def load_component(
    path: str | os.PathLike,
    component: str,
    class_name: str,
    from_hf: Callable[..., Any],
    abstract_fn: Callable[[Any], Any],
    overrides: dict[str, Any],
    to_params: Callable[..., dict[str, Any]] = state_dict_to_params,
) -> tuple[Any, dict[str, Any]]:
    """``(config, params)`` of a diffusers model folder (or pipeline root + ``component``) whose config says
    ``class_name``: ``from_hf(config.json, **overrides)``, then ``to_params(state, abstract_fn(config), dtype,
    source)`` — tensors cast to ``overrides['param_dtype']`` when given."""
    folder = component_folder(path, component)
    hf = read_config(folder)
    _check_class(hf, class_name, folder)
    config = from_hf(hf, **overrides)
    cast = as_dtype(overrides["param_dtype"]) if "param_dtype" in overrides else None
    state = FolderState(folder, weights=(DIFFUSERS_WEIGHTS,))
    return config, to_params(state, abstract_fn(config), dtype=cast, source=folder)


def load_unet(path: str | os.PathLike, subfolder: str = "unet", **overrides: Any) -> tuple[UNet2DConfig, dict]:
    """``(config, params)`` from a diffusers UNet folder or pipeline root. ``overrides`` set execution fields
    (``dtype='bfloat16'``, ``param_dtype`` — tensors are then cast — ``attention_impl``)."""
    return load_component(
        path, subfolder, "UNet2DConditionModel", UNet2DConfig.from_hf_config, unet2d.abstract_params, overrides
    )


def load_vae(path: str | os.PathLike, subfolder: str = "vae", **overrides: Any) -> tuple[AutoencoderKLConfig, dict]:
    """``(config, params)`` from a diffusers AutoencoderKL folder or pipeline root."""
    return load_component(
        path, subfolder, "AutoencoderKL", AutoencoderKLConfig.from_hf_config, vae.abstract_params, overrides
    )


def save_component(
    config: Any,
    params: Mapping[str, Any],
    abstract: Any,
    folder: str | os.PathLike,
    dtype: Any,
    to_state: Callable[..., dict[str, np.ndarray]] = params_to_state_dict,
) -> None:
    """Writes ``to_state(params, abstract, dtype)`` as diffusers weights and ``config.to_hf_config()``."""
    state = to_state(params, abstract, dtype=dtype)
    write_weights(state, folder, DIFFUSERS_WEIGHTS)
    write_config(config.to_hf_config(), folder)


def save_unet(config: UNet2DConfig, params: Mapping[str, Any], folder: str | os.PathLike, dtype: Any = None) -> None:
    """Writes ``config.json`` + ``diffusion_pytorch_model.safetensors`` for ``UNet2DConditionModel.from_pretrained``."""
    save_component(config, params, unet2d.abstract_params(config), folder, dtype)


def save_vae(
    config: AutoencoderKLConfig, params: Mapping[str, Any], folder: str | os.PathLike, dtype: Any = None
) -> None:
    """Writes ``config.json`` + ``diffusion_pytorch_model.safetensors`` for ``AutoencoderKL.from_pretrained``."""
    save_component(config, params, vae.abstract_params(config), folder, dtype)
