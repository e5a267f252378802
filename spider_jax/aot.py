"""Ahead-of-time compilation for a TPU pod topology on any host (a CPU-only laptop included).

``jax[tpu]`` ships ``libtpu``, whose compiler can build executables for a *described* topology
(``jax.experimental.topologies``) without any TPU attached. That is enough to check that a sharded step compiles
for, say, ``v5p:4x4x4`` (64 chips) and to read XLA's per-chip memory estimate before renting the pod::

    mesh = topology_mesh("v5p:4x4x4", {"data": -1, "fsdp": 16, "tensor": 1})
    result = compile_lm_step_for_topology(llama_cfg, lora_cfg, 256, 1024, "v5p:4x4x4", {"fsdp": 16, "data": -1})
    print(format_report(result.report))

On a host without TPU chips ``import jax`` sets ``TPU_SKIP_MDS_QUERY=1`` itself, so libtpu does not query the GCE
metadata server; ``JAX_PLATFORMS=cpu`` keeps the default backend on the CPU (the topology still comes from libtpu).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from spider_jax import sharding as sharding_lib
from spider_jax import trainer as trainer_lib

GIB = 1024**3
# HBM per device (``device.device_kind``) used for the "% of HBM" column.
HBM_BYTES = {"TPU v4": 32 * GIB, "TPU v5 lite": 16 * GIB, "TPU v5": 95 * GIB, "TPU v6 lite": 32 * GIB}
# What libtpu accepts: "<chip>:<bounds>" with an optional twist suffix, e.g. "v5p:4x4x4", "v5e:4x4", "v6e:2x2".
_TOPOLOGY_RE = re.compile(r"^([a-zA-Z0-9_ ]+)[=_:]([0-9]+(?:x[0-9]+){1,2})(_twisted|_untwisted)?$")


class LibTpuMissingError(RuntimeError):
    """libtpu (the TPU compiler) is not installed, so no TPU topology can be described."""


def _libtpu_available() -> bool:
    path = os.environ.get("TPU_LIBRARY_PATH")
    return bool(path and os.path.isfile(path)) or importlib.util.find_spec("libtpu") is not None


def _missing_libtpu_message() -> str:
    pin = " (libtpu==0.0.42.1)" if jax.__version__ == "0.10.2" else ""
    return (
        "compiling for a TPU topology needs libtpu, which is not installed in this environment: "
        f"pip install 'jax[tpu]=={jax.__version__}'{pin}"
    )


def topology_devices(topology: str, **kwargs) -> list[Any]:
    """Compile-only devices of a TPU topology such as ``"v5p:4x4x4"``; kwargs go to libtpu (e.g. ``num_slices``)."""
    if not _TOPOLOGY_RE.match(topology):
        raise ValueError(
            f"bad TPU topology {topology!r}: expected '<chip>:<bounds>' such as 'v5p:4x4x4', 'v5e:4x4' or 'v6e:2x2'"
        )
    if not _libtpu_available():
        raise LibTpuMissingError(_missing_libtpu_message())
    # libtpu takes a machine-wide lock (/tmp/libtpu_lockfile) meant for processes driving real chips; compiling
    # for a described topology drives none, so let several compile-only processes (tests, a second shell) coexist.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs)
    except RuntimeError as e:  # JaxRuntimeError (INVALID_ARGUMENT from libtpu) is a RuntimeError
        if "TPU support not installed" in str(e):
            raise LibTpuMissingError(_missing_libtpu_message()) from e
        raise ValueError(f"bad TPU topology {topology!r}: {e}") from e
    return list(desc.devices)


def _resolve_shape(mesh_shape: Mapping[str, int] | Sequence[int], axis_names: Sequence[str], n: int) -> list[int]:
    if isinstance(mesh_shape, Mapping):
        unknown = sorted(set(mesh_shape) - set(axis_names))
        if unknown:
            raise ValueError(f"mesh axes {unknown} are not in {tuple(axis_names)}")
        mesh_shape = [mesh_shape.get(a, 1) for a in axis_names]
    shape = list(mesh_shape)
    if len(shape) != len(axis_names) or shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: need {len(axis_names)} sizes for {tuple(axis_names)}, at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape and n % known == 0:
        shape[shape.index(-1)] = n // known
    if math.prod(shape) != n:
        raise ValueError(f"mesh shape {dict(zip(axis_names, shape, strict=True))} does not fit {n} devices")
    return shape


def topology_mesh(
    topology: str,
    mesh_shape: Mapping[str, int] | Sequence[int],
    axis_names: Sequence[str] = sharding_lib.MESH_AXES,
    **topology_kwargs,
) -> Mesh:
    """Mesh over the chips of ``topology``; one size may be -1 (fill). Missing dict entries are 1."""
    devices = topology_devices(topology, **topology_kwargs)
    axis_names = tuple(axis_names)
    shape = _resolve_shape(mesh_shape, axis_names, len(devices))
    if axis_names == sharding_lib.MESH_AXES:  # the project's mesh: same placement as in training
        return sharding_lib.create_mesh(shape, devices=devices)
    from jax.experimental import mesh_utils

    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, axis_names)


def compile_for_topology(
    fn: Callable, abstract_args: Sequence[Any], in_shardings: Any, out_shardings: Any, donate_argnums=()
) -> Any:
    """``jax.jit(fn, ...)`` lowered on ShapeDtypeStructs placed by ``in_shardings`` and compiled by libtpu."""
    placed = [
        jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), arg, sh)
        for arg, sh in zip(abstract_args, in_shardings, strict=True)
    ]
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate_argnums)
    return jitted.lower(*placed).compile()


def memory_report(compiled: Any) -> dict[str, Any]:
    """Per-chip bytes from XLA's buffer assignment (``compiled.memory_analysis()``).

    ``peak_estimate_bytes = arguments + temporaries + outputs - aliased``: arguments stay live for the whole step,
    temporaries are the packed peak of intermediate buffers, outputs are new buffers except those aliased onto
    donated arguments (the train state), which are counted once. The executable itself (generated code) is
    reported separately; ``xla_peak_bytes`` is XLA's own peak where the backend reports one (0 otherwise).
    """
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError("the compiling backend returned no memory analysis for this executable (libtpu does)")
    report = {
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
        "generated_code_bytes": int(stats.generated_code_size_in_bytes),
        "alias_bytes": int(stats.alias_size_in_bytes),
        "xla_peak_bytes": int(getattr(stats, "peak_memory_in_bytes", 0) or 0),
    }
    report["peak_estimate_bytes"] = (
        report["argument_bytes"] + report["temp_bytes"] + report["output_bytes"] - report["alias_bytes"]
    )
    devices = set()
    for s in jax.tree_util.tree_leaves(compiled.input_shardings):
        devices |= set(s.device_set)
    if devices:
        report["device_kind"] = next(iter(devices)).device_kind
        report["num_devices"] = len(devices)
    return report


def format_report(report: Mapping[str, Any], hbm_bytes: int | None = None) -> str:
    """Human-readable per-chip table; the last column is the share of ``hbm_bytes`` (default: by device kind)."""
    hbm = hbm_bytes or HBM_BYTES.get(report.get("device_kind", ""))
    rows = [
        ("arguments", "argument_bytes"),
        ("outputs", "output_bytes"),
        ("temporaries", "temp_bytes"),
        ("aliased (donated)", "alias_bytes"),
        ("generated code", "generated_code_bytes"),
        ("peak estimate", "peak_estimate_bytes"),
        ("XLA peak", "xla_peak_bytes"),
    ]
    head = f"per-chip memory ({report.get('device_kind', '?')}, {report.get('num_devices', '?')} devices"
    lines = [head + (f", HBM {hbm / GIB:.1f} GiB)" if hbm else ")")]
    for label, key in rows:
        value = report.get(key, 0)
        pct = f"  {100 * value / hbm:5.1f}% HBM" if hbm else ""
        lines.append(f"  {label:<18} {_human(value):>12}{pct}")
    return "\n".join(lines)


def _human(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / 2**20:.1f} MiB"


@dataclasses.dataclass
class TopologyCompile:
    compiled: Any
    mesh: Mesh
    shardings: dict[str, Any]
    abstract_args: tuple[Any, ...]  # (state, frozen, batch, rng) as ShapeDtypeStructs carrying their shardings
    report: dict[str, Any]
    lower_seconds: float
    compile_seconds: float


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings a jitted function will be lowered with."""
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def compile_lm_step_for_topology(
    llama_config: Any,
    lora_config: Any,
    batch_size: int,
    seq_len: int,
    topology: str,
    mesh_shape: Mapping[str, int] | Sequence[int],
    optimizer: optax.GradientTransformation | None = None,
) -> TopologyCompile:
    """AOT-compiles ``trainer.build_sharded_lm_step`` for ``topology`` (``batch_size`` is the global batch).

    With ``lora_config`` (or ``llama_config.lora``) only the LoRA tree trains; with neither, every parameter does.
    """
    from spider_jax.models.llama import LlamaForCausalLM
    from spider_jax.models.lora import LORA_COLLECTION

    config = llama_config if lora_config is None else llama_config.replace(lora=lora_config)
    collection = LORA_COLLECTION if config.lora is not None else "params"
    model = LlamaForCausalLM(config)
    optimizer = optimizer or trainer_lib.make_optimizer()
    mesh = topology_mesh(topology, mesh_shape)
    jitted, shardings = trainer_lib.build_sharded_lm_step(model, optimizer, mesh, trainable_collection=collection)

    boxed = trainer_lib.abstract_variables(model)
    trainable = nn.meta.unbox(boxed[collection])
    frozen = nn.meta.unbox(boxed["params"]) if collection == LORA_COLLECTION else {}
    state = jax.eval_shape(lambda t: trainer_lib.init_train_state(t, optimizer), trainable)
    ids = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
    batch = {"input_ids": ids, "attention_mask": jax.ShapeDtypeStruct(ids.shape, jnp.bool_), "labels": ids}
    rng = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    args = (
        abstract_with_shardings(state, shardings["state"]),
        abstract_with_shardings(frozen, shardings["frozen"]),
        abstract_with_shardings(batch, shardings["batch"]),
        abstract_with_shardings(rng, NamedSharding(mesh, PartitionSpec())),
    )
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    report = memory_report(compiled)
    report.update(topology=topology, mesh=dict(mesh.shape), batch_size=batch_size, seq_len=seq_len)
    return TopologyCompile(compiled, mesh, shardings, args, report, t1 - t0, t2 - t1)
