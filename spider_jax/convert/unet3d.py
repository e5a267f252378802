"""diffusers ``UNet3DConditionModel`` folders (Zeroscope / ModelScope T2V) <-> our Flax parameter trees.

``load_unet3d(path)`` reads ``config.json`` + ``diffusion_pytorch_model.safetensors`` (or a sharded index / legacy
``.bin``) from a model folder or from a pipeline root holding ``model_index.json`` (then ``unet/``);
``save_unet3d`` writes a folder that ``UNet3DConditionModel.from_pretrained`` loads.

Why a thin layer over ``diffusers_models``: the generic 2-D converter derives tensor names from the Flax tree and
knows the ModuleList names of the image UNet. The video UNet adds two more lists (``temp_convs``,
``temp_attentions``) and ``nn.Sequential`` stages inside ``TemporalConvLayer`` (``conv1.0`` GroupNorm, ``conv1.2``
Conv3d, ...), whose Flax names (``temp_convs_0``, ``conv1_2``) the generic mapping passes through unchanged. So the
generic names ("canonical") are renamed to diffusers' here, and the temporal ``Conv3d`` weights ``(O, I, 3, 1, 1)``
map to the Flax ``(3, 1)`` 2-D convolutions' canonical ``(O, I, 3, 1)`` by dropping the unit axis. Names and shapes
are checked in diffusers' terms, so a mismatch names the checkpoint's own tensor.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from spider_jax.convert.diffusers_models import (
    CheckpointMismatchError,
    expected_tensors,
    load_component,
    params_to_state_dict,
    save_component,
    state_dict_to_params,
)
from spider_jax.convert.tensor_map import check_names
from spider_jax.diffusion import unet3d
from spider_jax.diffusion.unet3d import UNet3DConfig

__all__ = [
    "CheckpointMismatchError",
    "diffusers_name",
    "expected_unet3d_tensors",
    "load_unet3d",
    "params_to_unet3d_state_dict",
    "save_unet3d",
    "unet3d_state_dict_to_params",
]

CLASS_NAME = "UNet3DConditionModel"
_TEMPORAL_LISTS = re.compile(r"(temp_convs|temp_attentions)_(\d+)")
_SEQUENTIAL = re.compile(r"(conv[1-4])_(\d+)")
_TEMPORAL_CONV_WEIGHT = re.compile(r"\.temp_convs\.\d+\.conv[1-4]\.\d+\.weight$")


def diffusers_name(canonical: str) -> str:
    """``'mid_block.temp_convs_0.conv1_2.weight'`` (generic mapping) -> ``'mid_block.temp_convs.0.conv1.2.weight'``."""
    out: list[str] = []
    for part in canonical.split("."):
        m = _TEMPORAL_LISTS.fullmatch(part)
        if m is None and len(out) >= 2 and out[-2] == "temp_convs":
            m = _SEQUENTIAL.fullmatch(part)  # the Sequential stages exist only inside a TemporalConvLayer
        out += [m.group(1), m.group(2)] if m else [part]
    return ".".join(out)


def _is_temporal_conv(name: str, ndim: int) -> bool:
    """A Conv3d kernel of a TemporalConvLayer (canonical rank 4; its GroupNorm weights share the name pattern)."""
    return ndim == 4 and _TEMPORAL_CONV_WEIGHT.search(name) is not None


def expected_unet3d_tensors(abstract: Any) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``diffusers name -> (canonical name, diffusers shape)`` for an abstract UNet3D parameter tree."""
    out = {}
    for canonical, (_, shape) in expected_tensors(abstract).items():
        name = diffusers_name(canonical)
        out[name] = (canonical, shape + (1,) if _is_temporal_conv(name, len(shape)) else shape)
    return out


def unet3d_state_dict_to_params(
    state: Mapping[str, np.ndarray], abstract: Any, dtype: Any = None, source: str = "state dict"
) -> dict[str, Any]:
    """diffusers UNet3D tensors -> our nested params dict; every name and shape is checked against ``abstract``."""
    expected = expected_unet3d_tensors(abstract)
    check_names(expected, state, f"{source}: tensors do not match the config")
    canonical_state = {}
    for name, (canonical, shape) in expected.items():
        arr = np.asarray(state[name])
        if tuple(arr.shape) != shape:
            raise CheckpointMismatchError(
                f"{source}: tensor {name!r} has shape {tuple(arr.shape)}, the config expects {shape}"
            )
        canonical_state[canonical] = arr[..., 0] if len(shape) == 5 else arr  # Conv3d (O, I, 3, 1, 1)
    return state_dict_to_params(canonical_state, abstract, dtype=dtype, source=source)


def params_to_unet3d_state_dict(params: Mapping[str, Any], abstract: Any, dtype: Any = None) -> dict[str, np.ndarray]:
    """Inverse of :func:`unet3d_state_dict_to_params`: diffusers names and torch layouts (Conv3d weights 5-D)."""
    state = {}
    for canonical, arr in params_to_state_dict(params, abstract, dtype=dtype).items():
        name = diffusers_name(canonical)
        state[name] = np.ascontiguousarray(arr[..., None]) if _is_temporal_conv(name, arr.ndim) else arr
    return state


def load_unet3d(path: str | os.PathLike, subfolder: str = "unet", **overrides: Any) -> tuple[UNet3DConfig, dict]:
    """``(config, params)`` from a diffusers UNet3D folder or a TextToVideoSD pipeline root. ``overrides`` set
    execution fields (``dtype='bfloat16'``, ``param_dtype`` — tensors are then cast — ``attention_impl``)."""
    return load_component(
        path,
        subfolder,
        CLASS_NAME,
        UNet3DConfig.from_hf_config,
        unet3d.abstract_params,
        overrides,
        to_params=unet3d_state_dict_to_params,
    )


def save_unet3d(config: UNet3DConfig, params: Mapping[str, Any], folder: str | os.PathLike, dtype: Any = None) -> None:
    """Writes ``config.json`` + ``diffusion_pytorch_model.safetensors`` for ``UNet3DConditionModel.from_pretrained``."""
    save_component(config, params, unet3d.abstract_params(config), folder, dtype, to_state=params_to_unet3d_state_dict)
