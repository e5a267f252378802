"""Evaluation entry point for a finished run.

``python eval.py --config configs/tiny.py`` (the same config the run was trained with): Spider runs report how
often greedy answers to held-out TMM questions follow the template; LM-only runs (``configs/tiny_lm.py``) report
held-out loss, perplexity and a sample.

``python eval.py --config configs/tiny.py --task coco_caption --data_dir data/samples/coco --checkpoint RUN_DIR
[--limit N] [--out DIR]`` runs one of the paper's benchmark tasks (``--task list`` shows them all): resumable
predictions, results.json and a results.md table next to the paper's numbers (``spider_jax/eval_report.py``).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Experiment config (ml_collections file).")


def main(argv):
    del argv
    import jax

    cfg = _CONFIG.value
    if cfg.get("cpu_devices"):
        jax.config.update("jax_num_cpu_devices", int(cfg.cpu_devices))
    if cfg.get("job", "lm") == "spider":
        from spider_jax import spider_train

        summary = spider_train.evaluate(cfg)
    else:
        from spider_jax import lm_finetune

        summary = lm_finetune.evaluate(cfg)
    print(json.dumps(summary, indent=2, default=str))


def _wants_task(argv: list[str]) -> bool:
    return any(a == "--task" or a.startswith("--task=") for a in argv[1:])


if __name__ == "__main__":
    if _wants_task(sys.argv):  # the benchmark tasks have their own flags; without --task: today's check
        from spider_jax import eval_report

        sys.exit(eval_report.main(sys.argv))
    app.run(main)
