"""Spider's training losses (paper §2.5): LM cross-entropy, M-Alignment and M-Reconstruction.

* CE on the answer tokens (labels are ``IGNORE_INDEX`` elsewhere), see ``trainer.next_token_loss``;
* M-Alignment ``1 − cos(S^X, T_e^X)``: the fused decoder condition stays in the decoder's text space;
* M-Reconstruction ``1 − cos(f_R(Q̄^X), E^X)``: the M-Queries carry the target medium's encoder embedding.

Cosines are taken per token over the feature axis and averaged over the T_e tokens, then over the valid groups
of the batch (a group is valid when its embedding was found in the store); a batch without valid groups
contributes 0, not NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from spider_jax.trainer import next_token_loss

__all__ = ["cosine_distance", "masked_mean", "m_alignment", "m_reconstruction", "next_token_loss"]


def cosine_distance(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``1 − cos(a, b)`` over the last axis, in fp32. Norms are floored inside the square root, so all-zero
    vectors (unused group slots, embeddings not in a store) give finite values *and* finite gradients."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    norm_a = jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=-1), eps * eps))
    norm_b = jnp.sqrt(jnp.maximum(jnp.sum(b * b, axis=-1), eps * eps))
    return 1.0 - jnp.sum(a * b, axis=-1) / (norm_a * norm_b)


def masked_mean(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(mean of values where mask, count)``; 0 when nothing is masked in."""
    count = mask.astype(jnp.float32).sum()
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(count, 1.0), count


def m_alignment(s: jax.Array, t_e: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``s``, ``t_e`` (B, G, T, D); ``valid`` (B, G) -> (mean 1 − cos, number of groups)."""
    return masked_mean(cosine_distance(s, t_e).mean(axis=-1), valid)


def m_reconstruction(prediction: jax.Array, target: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``prediction``, ``target`` (B, G, E); ``valid`` (B, G) -> (mean 1 − cos, number of groups)."""
    return masked_mean(cosine_distance(prediction, target), valid)
