"""One process of the simulated 2-host run (started by test_multihost.py; not a test itself).

Joins the job (gloo), builds the tiny Spider identically on every process, loads only this process's rows of the
global batch (as each host's input pipeline would), runs the sharded stage-1 step on the global (2, 2, 2) mesh
and writes the metrics of every step as JSON.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from spider_jax import distributed  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--process_id", type=int, required=True)
    p.add_argument("--num_processes", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--local_devices", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    distributed.initialize(f"localhost:{args.port}", args.num_processes, args.process_id, args.local_devices)

    import flax.linen as nn
    import jax
    from spider_fixtures import random_batch, tiny_spider_config

    from spider_jax import sharding as sharding_lib
    from spider_jax.models.spider import init_spider
    from spider_jax.spider_trainer import build_sharded_spider_step, init_stage_state
    from spider_jax.trainer import make_optimizer

    jax.config.update("jax_default_matmul_precision", "highest")
    cfg = tiny_spider_config()
    boxed = init_spider(cfg, jax.random.PRNGKey(0))
    trainable = ("projectors", "lora", "controller", "new_tokens")
    optimizer = make_optimizer(1e-2)
    global_batch = random_batch(batch=8)
    rows = distributed.per_process_batch_size(8)
    mesh = sharding_lib.create_mesh((2, 2, 2))
    step, shardings = build_sharded_spider_step(cfg, optimizer, mesh, boxed, trainable, global_batch)
    state, frozen = init_stage_state(nn.unbox(boxed), trainable, optimizer)
    state = sharding_lib.place(state, shardings["state"])
    frozen = sharding_lib.place(frozen, shardings["frozen"])
    start = jax.process_index() * rows
    local = {k: v[start : start + rows] for k, v in global_batch.items()}
    metrics = []
    for _ in range(args.steps):
        batch = sharding_lib.place_local_batch(local, shardings["batch"])
        state, m = step(state, frozen, batch, jax.random.PRNGKey(0))
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    with open(f"{args.out}.{jax.process_index()}", "w") as f:
        json.dump({"devices": jax.device_count(), "processes": jax.process_count(), "metrics": metrics}, f)


if __name__ == "__main__":
    main()
