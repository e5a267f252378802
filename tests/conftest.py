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
