"""Test-wide setup: 8 simulated CPU devices (must be set before jax is imported) and shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def tiny_corpus() -> list[str]:
    from spider_jax.data_text import read_lines

    return read_lines(os.path.join(os.path.dirname(__file__), "..", "data", "tiny_captions.txt"))


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory, tiny_corpus) -> str:
    from spider_jax.tokenizer import train_sentencepiece

    return train_sentencepiece(tiny_corpus, tmp_path_factory.mktemp("sp") / "tiny", vocab_size=300)


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES_DIR = os.path.join(_ROOT, "data", "samples")


def tiny_spider_flags(base: str) -> list[str]:
    """Config flags of the tiny Spider run below (generation and eval tests load it with the same flags)."""
    return [
        "--config=configs/tiny.py", f"--config.base_model={base}", "--config.run_stages=stage1",
        "--config.stages.stage1.steps=2", "--config.data.batch_size=8", "--config.data.max_length=128",
        f"--config.data.samples_dir={SAMPLES_DIR}",
    ]  # fmt: skip


def _run_train(*args: str) -> None:
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, os.path.join(_ROOT, "train.py"), *args],
        cwd=_ROOT, env=dict(os.environ, PYTHONPATH=_ROOT), check=True, capture_output=True, timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> str:
    """A tiny HF LLaMA base (+ tokenizer) made by the LM job, shared by the training / generation / eval tests."""
    base_run = tmp_path_factory.mktemp("base")
    _run_train("--config=configs/tiny_lm.py", f"--config.output_dir={base_run}", "--config.pretrain.steps=5",
               "--config.train.steps=1", "--config.train.export_merged=false")  # fmt: skip
    return str(base_run / "base_hf")


@pytest.fixture(scope="session")
def tiny_spider_run(tmp_path_factory, tiny_base) -> tuple[str, str]:
    """``(run_dir, base)``: the tiny Spider config trained for 2 stage-1 steps — a real checkpoint to load."""
    run = tmp_path_factory.mktemp("spider_run")
    _run_train(*tiny_spider_flags(tiny_base), f"--config.output_dir={run}", "--config.eval.questions=1",
               "--config.eval.max_new_tokens=2")  # fmt: skip
    return str(run), tiny_base
