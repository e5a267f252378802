"""JAX ⇄ PyTorch array bridge for the heads that stay in PyTorch (GroundingDINO, SAM).

Why DLPack: the Spider LLM runs in JAX while the grounding heads are transformers/PyTorch models; DLPack lets both
frameworks look at the same buffer (CPU or GPU) instead of bouncing through host numpy copies. A copy happens only
when it has to:

* a sharded / multi-device ``jax.Array`` is first gathered onto one device (DLPack describes a single buffer);
* a non-contiguous torch tensor or numpy array is made contiguous (so JAX never sees exotic strides);
* numpy has no native bfloat16/float8: ``ml_dtypes`` arrays are re-viewed bit-for-bit, not converted;
* 64-bit values entering JAX with ``jax_enable_x64`` off are canonicalised by JAX to 32 bits (as ``jnp.asarray``).

Buffers shared with JAX are immutable from JAX's point of view: do not write in place into a tensor returned by
:func:`to_torch` unless you passed ``copy=True``.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

__all__ = [
    "SUPPORTED_DTYPES",
    "UnsupportedDtypeError",
    "jax_dtype_of",
    "to_jax",
    "to_numpy",
    "to_torch",
    "torch_dtype_of",
    "tree_to_jax",
    "tree_to_torch",
]


class UnsupportedDtypeError(TypeError):
    """Raised for dtypes that have no faithful counterpart in the other framework."""


def _torch_dtype(name: str) -> torch.dtype | None:
    return getattr(torch, name, None)


# numpy/JAX dtype name -> torch dtype (names are the canonical numpy/ml_dtypes ones).
_BRIDGED = (
    "bool uint8 int8 int16 int32 int64 uint16 uint32 uint64 float16 bfloat16 float32 float64 complex64 complex128"
    " float8_e4m3fn float8_e5m2"
).split()
_NAME_TO_TORCH: dict[str, torch.dtype] = {n: _torch_dtype(n) for n in _BRIDGED if _torch_dtype(n) is not None}
_TORCH_TO_NAME: dict[torch.dtype, str] = {dt: name for name, dt in _NAME_TO_TORCH.items()}
SUPPORTED_DTYPES: tuple[str, ...] = tuple(_NAME_TO_TORCH)

# numpy cannot hold these natively; ml_dtypes arrays are reinterpreted through an integer view of equal width.
_BIT_VIEW = {"bfloat16": np.uint16, "float8_e4m3fn": np.uint8, "float8_e5m2": np.uint8}


def _unsupported(what: Any) -> UnsupportedDtypeError:
    return UnsupportedDtypeError(
        f"dtype {what} cannot cross the JAX/PyTorch bridge; supported dtypes: {', '.join(SUPPORTED_DTYPES)}"
    )


def torch_dtype_of(dtype: Any) -> torch.dtype:
    """The torch dtype for a numpy/JAX dtype (or dtype name); :class:`UnsupportedDtypeError` otherwise."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _TORCH_TO_NAME:
            raise _unsupported(dtype)
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError as e:
        raise _unsupported(dtype) from e
    if name not in _NAME_TO_TORCH:
        raise _unsupported(name)
    return _NAME_TO_TORCH[name]


def jax_dtype_of(dtype: torch.dtype) -> np.dtype:
    """The numpy/JAX dtype for a torch dtype; :class:`UnsupportedDtypeError` otherwise."""
    if dtype not in _TORCH_TO_NAME:
        raise _unsupported(dtype)
    return jnp.dtype(_TORCH_TO_NAME[dtype])


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, torch.Tensor))


def _single_buffer(x: jax.Array) -> jax.Array:
    """DLPack needs one device buffer: replicated arrays give a shard (no copy), sharded ones are gathered."""
    devices = x.sharding.device_set
    if len(devices) == 1:
        return x
    if not x.is_fully_addressable:
        raise ValueError("a jax.Array spanning several processes cannot be bridged; gather it first")
    if x.sharding.is_fully_replicated:
        return x.addressable_shards[0].data
    return jax.device_put(x, sorted(devices, key=lambda d: d.id)[0])


def _numpy_to_torch(x: np.ndarray) -> torch.Tensor:
    name = x.dtype.name
    torch_dtype = torch_dtype_of(x.dtype)
    x = np.require(x, requirements="C")  # copies only when not C-contiguous (keeps 0-d)
    with warnings.catch_warnings():  # read-only arrays (e.g. views of jax buffers): sharing is intended
        warnings.filterwarnings("ignore", message=".*not writable.*")
        if name in _BIT_VIEW:
            return torch.from_numpy(x.view(_BIT_VIEW[name])).view(torch_dtype)
        return torch.from_numpy(x)


def to_torch(x: Any, device: str | torch.device | None = None, copy: bool = False) -> torch.Tensor:
    """A ``jax.Array`` / numpy array / tensor as a torch tensor, sharing memory when DLPack allows.

    ``device=None`` keeps the data where it is (a JAX GPU array becomes a CUDA tensor); otherwise the result is moved
    to ``device`` (a no-op when it is already there). ``copy=True`` returns storage the caller may write into.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
        torch_dtype_of(t.dtype)
    elif isinstance(x, jax.core.Tracer):
        raise TypeError("to_torch got a traced value (inside jit/vmap); call the heads outside jit")
    elif isinstance(x, jax.Array):
        torch_dtype_of(x.dtype)
        t = torch.from_dlpack(_single_buffer(x))
    elif isinstance(x, np.ndarray):
        t = _numpy_to_torch(x)
    elif isinstance(x, (bool, int, float, complex, np.generic)):
        t = _numpy_to_torch(np.asarray(x))
    else:
        raise TypeError(f"to_torch expects a jax.Array, numpy array or torch.Tensor, got {type(x).__name__}")
    shared = t
    if device is not None:
        t = t.to(device)
    if copy and t.data_ptr() == shared.data_ptr():  # still the caller's / JAX's buffer
        t = t.clone()
    return t


def _torch_for_dlpack(t: torch.Tensor) -> torch.Tensor:
    """DLPack refuses tensors with grad, lazy conj/neg bits; JAX is only handed dense row-major buffers."""
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t.contiguous()


def _jax_has_platform(platform: str) -> bool:
    try:
        return len(jax.devices(platform)) > 0
    except RuntimeError:
        return False


def to_jax(t: Any, device: jax.Device | jax.sharding.Sharding | None = None) -> jax.Array:
    """A torch tensor / numpy array / ``jax.Array`` as a ``jax.Array``, zero-copy through DLPack when possible.

    A CUDA tensor stays on its GPU when JAX has one; if JAX runs CPU-only it is copied to host first. ``device``
    (a ``jax.Device`` or sharding) places the result explicitly.
    """
    if isinstance(t, jax.Array):
        out = t
    elif isinstance(t, torch.Tensor):
        jax_dtype_of(t.dtype)
        t = _torch_for_dlpack(t)
        if t.device.type == "cuda" and not _jax_has_platform("gpu"):
            t = t.cpu()
        elif t.device.type not in ("cpu", "cuda"):
            t = t.cpu()
        out = jax.dlpack.from_dlpack(t)
    elif isinstance(t, np.ndarray):
        torch_dtype_of(t.dtype)
        out = jnp.asarray(np.require(t, requirements="C"))
    elif isinstance(t, (bool, int, float, complex, np.generic)):
        out = jnp.asarray(t)
    else:
        raise TypeError(f"to_jax expects a torch.Tensor, numpy array or jax.Array, got {type(t).__name__}")
    if device is not None:
        out = jax.device_put(out, device)
    return out


def to_numpy(x: Any) -> np.ndarray:
    """Host numpy view/copy of a tensor or ``jax.Array`` (bfloat16 stays bfloat16 through ``ml_dtypes``)."""
    if isinstance(x, torch.Tensor):
        t = _torch_for_dlpack(x).cpu()
        name = _TORCH_TO_NAME.get(t.dtype)
        if name is None:
            raise _unsupported(t.dtype)
        if name in _BIT_VIEW:
            bits = {np.uint16: torch.uint16, np.uint8: torch.uint8}[_BIT_VIEW[name]]
            return t.view(bits).numpy().view(jnp.dtype(name))
        return t.numpy()
    return np.asarray(x)


def tree_to_torch(tree: Any, device: str | torch.device | None = None, copy: bool = False) -> Any:
    """:func:`to_torch` on every array leaf of a pytree (dicts/lists/tuples); other leaves pass through."""
    return jax.tree_util.tree_map(lambda v: to_torch(v, device, copy) if _is_array(v) else v, tree)


def tree_to_jax(tree: Any, device: jax.Device | jax.sharding.Sharding | None = None) -> Any:
    """:func:`to_jax` on every array leaf of a (torch-tensor) pytree; other leaves pass through."""
    return jax.tree_util.tree_map(lambda v: to_jax(v, device) if _is_array(v) else v, tree)
