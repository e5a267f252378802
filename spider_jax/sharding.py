"""Device mesh ``(data, fsdp, tensor)`` and the one table that maps logical axis names onto it.

Models annotate parameters (``nn.with_logical_partitioning``) and activations (:func:`constrain`)
with logical names only; this module is the single place that decides where those names live on the mesh.
A dimension that its mesh axes do not divide is replicated instead of failing (tiny configs, odd vocabularies),
so any config runs on any mesh; the choice is deterministic, so every host computes the same layout.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis (or tuple of axes, or None = replicated)
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    ("lora_rank", None),
    ("experts", None),
    ("queries", None),
    ("encoder_embed", None),  # ImageBind width (1024) feeding the encoder projectors
    ("ctrl_embed", None),  # Decoders-Controller width (small: replicate, shard its mlp/heads instead)
    ("decoder_embed", None),  # decoder text-encoder width (768 / 1024 / 512)
    ("positions", None),  # learned position tables (CLIP, RoBERTa, ViT)
    # frozen decoders (UNet, VAE, vocoder): small enough to replicate; batch is what gets sharded
    ("conv_kernel", None),  # spatial/temporal kernel dims of convolutions
    ("channels", None),  # conv input channels / feature width of diffusion blocks
    ("channels_out", None),
    # activations
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_vocab", "tensor"),
    ("batch", BATCH_AXES),
    ("length", None),
)


def create_mesh(shape: Sequence[int] | Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """Mesh over ``devices`` (default: all) with axes ``(data, fsdp, tensor)``; one size may be -1 (fill)."""
    if isinstance(shape, Mapping):
        shape = [shape.get(axis, 1) for axis in MESH_AXES]
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
    devices = list(jax.devices() if devices is None else devices)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"mesh shape {shape}: {len(devices)} devices are not divisible by {known}")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh shape {shape} (data, fsdp, tensor) needs {math.prod(shape)} devices, {len(devices)} available; "
            "set the config's mesh sizes (e.g. --config.mesh.data=-1 --config.mesh.fsdp=1 --config.mesh.tensor=1)"
        )
    try:  # topology-aware placement on TPU/GPU; plain reshape where the platform has no topology
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        return mesh.shape[axes]
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_mesh_spec(
    logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES
) -> PartitionSpec:
    """PartitionSpec for one array; mesh axes are used at most once and only where they divide the dim."""
    table = dict(rules)
    used: set[str] = set()
    out: list[Any] = []
    for name, dim in zip(logical, shape, strict=True):
        axes = table.get(name) if name is not None else None
        if axes is None:
            out.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        # keep the longest prefix of the axes that divides the dimension
        while axes and dim % _axis_size(mesh, axes):
            axes = axes[:-1]
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def shardings_for(boxed_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> Any:
    """NamedShardings for a tree of ``nn.LogicallyPartitioned`` (e.g. ``jax.eval_shape(model.init, ...)``).

    Leaves without logical names (scalars, caches) are replicated.
    """

    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            value = leaf.value
            return NamedSharding(mesh, logical_to_mesh_spec(leaf.names, value.shape, mesh, rules))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dimension split over data and fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def place(tree: Any, shardings: Any) -> Any:
    """Puts host arrays onto the mesh. Multi-host safe: each process supplies only its addressable shards,
    reading them from its own full host copy (every host loads the same checkpoint)."""

    def one(x, sharding):
        if isinstance(x, jax.Array) and getattr(x, "sharding", None) == sharding:
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree_util.tree_map(one, tree, shardings)


def place_local_batch(batch: Any, shardings: Any) -> Any:
    """Puts each process's *own* rows of the global batch onto the mesh (the input pipeline gives every host a
    disjoint slice); single-process it is ``device_put``. The global batch is the processes' rows concatenated
    in process order — the mean losses do not depend on the row order."""
    if jax.process_count() == 1:
        return jax.device_put(batch, shardings)
    return jax.tree_util.tree_map(
        lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x)), batch, shardings
    )


_ACTIVE_MESH: contextvars.ContextVar = contextvars.ContextVar("spider_jax_mesh", default=None)


@contextlib.contextmanager
def activation_mesh(mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES):
    """While tracing under this context, :func:`constrain` pins activations onto ``mesh``; outside it is a no-op."""
    token = _ACTIVE_MESH.set((mesh, tuple(rules)))
    try:
        yield mesh
    finally:
        _ACTIVE_MESH.reset(token)


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation by logical names (same divisibility fallback as parameters)."""
    active = _ACTIVE_MESH.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_mesh_spec(logical, x.shape, mesh, rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def describe(shardings: Any) -> dict[str, str]:
    """``{'model/layers_0/self_attn/q_proj/kernel': "PartitionSpec('fsdp', 'tensor')"}`` for logs and tests."""
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): str(s.spec) for path, s in flat}
