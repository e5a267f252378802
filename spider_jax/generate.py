"""KV-cache decoding (greedy / temperature / top-k / top-p) of left-padded batches, fully jitted.

The loop is a ``lax.while_loop`` that stops as soon as every row has produced a stop token, so its cost follows
the answer length. Two things make it Spider's decoder rather than a plain LM sampler:

* **M-Prompt capture**: every generated token is fed back through the model one step later; when that token is
  one of ``capture_ids`` (the M-Prompt tokens ``[IMAGE0]`` …), the hidden state of layer ``capture_layer`` at
  that step is kept — exactly the state training reads at the M-Prompt position — so the Decoders-Controller
  needs no second forward pass;
* **forced tokens**: ``forced_ids`` (B, F) fixes the first answer tokens (``-1`` = free), e.g. to start every
  answer with ``[OUT]`` or to replay a known answer and read its M-Prompt states.

``python -m spider_jax.generate`` is the any-to-many CLI (``spider_jax.generation_cli``); this module stays free of
the decoders so the LM alone imports it cheaply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spider_jax.models.llama import LlamaConfig, LlamaForCausalLM, init_cache


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is picked. ``temperature == 0`` is greedy (top-k / top-p are then unused)."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1.0: no nucleus cut

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


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


def filter_logits(logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """Temperature-scaled logits (B, V) with everything outside top-k and the top-p nucleus set to -inf.

    Top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (the token that
    crosses the threshold is kept, so at least one token always survives), as transformers' warpers do.
    """
    logits = logits.astype(jnp.float32) / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        kept = _nucleus_sorted(jnp.sort(logits, axis=-1)[:, ::-1], sampling.top_p)
        threshold = jnp.min(jnp.where(jnp.isfinite(kept), kept, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def _nucleus_sorted(values: jax.Array, top_p: float) -> jax.Array:
    """Top-p on logits already sorted in descending order (B, K): the tail past ``top_p`` becomes -inf."""
    probs = jax.nn.softmax(values, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    return jnp.where(before < top_p, values, -jnp.inf)


def pick_tokens(logits: jax.Array, sampling: SamplingConfig, rng: jax.Array) -> jax.Array:
    """Next token per row (int32) from last-position logits (B, V).

    With top-k the draw happens among the k best logits only (``lax.top_k`` returns them sorted, so top-p needs no
    sort of the whole vocabulary): the same distribution as :func:`filter_logits`, far cheaper per step.
    """
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        values, indices = jax.lax.top_k(logits.astype(jnp.float32) / sampling.temperature, sampling.top_k)
        if sampling.top_p < 1.0:
            values = _nucleus_sorted(values, sampling.top_p)
        choice = jax.random.categorical(rng, values, axis=-1)
        return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits, sampling), axis=-1).astype(jnp.int32)


@dataclasses.dataclass
class DecodeOutput:
    """``tokens`` (B, T) with ``pad_id`` after the stop token; ``lengths`` (B,) generated tokens incl. the stop
    token; ``captured`` (B, C, D) float32 hidden states of the captured tokens in answer order, ``captured_at``
    (B, C) their index in ``tokens`` (-1: empty slot), ``captured_count`` (B,) how many were seen (may exceed
    C: the rest were dropped)."""

    tokens: Any
    lengths: Any
    captured: Any
    captured_at: Any
    captured_count: Any


jax.tree_util.register_dataclass(
    DecodeOutput, data_fields=["tokens", "lengths", "captured", "captured_at", "captured_count"], meta_fields=[]
)


@partial(jax.jit, static_argnames=("config", "max_new_tokens", "sampling", "capture_layer", "max_captures"))
def decode(
    config: LlamaConfig,
    variables: dict[str, Any],
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    max_new_tokens: int,
    *,
    sampling: SamplingConfig = SamplingConfig(),
    rng: jax.Array | None = None,
    stop_ids: jax.Array | Sequence[int] = (-1,),
    pad_id: int | jax.Array = 0,
    prompt_embeds: jax.Array | None = None,
    forced_ids: jax.Array | None = None,
    capture_ids: jax.Array | Sequence[int] = (-1,),
    capture_layer: int = -1,
    max_captures: int = 0,
) -> DecodeOutput:
    """Continues left-padded prompts with the KV cache.

    ``prompt_embeds`` (B, L, D), when given, replaces the prompt's token embeddings (Spider splices projected
    media embeddings into the prompt); ``prompt_ids`` then only fixes the shape. ``rng`` is required unless
    decoding is greedy; each step folds its index in, so a seed reproduces a batch exactly. ``capture_layer``
    numbers hidden states as transformers' ``output_hidden_states`` (-1: the final, normed one);
    ``max_captures`` = 0 turns capture off.
    """
    if rng is None:
        if not sampling.greedy:
            raise ValueError("sampling with temperature > 0 needs an rng")
        rng = jax.random.PRNGKey(0)
    model = LlamaForCausalLM(config)
    batch, prompt_len = prompt_ids.shape
    stop_ids = jnp.asarray(stop_ids, jnp.int32).reshape(-1)
    capture_ids = jnp.asarray(capture_ids, jnp.int32).reshape(-1)
    if forced_ids is None:
        forced_ids = jnp.full((batch, 1), -1, jnp.int32)
    forced_ids = jnp.asarray(forced_ids, jnp.int32)
    capture = max_captures > 0

    def forced_or(picked: jax.Array, i: jax.Array) -> jax.Array:
        column = jax.lax.dynamic_index_in_dim(forced_ids, jnp.minimum(i, forced_ids.shape[1] - 1), 1, False)
        return jnp.where((i < forced_ids.shape[1]) & (column >= 0), column, picked)

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
    first = forced_or(pick_tokens(logits[:, -1], sampling, jax.random.fold_in(rng, 0)), jnp.asarray(0))
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    width = max(max_captures, 1)
    captured = jnp.zeros((batch, width, config.hidden_size), jnp.float32)
    captured_at = jnp.full((batch, width), -1, jnp.int32)
    count = jnp.zeros((batch,), jnp.int32)
    carry = dict(
        i=jnp.asarray(1), token=first, pos=positions[:, -1] + 1, cache=mutated["cache"],
        done=jnp.isin(first, stop_ids), out=out, lengths=jnp.ones((batch,), jnp.int32),
        captured=captured, captured_at=captured_at, count=count,
    )  # fmt: skip

    def cond(c):
        return (c["i"] < max_new_tokens) & ~jnp.all(c["done"])

    def body(c):
        i = c["i"]
        result, mutated = model.apply(
            {**variables, "cache": c["cache"]},
            c["token"][:, None],
            attention_mask=jnp.ones((batch, 1), bool),
            position_ids=c["pos"][:, None],
            decode=True,
            return_hidden=capture,
            hidden_layer=capture_layer,
            mutable=["cache"],
        )
        logits, hidden = result if capture else (result, None)
        new = dict(c, i=i + 1, pos=c["pos"] + 1, cache=mutated["cache"])
        if capture:  # the fed token is out[:, i - 1]; keep its state when it is an M-Prompt token
            hit = jnp.isin(c["token"], capture_ids)
            slot = (jnp.arange(width)[None, :] == c["count"][:, None]) & hit[:, None]
            new["captured"] = jnp.where(slot[..., None], hidden[:, -1:, :].astype(jnp.float32), c["captured"])
            new["captured_at"] = jnp.where(slot, i - 1, c["captured_at"])
            new["count"] = c["count"] + hit.astype(jnp.int32)
        nxt = forced_or(pick_tokens(logits[:, -1], sampling, jax.random.fold_in(rng, i)), i)
        nxt = jnp.where(c["done"], pad_id, nxt)
        new["out"] = c["out"].at[:, i].set(nxt)
        new["lengths"] = c["lengths"] + (~c["done"]).astype(jnp.int32)
        new["done"] = c["done"] | jnp.isin(nxt, stop_ids)
        new["token"] = nxt
        return new

    c = jax.lax.while_loop(cond, body, carry)
    return DecodeOutput(c["out"], c["lengths"], c["captured"], c["captured_at"], c["count"])


def variable_shardings(config: LlamaConfig, mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """NamedShardings of the LLM's variables (``params`` and, with LoRA, ``lora``) on ``mesh`` by the one logical
    rules table (``sharding.LOGICAL_RULES``): put the variables there with ``sharding.place`` and call
    :func:`decode` inside ``sharding.activation_mesh(mesh)`` to decode with a model too big for one device."""
    from spider_jax import sharding

    boxed = jax.eval_shape(lambda: LlamaForCausalLM(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32)))
    return sharding.shardings_for(boxed, mesh)


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
    """Greedy continuation of left-padded prompts: ``(tokens, lengths)`` of :func:`decode`."""
    out = decode(
        config, variables, prompt_ids, prompt_mask, max_new_tokens,
        stop_ids=jnp.asarray([eos_id]), pad_id=pad_id, prompt_embeds=prompt_embeds,
    )  # fmt: skip
    return out.tokens, out.lengths


def main(argv: list[str] | None = None) -> int:
    """``python -m spider_jax.generate``: see :mod:`spider_jax.generation_cli`."""
    from spider_jax import generation_cli

    return generation_cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
