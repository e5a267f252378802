"""LoRA: identity at B=0, merge/unmerge, gradients only for adapters, merged export loads in transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from helpers import hf_logits, make_hf_llama

from spider_jax import trainer
from spider_jax.convert.llama import load_hf_checkpoint, save_hf_checkpoint
from spider_jax.models import lora as lora_lib
from spider_jax.models.llama import LlamaForCausalLM, init_lora_params
from spider_jax.models.lora import LORA_COLLECTION, LoraConfig

ALL = lora_lib.ALL_TARGETS


def _randomise_b(lora, seed=0):
    """LoRA trees straight from init have B = 0; give them a real delta."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(lora)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    new = [
        jax.random.normal(k, x.shape) * 0.05 if path[-1].key == "lora_b" else x
        for k, (path, x) in zip(keys, leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, new)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    hf = make_hf_llama(folder)
    return folder, hf


def test_zero_b_equals_base_model(base):
    folder, _ = base
    config, params = load_hf_checkpoint(folder, lora=LoraConfig(rank=4, alpha=8, dropout=0.0, targets=ALL))
    lora = init_lora_params(config, jax.random.PRNGKey(0))
    assert sorted(lora_lib.lora_targets_in(lora)) == sorted(ALL)
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (2, 9))
    model = LlamaForCausalLM(config)
    with_lora = model.apply({"params": params, LORA_COLLECTION: lora}, ids)
    without = model.apply({"params": params}, ids)
    np.testing.assert_array_equal(np.asarray(with_lora), np.asarray(without))


def test_merge_then_unmerge_restores_and_merged_matches_adapter(base):
    folder, _ = base
    lcfg = LoraConfig(rank=4, alpha=16, dropout=0.0, targets=("q_proj", "v_proj", "down_proj"))
    config, params = load_hf_checkpoint(folder, lora=lcfg)
    lora = _randomise_b(init_lora_params(config, jax.random.PRNGKey(1)))
    merged = lora_lib.merge(params, lora, lcfg)
    restored = lora_lib.unmerge(merged, lora, lcfg)
    changed = 0
    for a, m, r in zip(
        jax.tree_util.tree_leaves(params),
        jax.tree_util.tree_leaves(merged),
        jax.tree_util.tree_leaves(restored),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(r), np.asarray(a), atol=1e-6)
        changed += int(not np.allclose(np.asarray(m), np.asarray(a)))
    assert changed == 2 * 3  # 2 layers x 3 targets
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (2, 9))
    model = LlamaForCausalLM(config)
    adapted = model.apply({"params": params, LORA_COLLECTION: lora}, ids)
    folded = model.apply({"params": merged}, ids)
    np.testing.assert_allclose(np.asarray(adapted), np.asarray(folded), atol=1e-5)


def test_merged_export_loads_in_transformers(base, tmp_path):
    folder, _ = base
    lcfg = LoraConfig(rank=8, alpha=16, dropout=0.1, targets=ALL)
    config, params = load_hf_checkpoint(folder, lora=lcfg)
    lora = _randomise_b(init_lora_params(config, jax.random.PRNGKey(2)))
    save_hf_checkpoint(config, params, tmp_path, lora=lora)
    exported = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (2, 11))
    ours = LlamaForCausalLM(config).apply({"params": params, LORA_COLLECTION: lora}, ids)
    np.testing.assert_allclose(hf_logits(exported, ids), np.asarray(ours), atol=1e-4)


def test_only_lora_receives_updates_and_dropout_is_active(base):
    folder, _ = base
    config, params = load_hf_checkpoint(folder, lora=LoraConfig(rank=4, alpha=8, dropout=0.5))
    lora = init_lora_params(config, jax.random.PRNGKey(0))
    model = LlamaForCausalLM(config)
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (4, 16))
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids, bool), "labels": ids}
    optimizer = trainer.make_optimizer(1e-2)
    state = trainer.init_train_state(lora, optimizer)
    # the optimizer holds state for LoRA leaves only
    opt_elems = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim)
    assert opt_elems == 2 * lora_lib.count_params(lora)
    frozen_before = jax.tree_util.tree_map(np.array, params)
    step = jax.jit(trainer.make_lm_train_step(model, optimizer))
    new_state, metrics = step(state, params, batch, jax.random.PRNGKey(0))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    for before, after in zip(jax.tree_util.tree_leaves(frozen_before), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_array_equal(before, np.asarray(after))
    # B starts at zero, so the first step moves every B (non-zero gradient) and leaves A's gradient at zero.
    for path, _ in jax.tree_util.tree_flatten_with_path(lora)[0]:
        after = new_state.trainable
        for key in path:
            after = after[key.key]
        if path[-1].key == "lora_b":
            assert float(np.abs(np.asarray(after)).max()) > 0, path
    # after a second step A moves too (its gradient flows through the now non-zero B)
    second, _ = step(new_state, params, batch, jax.random.PRNGKey(1))
    a_moved = [
        not np.allclose(np.asarray(x), np.asarray(y), atol=1e-6)
        for (p, x), y in zip(
            jax.tree_util.tree_flatten_with_path(new_state.trainable)[0],
            jax.tree_util.tree_leaves(second.trainable),
            strict=True,
        )
        if p[-1].key == "lora_a"
    ]
    assert a_moved and all(a_moved)
    # dropout: two different rngs give different training-mode outputs once B != 0
    variables = {"params": params, LORA_COLLECTION: new_state.trainable}
    out1 = model.apply(variables, ids, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    out2 = model.apply(variables, ids, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(np.asarray(out1), np.asarray(out2))


def test_gradients_reach_every_lora_leaf(base):
    """Differentiating w.r.t. LoRA alone: gradients exist for A/B; the frozen tree is never an argument."""
    folder, _ = base
    config, params = load_hf_checkpoint(folder, lora=LoraConfig(rank=2, alpha=2, dropout=0.0))
    lora = _randomise_b(init_lora_params(config, jax.random.PRNGKey(0)))
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (2, 8))

    def loss(trainable):
        logits = LlamaForCausalLM(config).apply({"params": params, LORA_COLLECTION: trainable}, ids)
        return trainer.next_token_loss(logits, ids)[0]

    grads = jax.jit(jax.grad(loss))(lora)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(lora)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads))


def test_lora_config_validation():
    with pytest.raises(ValueError, match="Unknown LoRA targets"):
        LoraConfig(targets=("qkv",))
    with pytest.raises(ValueError, match="rank must be positive"):
        LoraConfig(rank=0)
