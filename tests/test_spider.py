"""Spider components: projectors and splicing, Decoders-Controller variants, losses, stage trainables, steps."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from spider_fixtures import ENCODER_WIDTH, random_batch, tiny_spider_config

from spider_jax import losses
from spider_jax import sharding as sharding_lib
from spider_jax.models.controller import ControllerConfig, DecodersController, OutputSpec, init_controller
from spider_jax.models.llama import LlamaForCausalLM
from spider_jax.models.projectors import EncoderProjectors, gather, splice
from spider_jax.models.spider import GROUPS, init_spider, spider_forward, spider_loss, with_new_token_rows
from spider_jax.spider_trainer import (
    build_sharded_spider_step,
    init_stage_state,
    make_spider_train_step,
    merge_groups,
    split_groups,
)
from spider_jax.trainer import make_optimizer

STAGE_TRAINABLES = {
    "stage1": ("projectors", "lora", "controller", "new_tokens"),
    "stage2": ("lora", "new_tokens"),
}


def _variables(cfg, seed=0):
    return nn.unbox(init_spider(cfg, jax.random.PRNGKey(seed)))


def test_splice_and_gather_respect_unused_slots():
    emb = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    positions = jnp.array([[1, -1], [4, 0]])
    values = -jnp.ones((2, 2, 3))
    out = splice(emb, positions, values)
    expected = np.asarray(emb).copy()
    expected[0, 1] = expected[1, 4] = expected[1, 0] = -1
    np.testing.assert_array_equal(out, expected)
    got = gather(out, jnp.array([[1, -1], [0, 4]]))
    np.testing.assert_array_equal(got[0, 1], 0)
    np.testing.assert_array_equal(got[1], -np.ones((2, 3)))


@pytest.mark.parametrize("shared", [False, True])
def test_encoder_projectors_pick_the_slot_modality(shared):
    module = EncoderProjectors(8, shared=shared)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, ENCODER_WIDTH))
    codes = jnp.array([[1, 2, 3], [0, 3, 1]])  # IMAGE, AUDIO, VIDEO; 0 = unused
    params = module.init(jax.random.PRNGKey(1), x, codes)["params"]
    out = module.apply({"params": params}, x, codes)
    names = ["shared"] * 3 if shared else ["image", "audio", "video"]
    for b in range(2):
        for i in range(3):
            code = int(codes[b, i])
            if code == 0:
                np.testing.assert_array_equal(out[b, i], 0)
                continue
            p = nn.unbox(params[names[code - 1]])
            np.testing.assert_allclose(out[b, i], x[b, i] @ p["kernel"] + p["bias"], atol=1e-5)
    assert len(params) == (1 if shared else 3)


def _controller(variant="udp", k=2, router="softmax"):
    cfg = ControllerConfig(
        llm_width=16,
        width=8,
        num_layers=2,
        num_heads=2,
        mlp_dim=16,
        router_hidden=8,
        num_experts=k,
        router=router,
        variant=variant,
        reconstruction_width=10,
        outputs={"IMAGE": OutputSpec(1, 6, 5), "AUDIO": OutputSpec(1, 4, 1)},
    )
    return cfg, nn.unbox(init_controller(cfg, jax.random.PRNGKey(0)))


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("router", ["softmax", "sigmoid_normalised"])
def test_udp_shapes_and_router_weights(k, router):
    cfg, params = _controller(k=k, router=router)
    m = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 16))
    t_e = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 5, 6))
    out = DecodersController(cfg).apply({"params": params}, m, t_e, "IMAGE")
    assert out["q_bar"].shape == (2, 3, 1, 8) and out["s"].shape == (2, 3, 5, 6)
    assert out["weights"].shape == (2, 3, k) and out["reconstruction"].shape == (2, 3, 10)
    np.testing.assert_allclose(out["weights"].sum(-1), 1.0, atol=1e-6)
    assert sum(name.startswith("expert_") for name in params) == k  # experts shared by modalities
    if k > 1:
        assert float(jnp.std(out["weights"][..., 0])) > 0  # the router depends on M_e


def test_tm_fusion_adds_alpha_times_the_projected_queries():
    cfg, params = _controller()
    m = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 16))
    t_e = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 5, 6))
    fused = DecodersController(cfg).apply({"params": params}, m, t_e, "IMAGE")["s"]
    mprompt_only = DecodersController(dataclasses.replace(cfg, variant="mprompt_only"))
    projected = mprompt_only.apply({"params": params}, m, t_e, "IMAGE")["s"]
    np.testing.assert_allclose(fused, t_e + 0.2 * projected, atol=1e-5)
    t_only = DecodersController(dataclasses.replace(cfg, variant="tprompt_only"))
    np.testing.assert_array_equal(t_only.apply({"params": params}, m, t_e, "IMAGE")["s"], t_e)


def test_mp_variant_has_one_expert_stack_per_modality_and_no_router():
    cfg, params = _controller(variant="mp")
    assert {n for n in params if n.startswith("expert_")} == {"expert_image", "expert_audio"}
    assert not any(n.startswith("router") for n in params)


def test_controller_config_errors():
    with pytest.raises(ValueError, match="variant"):
        ControllerConfig(variant="nope")
    with pytest.raises(ValueError, match="num_queries 3"):
        ControllerConfig(outputs={"IMAGE": OutputSpec(3, 8, 77)})


def test_cosine_losses_on_hand_cases():
    a = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b = jnp.array([[2.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    np.testing.assert_allclose(losses.cosine_distance(a, b), [0.0, 2.0, 1 - 1 / np.sqrt(2)], atol=1e-6)
    mean, count = losses.masked_mean(jnp.array([1.0, 3.0, 100.0]), jnp.array([True, True, False]))
    assert float(mean) == 2.0 and float(count) == 2.0
    mean, count = losses.masked_mean(jnp.array([jnp.inf]), jnp.array([False]))
    assert float(count) == 0.0 and float(mean) == 0.0  # nothing valid: 0, not NaN


def test_new_token_rows_overwrite_the_table_tail():
    cfg = tiny_spider_config()
    variables = _variables(cfg)
    new = jax.tree.map(lambda x: x + 1.0, variables["new_tokens"])
    llm = with_new_token_rows(cfg, variables["llm"], new)
    table = llm["model"]["embed_tokens"]
    np.testing.assert_array_equal(table[: cfg.base_vocab_size], variables["llm"]["model"]["embed_tokens"][:100])
    np.testing.assert_array_equal(table[cfg.base_vocab_size :], new["embed"])
    np.testing.assert_array_equal(llm["lm_head"][:, 100:], new["head"])


def test_forward_splices_projected_inputs_and_reads_mprompt_states():
    cfg = tiny_spider_config()
    variables = _variables(cfg)
    batch = random_batch()
    out = spider_forward(cfg, variables, batch)
    assert out["logits"].shape == (4, 16, 120)
    assert set(out["controller"]) == {"IMAGE", "AUDIO"}
    # Changing the input embedding changes the logits only from its slot on (causal attention).
    other = dict(batch, input_embeddings=batch["input_embeddings"] + 1.0)
    changed = np.abs(np.asarray(spider_forward(cfg, variables, other)["logits"] - out["logits"])).max(-1)
    assert (changed[:, :2] == 0).all() and (changed[:, 2:] > 0).all()
    # Without modality inputs the model is exactly the LoRA LLaMA on token embeddings.
    plain = {k: v for k, v in batch.items() if not k.startswith("input_")} | {"input_ids": batch["input_ids"]}
    llm_vars = {
        "params": with_new_token_rows(cfg, variables["llm"], variables["new_tokens"]),
        "lora": variables["lora"],
    }
    reference = LlamaForCausalLM(cfg.llm).apply(llm_vars, batch["input_ids"])
    np.testing.assert_allclose(spider_forward(cfg, variables, plain)["logits"], reference, atol=1e-5)


def test_loss_terms_are_finite_and_masked_groups_do_not_count():
    cfg = tiny_spider_config()
    variables = _variables(cfg)
    batch = random_batch()
    _, metrics = spider_loss(cfg, variables, batch)
    assert float(metrics["alignment_groups"]) == 8 and float(metrics["reconstruction_groups"]) == 8
    poisoned = dict(batch)
    poisoned["image_te"] = batch["image_te"].copy()
    poisoned["image_te"][:, 1] = np.nan  # group slot 1 is unused: must not leak into the loss
    _, m2 = spider_loss(cfg, variables, poisoned)
    np.testing.assert_allclose(float(m2["loss"]), float(metrics["loss"]), rtol=1e-6)


@pytest.mark.parametrize("stage", sorted(STAGE_TRAINABLES))
def test_gradients_reach_exactly_the_stage_trainables(stage):
    cfg = tiny_spider_config()
    variables = _variables(cfg)
    optimizer = make_optimizer(1e-2)
    state, frozen = init_stage_state(variables, STAGE_TRAINABLES[stage], optimizer)
    assert set(state.trainable) == set(STAGE_TRAINABLES[stage]) and set(frozen) == set(GROUPS) - set(state.trainable)
    step = jax.jit(make_spider_train_step(cfg, optimizer))
    new_state, metrics = step(state, frozen, random_batch(), jax.random.PRNGKey(0))
    assert int(metrics["finite"]) == 1
    for group in STAGE_TRAINABLES[stage]:
        before, after = jax.tree.leaves(state.trainable[group]), jax.tree.leaves(new_state.trainable[group])
        moved = [float(jnp.abs(a - b).max()) > 0 for a, b in zip(before, after, strict=True)]
        assert all(moved), f"{group}: {moved.count(False)} of {len(moved)} leaves got no update"


def test_empty_group_slots_and_missing_embeddings_keep_gradients_finite():
    """Unused slots and store misses arrive as all-zero T_e / targets; 1 − cos must not NaN their gradients."""
    cfg = tiny_spider_config()
    variables = _variables(cfg)
    batch = random_batch()
    for x in ("image", "audio"):
        unused = batch[f"{x}_positions"] < 0
        batch[f"{x}_te"][unused] = 0.0
        batch[f"{x}_target"][unused] = 0.0
    batch["audio_te"][:, 0] = 0.0  # a store miss on a real group
    batch["audio_te_found"][:, 0] = False
    grads = jax.jit(jax.grad(lambda v: spider_loss(cfg, v, batch)[0]))(variables)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


def test_split_groups_rejects_typos():
    with pytest.raises(ValueError, match="controler"):
        split_groups({"llm": {}}, ["controler"])


def test_gradient_accumulation_matches_one_big_batch():
    cfg = tiny_spider_config()
    variables = _variables(cfg)
    optimizer = optax.sgd(1.0)  # params move by exactly -grad (Adam's first step would amplify rounding)
    state, frozen = init_stage_state(variables, STAGE_TRAINABLES["stage1"], optimizer)
    batch = random_batch()
    one, m1 = jax.jit(make_spider_train_step(cfg, optimizer))(state, frozen, batch, jax.random.PRNGKey(0))
    two, m2 = jax.jit(make_spider_train_step(cfg, optimizer, accumulation_steps=2))(
        state, frozen, batch, jax.random.PRNGKey(0)
    )
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m2["grad_norm"]), rtol=1e-4)
    for a, b in zip(jax.tree.leaves(one.trainable), jax.tree.leaves(two.trainable), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


def test_nonfinite_step_is_skipped():
    cfg = tiny_spider_config()
    variables = _variables(cfg)
    optimizer = make_optimizer(1e-2)
    state, frozen = init_stage_state(variables, STAGE_TRAINABLES["stage1"], optimizer)
    batch = random_batch()
    batch["image_target"][0, 0] = np.inf
    new_state, metrics = jax.jit(make_spider_train_step(cfg, optimizer))(state, frozen, batch, jax.random.PRNGKey(0))
    assert int(metrics["finite"]) == 0 and int(new_state.step) == 1
    for a, b in zip(jax.tree.leaves(state.trainable), jax.tree.leaves(new_state.trainable), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sharded_step_matches_single_device():
    cfg = tiny_spider_config()
    boxed = init_spider(cfg, jax.random.PRNGKey(0))
    variables = nn.unbox(boxed)
    optimizer = make_optimizer(1e-2)
    trainable = STAGE_TRAINABLES["stage1"]
    batch = random_batch(batch=8)
    state, frozen = init_stage_state(variables, trainable, optimizer)
    _, want = jax.jit(make_spider_train_step(cfg, optimizer))(state, frozen, batch, jax.random.PRNGKey(0))

    mesh = sharding_lib.create_mesh((2, 2, 2))
    step, shardings = build_sharded_spider_step(cfg, optimizer, mesh, boxed, trainable, batch)
    state, frozen = init_stage_state(variables, trainable, optimizer)
    state = sharding_lib.place(state, shardings["state"])
    frozen = sharding_lib.place(frozen, shardings["frozen"])
    new_state, got = step(state, frozen, sharding_lib.place(batch, shardings["batch"]), jax.random.PRNGKey(0))
    for key in ("loss", "lm_loss", "alignment_loss", "reconstruction_loss"):
        np.testing.assert_allclose(float(got[key]), float(want[key]), atol=1e-5, err_msg=key)
    described = sharding_lib.describe(shardings["frozen"])
    assert described["llm/model/embed_tokens"] == "P('tensor', 'fsdp')"  # vocab, embed
    assert "fsdp" in sharding_lib.describe(shardings["state"].trainable)["lora/model/layers_0/self_attn/q_proj/lora_a"]
    assert new_state.trainable["projectors"]["image"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp"
    )
    merged = merge_groups(new_state.trainable, frozen)
    assert set(merged) == set(GROUPS)


def test_modality_f1_on_crafted_answers():
    from spider_jax.spider_eval import modality_f1

    assert modality_f1(("IMAGE", "AUDIO"), ("AUDIO", "IMAGE", "IMAGE")) == pytest.approx(0.8)
    assert modality_f1((), ()) == 1.0 and modality_f1(("IMAGE",), ()) == 0.0
    assert modality_f1(("VIDEO",), ("IMAGE",)) == 0.0 and modality_f1(("IMAGE",), ("IMAGE",)) == 1.0
