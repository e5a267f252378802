"""Plain-text language-model batches: read lines, tokenize, pack into fixed-length rows.

The multimodal TMM pipeline has its own grain input pipeline; this is the small, dependency-free path the
LLaMA/LoRA foundation (demo, benchmarks, tests) trains on. Each process takes every ``process_count``-th
batch, so hosts see disjoint data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np


def read_lines(path: str | os.PathLike) -> list[str]:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: text corpus not found")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{path}: corpus is empty")
    return lines


def pack_tokens(token_lists: Sequence[Sequence[int]], seq_len: int) -> np.ndarray:
    """Concatenates documents (each already with BOS/EOS) and cuts rows of ``seq_len``; drops the remainder."""
    stream = np.fromiter((t for tokens in token_lists for t in tokens), dtype=np.int32)
    rows = len(stream) // seq_len
    if rows == 0:
        raise ValueError(f"corpus has {len(stream)} tokens, fewer than one row of {seq_len}")
    return stream[: rows * seq_len].reshape(rows, seq_len)


def lm_batches(
    rows: np.ndarray,
    batch_size: int,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled batches (a new permutation per epoch, fixed by ``seed``); resumable at ``start_step``.

    ``batch_size`` is per process. Every token is a label (packed causal LM).
    """
    global_batch = batch_size * process_count
    if len(rows) < global_batch:
        raise ValueError(f"only {len(rows)} rows for a global batch of {global_batch}")
    per_epoch = len(rows) // global_batch
    step = start_step
    while True:
        epoch, index = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(rows))
        begin = index * global_batch + process_index * batch_size
        ids = rows[order[begin : begin + batch_size]]
        yield {"input_ids": ids, "attention_mask": np.ones_like(ids, dtype=bool), "labels": ids.copy()}
        step += 1
