"""PyTorch state dicts <-> our nested Flax parameter dicts, checked against a model's abstract parameter tree.

Why shared: the diffusers converters (UNet, VAE: ``diffusers_models``; UNet3D: ``unet3d``) and the HiFi-GAN vocoder
one (``vocoder``) derive the expected tensors from the Flax tree — ``expected = {torch name: (flax path, torch
shape)}`` — and then do the same things: refuse a checkpoint with missing or unexpected names (naming them), check
every shape, change layouts one tensor at a time, cast, and nest the result by Flax path. What differs per model is
the name map and the layout functions, passed in here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from spider_jax.convert.folders import CheckpointMismatchError

Path = tuple[str, ...]
Expected = Mapping[str, tuple[Path, tuple[int, ...]]]
Layout = Callable[[np.ndarray, Path], np.ndarray]


def flat_params(tree: Any) -> Iterator[tuple[Path, Any]]:
    """``(path, leaf)`` for every leaf of a (possibly boxed / abstract) parameter tree; path parts are strings."""
    for keys, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(tree))[0]:
        yield tuple(str(getattr(k, "key", k)) for k in keys), leaf


def check_names(expected: Iterable[str], present: Iterable[str], what: str) -> None:
    """Raises :class:`CheckpointMismatchError` ``"{what} (missing N: [...]; unexpected M: [...])"`` unless the
    two name sets are equal (the first 8 of each kind are listed)."""
    expected, present = set(expected), set(present)
    missing = sorted(expected - present)
    unexpected = sorted(present - expected)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{what} (missing {len(missing)}: {missing[:8]}; unexpected {len(unexpected)}: {unexpected[:8]})"
        )


def set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    """``tree[p0][p1]...[pn] = value``, creating the intermediate dicts."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def get_path(tree: Mapping, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def cast(arr: np.ndarray, dtype: Any = None) -> np.ndarray:
    """A contiguous host copy/view of ``arr``, cast to ``dtype`` when given."""
    return np.asarray(arr.astype(dtype) if dtype is not None else arr, order="C")  # keeps 0-d tensors 0-d


def tensors_to_params(
    state: Mapping[str, np.ndarray],
    expected: Expected,
    from_torch: Layout,
    *,
    dtype: Any = None,
    source: str = "state dict",
    what: str = "the config",
    stored_names: Mapping[str, str] | None = None,
    adapt: Callable[[np.ndarray, tuple[int, ...]], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Checkpoint tensors -> our nested params dict. Every name in ``expected`` must be in ``state`` and nothing
    else; each tensor must have the expected torch shape, then ``from_torch(arr, flax_path)`` gives the Flax layout.

    ``stored_names`` maps an expected name to the checkpoint's own where it differs (old spellings); ``adapt(arr,
    torch_shape)`` may reshape a stored tensor before the shape check (e.g. 1x1-conv weights of old checkpoints).
    Errors read ``"{source}: tensors do not match {what} ..."`` / ``"{source}: tensor 'x' has shape ..., {what}
    expects ..."``.
    """
    stored_names = stored_names or {}
    renamed = {old: new for new, old in stored_names.items()}
    check_names(expected, (renamed.get(n, n) for n in state), f"{source}: tensors do not match {what}")
    params: dict[str, Any] = {}
    for name, (path, shape) in expected.items():
        stored = stored_names.get(name, name)
        arr = np.asarray(state[stored])
        if adapt is not None:
            arr = adapt(arr, shape)
        if tuple(arr.shape) != shape:
            raise CheckpointMismatchError(
                f"{source}: tensor {stored!r} has shape {tuple(arr.shape)}, {what} expects {shape}"
            )
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = cast(from_torch(arr, path), dtype)
    return params


def params_to_tensors(
    params: Mapping[str, Any],
    expected: Expected,
    torch_name: Callable[[Path], str],
    to_torch: Layout,
    *,
    dtype: Any = None,
    what: str = "parameter",
) -> dict[str, np.ndarray]:
    """Inverse of :func:`tensors_to_params`: host numpy tensors in torch layouts, named ``torch_name(flax_path)``;
    the tree's names and shapes are checked against ``expected`` (errors start with ``what``)."""
    got = {torch_name(path): np.asarray(jax.device_get(x)) for path, x in flat_params(params)}
    check_names(expected, got, f"{what} tree does not match the config")
    state = {}
    for name, (path, shape) in expected.items():
        arr = to_torch(got[name], path)
        if tuple(arr.shape) != shape:
            raise CheckpointMismatchError(
                f"{what} {'/'.join(path)} has torch shape {tuple(arr.shape)}, the config expects {shape}"
            )
        state[name] = cast(arr, dtype)
    return state
