"""The Spider training job: store-backed batches, and kill -9 / restart reproducing the uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from spider_jax import embedding_store, spider_inputs
from spider_jax import input_pipeline as ip
from spider_jax.models.controller import OutputSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_attach_embeddings_routes_groups_to_their_modality(tmp_path):
    te_image = embedding_store.EmbeddingStore(
        np.array([11, 12]), np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    )
    media = embedding_store.EmbeddingStore(np.array([21, 22, 23]), np.eye(3, 5, dtype=np.float32))
    spec = spider_inputs.SpiderInputSpec({"IMAGE": OutputSpec(1, 4, 3), "AUDIO": OutputSpec(1, 2, 1)}, 2, 5)
    image, audio, box = ip.modality_code("IMAGE"), ip.modality_code("AUDIO"), ip.modality_code("BOX")
    example = {
        "input_ids": np.zeros(8, np.int32),
        "input_key": np.array([22, 0], np.int64),
        "input_positions": np.array([1, -1], np.int32),
        "input_modality": np.array([image, 0], np.int32),
        "mprompt_positions": np.array([3, 4, 5, 6, -1], np.int32),
        "mprompt_modality": np.array([image, box, audio, image, 0], np.int32),
        "tprompt_key": np.array([12, 99, 77, 11, 0], np.int64),
        "target_key": np.array([21, 0, 23, 0, 0], np.int64),
    }
    out = spider_inputs.attach_embeddings(example, spec, {"IMAGE": te_image}, media)
    np.testing.assert_array_equal(out["input_embeddings"], [np.eye(3, 5)[1], np.zeros(5)])
    np.testing.assert_array_equal(out["image_positions"], [3, 6])
    np.testing.assert_array_equal(out["image_te"], te_image.values[[1, 0]])
    np.testing.assert_array_equal(out["image_te_found"], [True, True])
    np.testing.assert_array_equal(out["image_target"][0], np.eye(3, 5)[0])
    np.testing.assert_array_equal(out["image_target_found"], [True, False])
    np.testing.assert_array_equal(out["audio_positions"], [5, -1])  # the BOX group has no controller output
    assert not out["audio_te_found"].any()  # no audio text store configured: the alignment term is off
    np.testing.assert_array_equal(out["audio_target_found"], [True, False])
    assert "tprompt_key" not in out and int(out["dropped_groups"]) == 0
    with pytest.raises(embedding_store.MissingEmbeddingError, match="missing"):
        spider_inputs.attach_embeddings(dict(example, target_key=np.array([24, 0, 0, 0, 0])), spec, {}, media)


def _train_cmd(out_dir, base_dir, metrics):
    return [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        "--config=configs/tiny.py",
        f"--config.output_dir={out_dir}",
        f"--config.base_model={base_dir}",
        "--config.run_stages=stage1",
        "--config.stages.stage1.steps=8",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=3",
        f"--config.train.metrics_file={metrics}",
        "--config.data.batch_size=8",
        "--config.data.max_length=128",
        "--config.eval.questions=2",
        "--config.eval.max_new_tokens=4",
    ]


def _metrics(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {r["step"]: r for r in map(json.loads, f) if r}


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits(tmp_path, tiny_base):
    env = dict(os.environ, PYTHONPATH=ROOT)
    metrics = tmp_path / "m.jsonl"
    proc = subprocess.Popen(_train_cmd(tmp_path / "run", tiny_base, metrics), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and max(_metrics(metrics), default=0) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "SIGTERM: checkpoint saved at step" in stderr, stderr[-2000:]
    step = int(stderr.split("checkpoint saved at step ")[1].split()[0])
    assert step < 8 and (tmp_path / "run" / "stage1" / "checkpoints" / str(step)).is_dir()


@pytest.mark.slow
def test_kill_9_and_restart_reproduces_the_uninterrupted_losses(tmp_path, tiny_base):
    env = dict(os.environ, PYTHONPATH=ROOT)
    base_dir = tiny_base

    reference = tmp_path / "reference.jsonl"
    done = subprocess.run(_train_cmd(tmp_path / "a", base_dir, reference), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    killed_metrics = tmp_path / "killed.jsonl"
    run_b = tmp_path / "b"
    proc = subprocess.Popen(_train_cmd(run_b, base_dir, killed_metrics), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    checkpoint = run_b / "stage1" / "checkpoints" / "3"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.is_dir() and max(_metrics(killed_metrics), default=0) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(_metrics(killed_metrics))
    assert killed_at < 8

    resumed_metrics = tmp_path / "resumed.jsonl"
    done = subprocess.run(_train_cmd(run_b, base_dir, resumed_metrics), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    want, got = _metrics(reference), _metrics(resumed_metrics)
    assert min(got) >= 4 and max(got) == 8  # resumed from a checkpoint (3 or 6), ran to the end
    for step, row in got.items():
        for key in ("loss", "lm_loss", "alignment_loss", "reconstruction_loss", "grad_norm"):
            assert row[key] == want[step][key], (step, key, row[key], want[step][key])  # bitwise on CPU
