"""Evaluation entry point: held-out loss, perplexity and a greedy sample from the latest checkpoint.

``python eval.py --config configs/tiny.py`` (the same config the run was trained with).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Experiment config (ml_collections file).")


def main(argv):
    del argv
    from spider_jax import lm_finetune

    print(json.dumps(lm_finetune.evaluate(_CONFIG.value), indent=2, default=str))


if __name__ == "__main__":
    app.run(main)
