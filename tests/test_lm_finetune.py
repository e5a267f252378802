"""The demo job end to end: pretrain -> HF export -> reload -> LoRA -> checkpoints; exact resume; CLI."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny_lm as tiny
from spider_jax import lm_finetune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small_config(output_dir):
    cfg = tiny.get_config()
    cfg.output_dir = str(output_dir)
    cfg.data.corpus = os.path.join(ROOT, "data", "tiny_captions.txt")
    cfg.pretrain.steps = 40
    cfg.train.steps = 6
    cfg.train.log_every = 1
    cfg.train.checkpoint_every = 3
    cfg.train.keep_checkpoints = 5
    cfg.train.sample_tokens = 6
    return cfg


@pytest.mark.slow
def test_demo_job_learns_exports_and_resumes_exactly(tmp_path, capsys):
    cfg = _small_config(tmp_path / "a")
    summary = lm_finetune.run(cfg)
    pre = summary["pretrain"]
    assert pre["last_logged_loss"][1] < pre["first_logged_loss"][1] - 1.0  # the base learns
    assert summary["export_max_abs_logit_diff_vs_transformers"] <= 1e-4
    assert os.path.exists(os.path.join(summary["export_dir"], "tokenizer.model"))
    losses_a = _logged(capsys.readouterr().out)

    # simulate a run killed after step 3: same directory contents minus everything after the step-3 checkpoint
    b = tmp_path / "b"
    shutil.copytree(tmp_path / "a", b)
    shutil.rmtree(b / "lora" / "checkpoints" / "6")
    shutil.rmtree(b / "hf_merged")
    summary_b = lm_finetune.run(_small_config(b))
    assert summary_b["lora"]["resumed_from"] == 3
    assert summary_b["pretrain"] == {"reused": str(b / "base_hf")}
    losses_b = _logged(capsys.readouterr().out)
    assert sorted(losses_b) == [4, 5, 6]
    for step in (4, 5, 6):
        assert losses_b[step] == losses_a[step], (step, losses_a[step], losses_b[step])  # bitwise on CPU

    evaluation = lm_finetune.evaluate(_small_config(b))
    assert evaluation["checkpoint_step"] == 6
    np.testing.assert_allclose(evaluation["heldout_loss"], summary["lora"]["heldout_loss"], rtol=1e-6)


def _logged(out: str) -> dict[int, str]:
    """step -> loss string from the '[lora] step N/M  loss X' progress lines (strings: compared bitwise)."""
    losses = {}
    for line in out.splitlines():
        if line.startswith("[lora] step"):
            parts = line.split()
            losses[int(parts[2].split("/")[0])] = parts[4]
    return losses


@pytest.mark.slow
def test_train_and_eval_entry_points(tmp_path):
    common = [
        f"--config.output_dir={tmp_path}",
        "--config.pretrain.steps=5",
        "--config.train.steps=2",
        "--config.train.sample_tokens=3",
        "--config.cpu_devices=4",
        "--config.mesh.data=1",
    ]

    def run(script):
        out = subprocess.run(
            [sys.executable, script, "--config=configs/tiny_lm.py", *common],
            cwd=ROOT,
            env={**os.environ, "XLA_FLAGS": ""},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    stdout = run("train.py")
    assert '"devices": 4' in stdout and "export_max_abs_logit_diff_vs_transformers" in stdout
    assert '"checkpoint_step": 2' in run("eval.py")
