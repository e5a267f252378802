"""Train entry point: ``python train.py --config configs/tiny.py [--config.path=value ...]``."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Experiment config (ml_collections file).")
_EVAL_ONLY = flags.DEFINE_bool("eval_only", False, "Skip training; evaluate the latest checkpoint.")
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "AOT-compile the first stage's train step for --topology and print per-chip memory."
)
_TOPOLOGY = flags.DEFINE_string("topology", "v5p:4x4x4", "TPU topology for --compile_only (needs libtpu).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's id.")
_AUTO_DETECT = flags.DEFINE_bool("distributed", False, "Multi-host on TPU pods / SLURM: let JAX find the cluster.")


def main(argv):
    del argv
    cfg = _CONFIG.value
    if (cfg.get("cpu_devices") or _COMPILE_ONLY.value) and "JAX_PLATFORMS" not in os.environ:
        os.environ["JAX_PLATFORMS"] = "cpu"  # simulated CPU devices; libtpu (if installed) only compiles
    from spider_jax import distributed

    # Before any backend use: join the other processes (if any); simulated CPU devices only affect the CPU backend.
    distributed.initialize(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, cfg.get("cpu_devices") or None, _AUTO_DETECT.value
    )
    logging.set_verbosity(logging.WARNING)  # our own progress lines; orbax/clu INFO chatter off
    if _COMPILE_ONLY.value:
        from spider_jax import spider_train

        report = spider_train.compile_for_topology(cfg, _TOPOLOGY.value)
        print(report.pop("table"))
        print(json.dumps(report, indent=2, default=str))
        return
    if cfg.get("job", "lm") == "spider":
        from spider_jax import spider_train

        summary = spider_train.evaluate(cfg) if _EVAL_ONLY.value else spider_train.run(cfg)
    else:
        from spider_jax import lm_finetune

        summary = lm_finetune.evaluate(cfg) if _EVAL_ONLY.value else lm_finetune.run(cfg)
    print("\n== summary ==")
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    app.run(main)
