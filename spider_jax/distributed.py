"""Multi-host set-up: ``jax.distributed`` from flags or environment, and per-process batch slicing.

On TPU pods and SLURM/Kubernetes GPU clusters JAX finds the coordinator itself (call :func:`initialize` with no
arguments). Elsewhere — e.g. several CPU processes on one machine, which is how the tests simulate multi-host —
pass the coordinator, the process count and this process's id, or set ``SPIDER_COORDINATOR``,
``SPIDER_NUM_PROCESSES`` and ``SPIDER_PROCESS_ID``. CPU processes talk through gloo collectives.
Must run before anything touches a JAX backend.
"""

from __future__ import annotations

import os

import jax

ENV_COORDINATOR = "SPIDER_COORDINATOR"
ENV_NUM_PROCESSES = "SPIDER_NUM_PROCESSES"
ENV_PROCESS_ID = "SPIDER_PROCESS_ID"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_count: int | None = None,
    auto_detect: bool = False,
) -> bool:
    """Joins the job's processes; returns whether ``jax.distributed`` was initialised.

    ``local_device_count`` simulates that many CPU devices in this process. ``auto_detect`` lets JAX find the
    cluster (TPU pods, SLURM, ...) when no coordinator is given.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if local_device_count:
        jax.config.update("jax_num_cpu_devices", int(local_device_count))
    if coordinator_address is None and (num_processes or 1) == 1:
        if auto_detect:
            jax.distributed.initialize()
            return True
        return False
    if coordinator_address is None or num_processes is None or process_id is None:
        raise ValueError(
            "multi-process run needs the coordinator address, the number of processes and this process's id "
            f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r}); pass them or set "
            f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}"
        )
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id {process_id} must be in [0, {num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only used by the CPU backend
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True


def per_process_batch_size(global_batch: int) -> int:
    """Rows each process loads; the global batch must divide evenly."""
    count = jax.process_count()
    if global_batch % count:
        raise ValueError(f"global batch {global_batch} does not divide over {count} processes")
    return global_batch // count
