"""Encoder projectors: ImageBind embeddings E^X (1024-d) -> LLM input embeddings, spliced at the ``<E^X>`` slots.

The paper uses one linear projector per input modality; the public reference code shares one across all
modalities (``shared=True``) — kept as an option so its checkpoints can be imported.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from spider_jax import template as tpl

INPUT_MODALITIES = tpl.INPUT_MODALITIES


def modality_index(code: jax.Array) -> jax.Array:
    """Pipeline modality code (index in ``template.MODALITIES`` + 1, 0 = none) -> index in INPUT_MODALITIES."""
    table = jnp.asarray([-1] + [INPUT_MODALITIES.index(m) if m in INPUT_MODALITIES else -1 for m in tpl.MODALITIES])
    return table[code]


class EncoderProjectors(nn.Module):
    """One ``Linear(encoder_width -> llm_width)`` per input modality (or one shared)."""

    llm_width: int
    shared: bool = False
    dtype: str = "float32"

    @nn.compact
    def __call__(self, embeddings: jax.Array, modality_code: jax.Array) -> jax.Array:
        """``embeddings`` (..., E), ``modality_code`` (...) -> (..., llm_width); unused slots (code 0) give 0."""
        names = ("shared",) if self.shared else INPUT_MODALITIES
        outputs = [
            nn.Dense(
                self.llm_width,
                dtype=self.dtype,
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("encoder_embed", "embed")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                name=name.lower(),
            )(embeddings)
            for name in names
        ]
        stacked = jnp.stack(outputs, axis=-2)  # (..., M, D): every modality's projection, then pick one
        index = jnp.where(modality_code > 0, 0, -1) if self.shared else modality_index(modality_code)
        picked = jnp.take_along_axis(stacked, jnp.maximum(index, 0)[..., None, None], axis=-2)[..., 0, :]
        return jnp.where((index >= 0)[..., None], picked, 0.0)


def splice(token_embeddings: jax.Array, positions: jax.Array, values: jax.Array) -> jax.Array:
    """Replaces ``token_embeddings[b, positions[b, i]]`` by ``values[b, i]``; positions of -1 are skipped.

    ``token_embeddings`` (B, L, D), ``positions`` (B, I), ``values`` (B, I, D). Differentiable in ``values``.
    """
    batch, length = token_embeddings.shape[:2]
    valid = positions >= 0
    # Out-of-range index + mode='drop' makes unused slots write nothing.
    index = jnp.where(valid, positions, length)
    rows = jnp.arange(batch)[:, None]
    return token_embeddings.at[rows, index].set(values.astype(token_embeddings.dtype), mode="drop")


def gather(hidden: jax.Array, positions: jax.Array) -> jax.Array:
    """``hidden[b, positions[b, g]]`` -> (B, G, D); rows for position -1 are zeros."""
    valid = positions >= 0
    picked = jnp.take_along_axis(hidden, jnp.maximum(positions, 0)[..., None], axis=1)
    return jnp.where(valid[..., None], picked, 0.0)
