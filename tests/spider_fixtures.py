"""Tiny Spider configs and random batches shared by the Spider tests."""

import numpy as np

from spider_jax.models.controller import ControllerConfig, OutputSpec
from spider_jax.models.llama import LlamaConfig
from spider_jax.models.lora import LoraConfig
from spider_jax.models.spider import SpiderConfig

ENCODER_WIDTH = 24
OUTPUTS = {"IMAGE": OutputSpec(1, 12, 5), "AUDIO": OutputSpec(1, 8, 1)}


def tiny_spider_config(**controller_overrides) -> SpiderConfig:
    llm = LlamaConfig(
        vocab_size=120,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0, targets=("q_proj", "v_proj")),
    )
    controller = dict(
        llm_width=32,
        width=16,
        num_layers=1,
        num_heads=2,
        mlp_dim=32,
        router_hidden=16,
        reconstruction_width=ENCODER_WIDTH,
        outputs=OUTPUTS,
    )
    controller.update(controller_overrides)
    return SpiderConfig(llm, ControllerConfig(**controller), base_vocab_size=100, encoder_width=ENCODER_WIDTH)


def random_batch(batch: int = 4, length: int = 16, groups: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows come in pairs of the same structure (two input slots, one image and one audio group, same label
    count), so halves of the batch are interchangeable micro-batches (the gradient-accumulation test)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 120, (batch, length)).astype(np.int32)
    labels = ids.copy()
    labels[:, : length // 2] = -100
    out = {
        "input_ids": ids,
        "attention_mask": np.ones((batch, length), bool),
        "labels": labels,
        "segment_ids": np.ones((batch, length), np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy(),
        "input_positions": np.tile(np.array([[2, 3]], np.int32), (batch, 1)),
        # rows alternate IMAGE+VIDEO / AUDIO+VIDEO inputs: every projector is used, pairs of rows look alike
        "input_modality": np.tile(np.array([[1, 3], [2, 3]], np.int32), (batch // 2, 1)),
        "input_embeddings": rng.normal(size=(batch, 2, ENCODER_WIDTH)).astype(np.float32),
    }
    for i, (modality, spec) in enumerate(OUTPUTS.items()):
        x = modality.lower()
        positions = np.full((batch, groups), -1, np.int32)
        positions[:, 0] = length - 4 + i
        found = positions >= 0
        out[f"{x}_positions"] = positions
        out[f"{x}_te"] = rng.normal(size=(batch, groups, spec.text_length, spec.width)).astype(np.float32)
        out[f"{x}_te_found"] = found
        out[f"{x}_target"] = rng.normal(size=(batch, groups, ENCODER_WIDTH)).astype(np.float32)
        out[f"{x}_target_found"] = found
    return out
