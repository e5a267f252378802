"""Two local processes × 4 CPU devices (gloo collectives) train exactly like one process with 8 devices."""

import json
import os
import socket
import subprocess
import sys
import time

import flax.linen as nn
import jax
import pytest
from spider_fixtures import random_batch, tiny_spider_config

from spider_jax import sharding as sharding_lib
from spider_jax.models.spider import init_spider
from spider_jax.spider_trainer import build_sharded_spider_step, init_stage_state
from spider_jax.trainer import make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINABLE = ("projectors", "lora", "controller", "new_tokens")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _single_process_metrics(steps: int) -> list[dict]:
    cfg = tiny_spider_config()
    boxed = init_spider(cfg, jax.random.PRNGKey(0))
    optimizer = make_optimizer(1e-2)
    batch = random_batch(batch=8)
    mesh = sharding_lib.create_mesh((2, 2, 2))
    step, shardings = build_sharded_spider_step(cfg, optimizer, mesh, boxed, TRAINABLE, batch)
    state, frozen = init_stage_state(nn.unbox(boxed), TRAINABLE, optimizer)
    state = sharding_lib.place(state, shardings["state"])
    frozen = sharding_lib.place(frozen, shardings["frozen"])
    out = []
    for _ in range(steps):
        state, m = step(state, frozen, sharding_lib.place_local_batch(batch, shardings["batch"]), jax.random.PRNGKey(0))
        out.append({k: float(v) for k, v in jax.device_get(m).items()})
    return out


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    steps, port, out = 3, _free_port(), str(tmp_path / "metrics.json")
    env = dict(os.environ)
    flags = [f for f in env.pop("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    if flags:  # each worker sets its own device count; other XLA flags pass through
        env["XLA_FLAGS"] = " ".join(flags)
    env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]  # files, not pipes: a chatty worker cannot block
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(ROOT, "tests", "multihost_worker.py"),
                f"--process_id={i}",
                "--num_processes=2",
                f"--port={port}",
                f"--steps={steps}",
                f"--out={out}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(logs[i], "w"),
        )  # fmt: skip
        for i in range(2)
    ]
    deadline = time.monotonic() + 400  # one deadline for both workers
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i, proc in enumerate(procs):
        if proc.returncode != 0:
            pytest.fail(f"worker {i} failed (rc {proc.returncode}):\n{logs[i].read_text()[-3000:]}")
    results = [json.load(open(f"{out}.{i}")) for i in range(2)]
    assert all(r["devices"] == 8 and r["processes"] == 2 for r in results)
    want = _single_process_metrics(steps)
    for result in results:
        for step, (got, ref) in enumerate(zip(result["metrics"], want, strict=True)):
            for key in ("loss", "lm_loss", "alignment_loss", "reconstruction_loss"):
                assert abs(got[key] - ref[key]) <= 1e-5, (step, key, got[key], ref[key])


def test_initialize_is_a_no_op_for_one_process_and_checks_arguments(monkeypatch):
    from spider_jax import distributed

    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False
    with pytest.raises(ValueError, match="process's id"):
        distributed.initialize("localhost:1", 2, None)
    with pytest.raises(ValueError, match=r"process_id 2 must be in \[0, 2\)"):
        distributed.initialize("localhost:1", 2, 2)
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="SPIDER_NUM_PROCESSES='two'"):
        distributed.initialize()
    assert distributed.per_process_batch_size(8) == 8
