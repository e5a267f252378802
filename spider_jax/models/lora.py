"""LoRA for the LLaMA projections.

LoRA weights live in their own Flax collection, ``'lora'``, next to the frozen ``'params'``. That keeps the
trainable tree separate by construction: ``jax.grad`` over ``variables['lora']`` can only ever touch LoRA, the
optimizer state exists only for it, and the frozen base can be stored in bf16 and sharded independently.

A :class:`LoRALinear` whose collection is absent at apply time runs as the plain base projection, so the same
module serves the base model, the adapted model and the merged export.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LORA_COLLECTION = "lora"
# Projection names in HF LLaMA, the vocabulary users already know from peft's `target_modules`.
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Rank, scale (alpha / rank), dropout and which projections carry an adapter."""

    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self):
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {self.rank}")
        unknown = sorted(set(self.targets) - set(ALL_TARGETS))
        if unknown:
            raise ValueError(f"Unknown LoRA targets {unknown}; choose from {ALL_TARGETS}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> LoraConfig | None:
        if d is None:
            return None
        d = dict(d)
        if "targets" in d:
            d["targets"] = tuple(d["targets"])
        return cls(**d)


def _lora_a_init(key, shape, dtype=jnp.float32):
    """peft's default: kaiming-uniform with a=sqrt(5) on A (fan_in = in_features) -> U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / np.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class LoRALinear(nn.Module):
    """``y = x W (+ b) + dropout(x) A B * alpha/r``; kernel stored (in, out) with logical axis names."""

    features: int
    axes: tuple[str, str]
    use_bias: bool = False
    lora: LoraConfig | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.normal(0.02)
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.axes),
            (in_features, self.features),
            self.param_dtype,
        )
        x = x.astype(self.dtype)
        y = jnp.dot(x, kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]),
                (self.features,),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        if self.lora is None:
            return y
        active = self.has_variable(LORA_COLLECTION, "lora_a") or self.is_mutable_collection(LORA_COLLECTION)
        if not active:
            return y
        rank = self.lora.rank
        a_init = nn.with_logical_partitioning(_lora_a_init, (self.axes[0], "lora_rank"))
        b_init = nn.with_logical_partitioning(nn.initializers.zeros, ("lora_rank", self.axes[1]))
        # The rng is drawn lazily: only when the variable does not exist yet (init, or a mutable empty collection).
        a = self.variable(LORA_COLLECTION, "lora_a", lambda: a_init(self.make_rng("params"), (in_features, rank))).value
        b = self.variable(
            LORA_COLLECTION, "lora_b", lambda: b_init(self.make_rng("params"), (rank, self.features))
        ).value
        h = nn.Dropout(self.lora.dropout)(x, deterministic=self.deterministic)
        delta = jnp.dot(jnp.dot(h, a.astype(self.dtype)), b.astype(self.dtype))
        return y + delta * jnp.asarray(self.lora.scale, self.dtype)


def _walk_lora(params: Any, lora: Any, fn, path: tuple[str, ...] = ()) -> Any:
    """Rebuild ``params`` applying ``fn(kernel, a, b)`` to every kernel that has a LoRA pair in ``lora``."""
    if not isinstance(params, dict):
        return params
    out = {}
    for key, value in params.items():
        sub = lora.get(key) if isinstance(lora, dict) else None
        if key == "kernel" and isinstance(lora, dict) and "lora_a" in lora:
            out[key] = fn(value, lora["lora_a"], lora["lora_b"], path)
        elif isinstance(value, dict) and sub is not None:
            out[key] = _walk_lora(value, sub, fn, path + (key,))
        else:
            out[key] = value
    return out


def _delta(a, b, scale):
    # Works for both stacked (scan: leading layer axis) and per-layer weights.
    return jnp.einsum("...ir,...ro->...io", jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)) * scale


def merge(params: Any, lora: Any, config: LoraConfig) -> Any:
    """Fold the adapters into the base kernels: ``W <- W + (alpha/r) A B`` (for export or adapter-free serving)."""

    def fn(kernel, a, b, path):
        return (jnp.asarray(kernel, jnp.float32) + _delta(a, b, config.scale)).astype(kernel.dtype)

    return _walk_lora(params, lora, fn)


def unmerge(params: Any, lora: Any, config: LoraConfig) -> Any:
    """Inverse of :func:`merge` (exact up to float rounding)."""

    def fn(kernel, a, b, path):
        return (jnp.asarray(kernel, jnp.float32) - _delta(a, b, config.scale)).astype(kernel.dtype)

    return _walk_lora(params, lora, fn)


def count_params(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def lora_targets_in(tree: Any) -> Sequence[str]:
    """Names of the projections that carry adapters in a LoRA tree (for logging and export checks)."""
    names: set[str] = set()

    def visit(node, parent):
        if isinstance(node, dict):
            if "lora_a" in node:
                names.add(parent)
            for k, v in node.items():
                visit(v, k)

    visit(tree, "")
    return sorted(names)
