"""Text generation with the KV cache: greedy decoding of a left-padded batch, fully jitted.

The any-to-many pipeline (decoder control, parsing, writing media) builds on this; the loop itself is a
``lax.while_loop`` that stops as soon as every row has produced EOS, so its cost follows the answer length.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spider_jax.models.llama import LlamaConfig, LlamaForCausalLM, init_cache


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch of prompts right-aligned (so every row's next token goes in the same column) plus its mask."""
    if not sequences:
        raise ValueError("left_pad needs at least one sequence")
    length = max(len(s) for s in sequences)
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), bool)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, length - len(seq) :] = seq
            mask[row, length - len(seq) :] = True
    return ids, mask


@partial(jax.jit, static_argnames=("config", "max_new_tokens"))
def greedy_generate(
    config: LlamaConfig,
    variables: dict[str, Any],
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    max_new_tokens: int,
    eos_id: int | jax.Array = -1,
    pad_id: int | jax.Array = 0,
    prompt_embeds: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Greedy continuation of left-padded prompts.

    ``prompt_embeds`` (B, L, D), when given, replaces the prompt's token embeddings (Spider splices projected
    media embeddings into the prompt); ``prompt_ids`` then only fixes the shape.

    Returns ``(tokens, lengths)``: ``tokens`` (B, max_new_tokens) with positions after EOS set to ``pad_id``,
    and the number of generated tokens per row (EOS included).
    """
    model = LlamaForCausalLM(config)
    batch, prompt_len = prompt_ids.shape
    cache = init_cache(config, batch, prompt_len + max_new_tokens)
    prompt_mask = prompt_mask.astype(bool)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
    logits, mutated = model.apply(
        {**variables, "cache": cache},
        prompt_ids if prompt_embeds is None else None,
        inputs_embeds=prompt_embeds,
        attention_mask=prompt_mask,
        position_ids=positions,
        decode=True,
        mutable=["cache"],
    )
    first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    next_pos = positions[:, -1] + 1
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = first == eos_id
    lengths = jnp.ones((batch,), jnp.int32)

    def cond(carry):
        i, _, _, _, done, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, token, pos, cache, done, out, lengths = carry
        logits, mutated = model.apply(
            {**variables, "cache": cache},
            token[:, None],
            attention_mask=jnp.ones((batch, 1), bool),
            position_ids=pos[:, None],
            decode=True,
            mutable=["cache"],
        )
        nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, pad_id, nxt)
        out = out.at[:, i].set(nxt)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | (nxt == eos_id)
        return i + 1, nxt, pos + 1, mutated["cache"], done, out, lengths

    carry = (jnp.asarray(1), first, next_pos, mutated["cache"], done, out, lengths)
    _, _, _, _, _, out, lengths = jax.lax.while_loop(cond, body, carry)
    return out, lengths
