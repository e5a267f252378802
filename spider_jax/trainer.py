"""Sharded, jitted LoRA language-model train step.

The frozen base parameters and the trainable tree are separate arguments: gradients, optimizer state and
donation apply to the trainable tree only, and the frozen tree can stay in bf16 and be sharded differently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from spider_jax import sharding as sharding_lib
from spider_jax.models.lora import LORA_COLLECTION

IGNORE_INDEX = -100


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    trainable: Any
    opt_state: Any


def make_optimizer(
    learning_rate: float | optax.Schedule = 1e-4,
    weight_decay: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    grad_clip_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """AdamW (paper Tab. 22: Adam, lr 1e-4, weight decay 1e-3) with optional global-norm clipping."""
    parts = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm else []
    parts.append(optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay))
    return optax.chain(*parts)


def next_token_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy of position t predicting ``labels[t+1]``; ``IGNORE_INDEX`` labels are skipped.

    ``labels`` are aligned with the inputs (HF convention), so callers copy input ids and mask the prompt.
    Returns ``(loss, number_of_predicted_tokens)``.
    """
    # Shift the labels, not the logits: no copy of the (B, L, V) logits (as transformers' ForCausalLMLoss).
    targets = jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE_INDEX)], axis=1)
    valid = targets != IGNORE_INDEX
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(valid, targets, 0))
    count = valid.sum()
    loss = jnp.where(valid, nll, 0.0).sum() / jnp.maximum(count, 1)
    return loss, count


def init_train_state(trainable: Any, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=optimizer.init(trainable))


def variables_for(trainable_collection: str) -> Callable[[Any, Any], dict[str, Any]]:
    """How the frozen and trainable trees combine into Flax variables.

    ``'lora'``: frozen base params + trainable LoRA tree. ``'params'``: every parameter trains (the frozen tree
    is empty), used for full fine-tuning and for pretraining the tiny demo base.
    """
    if trainable_collection == LORA_COLLECTION:
        return lambda frozen, trainable: {"params": frozen, LORA_COLLECTION: trainable}
    if trainable_collection == "params":
        return lambda frozen, trainable: {"params": trainable}
    raise ValueError(f"trainable collection must be 'lora' or 'params', got {trainable_collection!r}")


def make_lm_train_step(
    model: nn.Module, optimizer: optax.GradientTransformation, trainable_collection: str = LORA_COLLECTION
) -> Callable:
    """``step(state, frozen, batch, rng) -> (state, metrics)``; only ``state.trainable`` is differentiated.

    ``batch`` holds ``input_ids``, ``attention_mask`` and ``labels`` (B, L).
    """
    combine = variables_for(trainable_collection)

    def step(state: TrainState, frozen: Any, batch: dict[str, jax.Array], rng: jax.Array):
        dropout_rng = jax.random.fold_in(rng, state.step)

        def loss_fn(trainable):
            logits = model.apply(
                combine(frozen, trainable),
                batch["input_ids"],
                attention_mask=batch["attention_mask"],
                deterministic=False,
                rngs={"dropout": dropout_rng},
            )
            return next_token_loss(logits, batch["labels"])

        (loss, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        metrics = {"loss": loss, "tokens": count, "grad_norm": optax.global_norm(grads)}
        return TrainState(step=state.step + 1, trainable=trainable, opt_state=opt_state), metrics

    return step


def abstract_variables(model: nn.Module, batch_size: int = 1, length: int = 2) -> Any:
    """Shapes and logical-axis boxes of every collection, without allocating anything."""
    ids = jnp.zeros((batch_size, length), jnp.int32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), ids)


def state_shardings(boxed_trainable: Any, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """Shardings of the train state. Optimizer moments inherit their parameter's logical names, because
    ``optimizer.init`` maps over the leaves *inside* the ``LogicallyPartitioned`` boxes and keeps the boxes."""
    boxed_opt = jax.eval_shape(optimizer.init, boxed_trainable)
    return TrainState(
        step=NamedSharding(mesh, PartitionSpec()),
        trainable=sharding_lib.shardings_for(boxed_trainable, mesh),
        opt_state=sharding_lib.shardings_for(boxed_opt, mesh),
    )


def build_sharded_lm_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    trainable_collection: str = LORA_COLLECTION,
) -> tuple[Callable, dict[str, Any]]:
    """Jitted train step with explicit in/out shardings (state donated) plus the shardings used.

    Returns ``(step_fn, shardings)`` where ``shardings`` has ``frozen``, ``state`` and ``batch`` entries that
    callers use to place their arrays (``sharding_lib.place``).
    """
    boxed = abstract_variables(model)
    if trainable_collection not in boxed:
        raise ValueError(f"model has no {trainable_collection!r} variables (no LoRA targets?): nothing to train")
    frozen_boxed = boxed["params"] if trainable_collection == LORA_COLLECTION else {}
    frozen_sh = sharding_lib.shardings_for(frozen_boxed, mesh)
    state_sh = state_shardings(boxed[trainable_collection], optimizer, mesh)
    batch_sh = sharding_lib.batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    inner = make_lm_train_step(model, optimizer, trainable_collection)

    def step(state, frozen, batch, rng):
        with sharding_lib.activation_mesh(mesh):
            return inner(state, frozen, batch, rng)

    batch_tree = {"input_ids": batch_sh, "attention_mask": batch_sh, "labels": batch_sh}
    jitted = jax.jit(
        step,
        in_shardings=(state_sh, frozen_sh, batch_tree, replicated),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,),
    )
    return jitted, {"frozen": frozen_sh, "state": state_sh, "batch": batch_tree}
