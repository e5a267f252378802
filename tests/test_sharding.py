"""Mesh construction, the logical rules table, and the sharded LoRA train step on 8 simulated CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config
from jax.sharding import PartitionSpec as P

from spider_jax import sharding, trainer
from spider_jax.models.llama import LlamaForCausalLM, init_params
from spider_jax.models.lora import LoraConfig

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_eight_devices_available():
    assert jax.device_count() == 8, "conftest must set --xla_force_host_platform_device_count=8 before jax import"


def test_create_mesh_fills_and_validates():
    mesh = sharding.create_mesh((-1, 2, 2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(sharding.create_mesh({"fsdp": 8}).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    with pytest.raises(ValueError, match="needs 12 devices"):
        sharding.create_mesh((3, 2, 2))
    with pytest.raises(ValueError, match="at most one axis"):
        sharding.create_mesh((-1, -1, 2))


def test_logical_spec_replicates_what_does_not_divide():
    mesh = sharding.create_mesh((2, 2, 2))
    assert sharding.logical_to_mesh_spec(("embed", "mlp"), (64, 96), mesh) == P("fsdp", "tensor")
    assert sharding.logical_to_mesh_spec(("vocab", "embed"), (97, 64), mesh) == P(None, "fsdp")
    assert sharding.logical_to_mesh_spec(("activation_batch", None), (4, 3), mesh) == P(("data", "fsdp"), None)
    assert sharding.logical_to_mesh_spec(("activation_batch", None), (2, 3), mesh) == P("data", None)
    assert sharding.logical_to_mesh_spec(("layers", "embed", "heads"), (4, 64, 64), mesh) == P(None, "fsdp", "tensor")


def _setup(scan_layers):
    config = tiny_config(scan_layers=scan_layers, lora=LoraConfig(rank=4, alpha=8, dropout=0.1, targets=TARGETS))
    variables = init_params(config, jax.random.PRNGKey(0))
    lora = jax.tree_util.tree_map(lambda x: x + 0.01, variables["lora"])  # non-zero B so every grad is non-zero
    ids = np.random.RandomState(0).randint(0, 128, (8, 24))
    mask = np.ones_like(ids, dtype=bool)
    mask[3, 20:] = False
    labels = np.where(mask, ids, trainer.IGNORE_INDEX)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return config, variables["params"], lora, batch


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_sharded_step_matches_single_device(scan_layers):
    config, params, lora, batch = _setup(scan_layers)
    model = LlamaForCausalLM(config)
    optimizer = trainer.make_optimizer(1e-3)
    rng = jax.random.PRNGKey(7)

    single = jax.jit(trainer.make_lm_train_step(model, optimizer))
    ref_state = trainer.init_train_state(lora, optimizer)
    ref_losses = []
    for _ in range(2):
        ref_state, m = single(ref_state, params, batch, rng)
        ref_losses.append(float(m["loss"]))

    mesh = sharding.create_mesh((2, 2, 2))
    step, shardings = trainer.build_sharded_lm_step(model, optimizer, mesh)
    state = sharding.place(trainer.init_train_state(lora, optimizer), shardings["state"])
    frozen = sharding.place(params, shardings["frozen"])
    sharded_batch = sharding.place(batch, shardings["batch"])
    losses = []
    for _ in range(2):
        state, m = step(state, frozen, sharded_batch, rng)
        losses.append(float(m["loss"]))

    np.testing.assert_allclose(losses, ref_losses, atol=1e-5)
    for a, b in zip(
        jax.tree_util.tree_leaves(ref_state.trainable), jax.tree_util.tree_leaves(state.trainable), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)

    prefix = ("model", "layers") if scan_layers else ("model", "layers_0")
    layer = frozen
    for key in prefix:
        layer = layer[key]
    lead = (None,) if scan_layers else ()
    assert frozen["model"]["embed_tokens"].sharding.spec == P("tensor", "fsdp")
    assert frozen["lm_head"].sharding.spec == P("fsdp", "tensor")
    assert layer["self_attn"]["q_proj"]["kernel"].sharding.spec == P(*lead, "fsdp", "tensor")
    assert layer["self_attn"]["o_proj"]["kernel"].sharding.spec == P(*lead, "tensor", "fsdp")
    assert layer["mlp"]["down_proj"]["kernel"].sharding.spec == P(*lead, "tensor", "fsdp")
    assert layer["input_layernorm"]["scale"].sharding.spec == P(*lead, None)
    # the trainable state and its Adam moments follow the same rules
    lora_layer = state.trainable
    for key in prefix:
        lora_layer = lora_layer[key]
    assert lora_layer["mlp"]["up_proj"]["lora_b"].sharding.spec == P(*lead, None, "tensor")
    mu = state.opt_state[1][0].mu
    for key in prefix:
        mu = mu[key]
    assert mu["mlp"]["up_proj"]["lora_b"].sharding.spec == P(*lead, None, "tensor")
    assert all(d.platform == "cpu" for d in jnp.zeros(1).devices())
