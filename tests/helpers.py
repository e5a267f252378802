"""Small builders shared by tests: tiny random HF LLaMA models saved with save_pretrained."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch
import transformers

from spider_jax.models.llama import LlamaConfig

TINY_HF = dict(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def make_hf_llama(folder, seed: int = 0, dtype=torch.float32, **overrides) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**{**TINY_HF, **overrides})
    model = transformers.LlamaForCausalLM(cfg).eval()
    # HF zero-initialises some biases and ones-initialises norms; randomise everything so parity means something.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if p.ndim == 1 and p.shape[0] == cfg.hidden_size else 0.0))
    model = model.to(dtype)
    model.save_pretrained(folder)
    return model


def hf_logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask.astype(np.int64)))
    return out.logits.float().numpy()


def tiny_config(**overrides) -> LlamaConfig:
    """A small GQA LLaMA for tests that need no HF reference."""
    base = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaConfig(**{**base, **overrides})


def write_hf_tokenizer_folder(sp_model_path, folder) -> None:
    """An HF LlamaTokenizer folder around our sentencepiece model (what a LLaMA checkpoint ships)."""
    shutil.copy(sp_model_path, folder / "tokenizer.model")
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "legacy": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
