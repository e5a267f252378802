"""Sharded Spider train step: per-stage trainable groups, gradient accumulation, NaN/inf guard.

Spider's variables are a dict of named groups (``models.spider.GROUPS``). A stage names the groups it trains;
those form ``TrainState.trainable`` (differentiated, optimizer state, donated), the rest are passed as a frozen
argument, so no optimizer memory is spent on frozen weights (the 7B base above all).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from spider_jax import sharding as sharding_lib
from spider_jax.models.spider import GROUPS, SpiderConfig, spider_loss
from spider_jax.trainer import TrainState, init_train_state, state_shardings

NONFINITE_POLICIES = ("skip", "halt")


class NonFiniteError(FloatingPointError):
    """Raised by the training loop under ``nonfinite='halt'``; names the step and the offending metrics."""


def split_groups(variables: Mapping[str, Any], trainable: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(trainable_groups, frozen_groups)``; unknown names are an error (a typo would silently freeze a group)."""
    unknown = sorted(set(trainable) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown trainable groups {unknown}; Spider's groups are {list(GROUPS)}")
    train = {k: v for k, v in variables.items() if k in trainable}
    frozen = {k: v for k, v in variables.items() if k not in trainable}
    return train, frozen


def merge_groups(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict[str, Any]:
    return {**frozen, **trainable}


def make_spider_train_step(
    cfg: SpiderConfig,
    optimizer: optax.GradientTransformation,
    accumulation_steps: int = 1,
    nonfinite: str = "skip",
) -> Callable:
    """``step(state, frozen, batch, rng) -> (state, metrics)``.

    ``accumulation_steps`` > 1 splits the batch into that many micro-batches (scanned; gradients averaged), for
    global batches that do not fit at once. With ``nonfinite='skip'`` a step whose loss or gradients are not
    finite leaves the parameters and optimizer state untouched (``metrics['finite'] == 0``); the loop decides
    whether to halt.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")

    def loss_fn(trainable, frozen, batch, rng):
        return spider_loss(cfg, merge_groups(trainable, frozen), batch, deterministic=False, rng=rng)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, frozen: Any, batch: Mapping[str, jax.Array], rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        if accumulation_steps == 1:
            (_, metrics), grads = grad_fn(state.trainable, frozen, batch, rng)
        else:
            micro = jax.tree.map(
                lambda x: x.reshape((accumulation_steps, x.shape[0] // accumulation_steps) + x.shape[1:]), batch
            )

            def body(carry, inputs):
                i, micro_batch = inputs
                (_, m), g = grad_fn(state.trainable, frozen, micro_batch, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, g), m

            zeros = jax.tree.map(jnp.zeros_like, state.trainable)
            grads, stacked = jax.lax.scan(body, zeros, (jnp.arange(accumulation_steps), micro))
            grads = jax.tree.map(lambda g: g / accumulation_steps, grads)
            metrics = jax.tree.map(lambda m: m.mean(axis=0), stacked)
            metrics["tokens"] = stacked["tokens"].sum()
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        if nonfinite == "skip":
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            trainable = jax.tree.map(keep, trainable, state.trainable)
            opt_state = jax.tree.map(keep, opt_state, state.opt_state)
        metrics = dict(metrics, grad_norm=grad_norm, finite=finite.astype(jnp.int32))
        return TrainState(step=state.step + 1, trainable=trainable, opt_state=opt_state), metrics

    return step


def batch_shardings(batch_like: Mapping[str, Any], mesh: Mesh) -> dict[str, NamedSharding]:
    """Every batch array split on its leading (batch) axis over data × fsdp."""
    return {k: sharding_lib.batch_sharding(mesh, len(v.shape)) for k, v in batch_like.items()}


def build_sharded_spider_step(
    cfg: SpiderConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    boxed_variables: Mapping[str, Any],
    trainable: Sequence[str],
    batch_like: Mapping[str, Any],
    accumulation_steps: int = 1,
    nonfinite: str = "skip",
) -> tuple[Callable, dict[str, Any]]:
    """Jitted step with explicit shardings (state donated) and the shardings callers place arrays with.

    ``boxed_variables``: ``init_spider`` output or its ``jax.eval_shape`` (logical names give the layout);
    ``batch_like``: a batch (or ShapeDtypeStructs) fixing the batch's keys and ranks.
    Returns ``(step, {'state', 'frozen', 'batch', 'variables'})``.
    """
    boxed_train, boxed_frozen = split_groups(boxed_variables, trainable)
    if not jax.tree.leaves(boxed_train):
        raise ValueError(f"trainable groups {list(trainable)} hold no parameters")
    shardings = {
        "state": state_shardings(boxed_train, optimizer, mesh),
        "frozen": sharding_lib.shardings_for(boxed_frozen, mesh),
        "batch": batch_shardings(batch_like, mesh),
        "variables": sharding_lib.shardings_for(dict(boxed_variables), mesh),
    }
    inner = make_spider_train_step(cfg, optimizer, accumulation_steps, nonfinite)

    def step(state, frozen, batch, rng):
        with sharding_lib.activation_mesh(mesh):
            return inner(state, frozen, batch, rng)

    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(
        step,
        in_shardings=(shardings["state"], shardings["frozen"], shardings["batch"], replicated),
        out_shardings=(shardings["state"], replicated),
        donate_argnums=(0,),
    )
    return jitted, shardings


def init_stage_state(
    variables: Mapping[str, Any], trainable: Sequence[str], optimizer: optax.GradientTransformation
) -> tuple[TrainState, dict[str, Any]]:
    """Fresh optimizer state for a stage's trainable groups, and the frozen rest."""
    train, frozen = split_groups(variables, trainable)
    return init_train_state(train, optimizer), frozen
