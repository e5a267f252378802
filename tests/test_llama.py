"""LLaMA in Flax vs transformers (PyTorch reference), conversion round trips, KV-cache decoding."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from helpers import hf_logits, make_hf_llama, tiny_config

from spider_jax.convert.llama import (
    CheckpointMismatchError,
    load_hf_checkpoint,
    params_to_hf_state_dict,
    save_hf_checkpoint,
)
from spider_jax.convert.safetensors_io import SafetensorsFile, save_file
from spider_jax.generate import greedy_generate, left_pad
from spider_jax.models.llama import LlamaForCausalLM, init_params

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
CASES = {
    "gqa": {},
    "mha_odd_sizes": dict(
        hidden_size=36, intermediate_size=70, num_attention_heads=3, num_key_value_heads=3, vocab_size=101
    ),
    "llama3_rope_tied": dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True),
    "linear_rope_bias_headdim": dict(
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
        attention_bias=True,
        mlp_bias=True,
        head_dim=10,
        num_key_value_heads=1,
    ),
}


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(tmp_path, case, scan_layers):
    hf = make_hf_llama(tmp_path, **CASES[case])
    config, params = load_hf_checkpoint(tmp_path, scan_layers=scan_layers)
    rng = np.random.RandomState(1)
    ids = rng.randint(0, config.vocab_size, (3, 40))
    mask = np.ones_like(ids, dtype=bool)
    mask[1, 25:] = False  # right padding
    mask[2, 33:] = False
    ours = np.asarray(LlamaForCausalLM(config).apply({"params": params}, ids, attention_mask=mask))
    ref = hf_logits(hf, ids, mask)
    diff = max(np.abs(ours[b][mask[b]] - ref[b][mask[b]]).max() for b in range(3))
    assert diff <= 1e-4, f"max |logits diff| {diff}"


def test_round_trip_is_exact_and_loads_in_transformers(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    hf = make_hf_llama(src, attention_bias=True)
    config, params = load_hf_checkpoint(src)
    save_hf_checkpoint(config, params, dst)
    original = SafetensorsFile(src / "model.safetensors")
    written = SafetensorsFile(dst / "model.safetensors")
    assert set(original) == set(written)
    for name in original:
        np.testing.assert_array_equal(original[name], written[name], err_msg=name)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(dst).eval()
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (2, 12))
    np.testing.assert_array_equal(hf_logits(reloaded, ids), hf_logits(hf, ids))


def test_sharded_checkpoint_with_index_and_scan_layout(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_hf_llama(src)
    config, params = load_hf_checkpoint(src, scan_layers=True)
    assert params["model"]["layers"]["self_attn"]["q_proj"]["kernel"].shape == (2, 48, 48)
    save_hf_checkpoint(config, params, dst, max_shard_size=40_000)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    config2, params2 = load_hf_checkpoint(dst)  # unscanned layout from a sharded folder
    state1 = params_to_hf_state_dict(params, config)
    state2 = params_to_hf_state_dict(params2, config2)
    for name in state1:
        np.testing.assert_array_equal(state1[name], state2[name], err_msg=name)
    assert transformers.LlamaForCausalLM.from_pretrained(dst) is not None


def test_bfloat16_checkpoint_loads_exactly(tmp_path):
    hf = make_hf_llama(tmp_path, dtype=torch.bfloat16)
    config, params = load_hf_checkpoint(tmp_path)
    kernel = params["model"]["layers_1"]["mlp"]["down_proj"]["kernel"]
    assert kernel.dtype == jnp.bfloat16
    ref = hf.model.layers[1].mlp.down_proj.weight.detach().float().numpy().T
    np.testing.assert_array_equal(kernel.astype(np.float32), ref)
    config32, params32 = load_hf_checkpoint(tmp_path, param_dtype="float32")
    assert params32["model"]["layers_1"]["mlp"]["down_proj"]["kernel"].dtype == np.float32
    assert config32.param_dtype == "float32"


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
    make_hf_llama(tmp_path)
    st = SafetensorsFile(tmp_path / "model.safetensors")
    tensors = {k: np.array(st[k]) for k in st}
    tensors["model.layers.1.self_attn.k_proj.weight"] = np.zeros((8, 48), np.float32)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(
        CheckpointMismatchError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight.*\(8, 48\).*\(16, 48\)"
    ):
        load_hf_checkpoint(tmp_path)


def test_missing_tensor_and_missing_config_are_named(tmp_path):
    make_hf_llama(tmp_path)
    st = SafetensorsFile(tmp_path / "model.safetensors")
    tensors = {k: np.array(st[k]) for k in st if k != "model.layers.0.mlp.up_proj.weight"}
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"missing 1: \['model\.layers\.0\.mlp\.up_proj\.weight'\]"):
        load_hf_checkpoint(tmp_path)
    os.remove(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_checkpoint(tmp_path)


def test_truncated_safetensors_is_reported(tmp_path):
    make_hf_llama(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="truncated"):
        load_hf_checkpoint(tmp_path)


_config = tiny_config


def _full_sequence_greedy(config, variables, prompt, steps):
    """Reference decode without a cache: re-run the whole sequence each step (right-padded to a fixed length,
    which a causal model ignores, so one compilation serves every step)."""
    total = len(prompt) + steps
    forward = jax.jit(lambda ids: LlamaForCausalLM(config).apply(variables, ids))
    seq = list(prompt)
    for _ in range(steps):
        padded = np.zeros((1, total), np.int32)
        padded[0, : len(seq)] = seq
        seq.append(int(jnp.argmax(forward(padded)[0, len(seq) - 1])))
    return seq[len(prompt) :]


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_kv_cache_greedy_equals_full_sequence_argmax(scan_layers):
    config = _config(scan_layers=scan_layers)
    variables = init_params(config, jax.random.PRNGKey(3))
    prompts = [[1, 5, 9, 33, 2, 7, 8], [1, 4], [1, 100, 3, 4]]
    ids, mask = left_pad(prompts, pad_id=0)
    tokens, lengths = greedy_generate(config, variables, ids, mask, 12)
    for row, prompt in enumerate(prompts):
        assert list(np.asarray(tokens[row])) == _full_sequence_greedy(config, variables, prompt, 12)
    assert list(np.asarray(lengths)) == [12, 12, 12]


def test_generation_stops_at_eos_and_pads():
    config = _config()
    variables = init_params(config, jax.random.PRNGKey(3))
    ids, mask = left_pad([[1, 5, 9]], pad_id=0)
    free, _ = greedy_generate(config, variables, ids, mask, 6)
    eos = int(free[0, 2])  # declare the third generated token to be EOS
    tokens, lengths = greedy_generate(config, variables, ids, mask, 6, eos_id=eos, pad_id=-1)
    first_eos = list(np.asarray(free[0])).index(eos)
    assert int(lengths[0]) == first_eos + 1
    assert list(np.asarray(tokens[0, first_eos + 1 :])) == [-1] * (5 - first_eos)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_keeps_values_and_gradients(policy):
    plain, remat = _config(), _config(remat_policy=policy, scan_layers=True)
    variables = init_params(plain, jax.random.PRNGKey(0))
    from spider_jax.convert.llama import hf_state_dict_to_params

    scanned = hf_state_dict_to_params(params_to_hf_state_dict(variables["params"], plain), remat)
    ids = np.random.RandomState(0).randint(0, 128, (2, 10))

    def loss(config, params):
        return jnp.mean(LlamaForCausalLM(config).apply({"params": params}, ids) ** 2)

    l1, g1 = jax.value_and_grad(lambda p: loss(plain, p))(variables["params"])
    l2, g2 = jax.value_and_grad(lambda p: loss(remat, p))(scanned)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    g1_hf = params_to_hf_state_dict(g1, plain)
    g2_hf = params_to_hf_state_dict(g2, remat)
    for name in g1_hf:
        np.testing.assert_allclose(g1_hf[name], g2_hf[name], atol=1e-6, err_msg=name)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        _config(num_key_value_heads=3)
    with pytest.raises(ValueError, match="remat_policy"):
        _config(remat_policy="everything")


def test_inputs_embeds_path_and_hidden_states():
    config = _config(num_hidden_layers=1)
    variables = init_params(config, jax.random.PRNGKey(0))
    model = LlamaForCausalLM(config)
    ids = np.random.RandomState(0).randint(0, 128, (2, 7))
    embeds = model.apply(variables, ids, method=model.embed)
    np.testing.assert_array_equal(np.asarray(embeds), np.asarray(variables["params"]["model"]["embed_tokens"])[ids])
    logits_ids, hidden = model.apply(variables, ids, return_hidden=True)
    logits_embeds = model.apply(variables, inputs_embeds=embeds)
    np.testing.assert_allclose(np.asarray(logits_ids), np.asarray(logits_embeds), atol=1e-6)
    assert hidden.shape == (2, 7, config.hidden_size)
    head = np.asarray(variables["params"]["lm_head"])
    np.testing.assert_allclose(np.asarray(hidden) @ head, np.asarray(logits_ids), atol=1e-4)


def test_packed_rows_equal_separate_sequences():
    """segment_ids + restarting positions make a packed row compute each instance as if it were alone."""
    config = tiny_config()
    params = init_params(config, jax.random.PRNGKey(0))
    model = LlamaForCausalLM(config)
    rng = np.random.default_rng(0)
    first, second = rng.integers(1, config.vocab_size, 7), rng.integers(1, config.vocab_size, 5)
    packed = np.zeros((1, 16), np.int32)
    packed[0, :7], packed[0, 7:12] = first, second
    segments = np.array([[1] * 7 + [2] * 5 + [0] * 4], np.int32)
    positions = np.array([list(range(7)) + list(range(5)) + [0] * 4], np.int32)
    logits = model.apply(params, packed, position_ids=positions, segment_ids=segments)
    alone_first = model.apply(params, first[None].astype(np.int32))
    alone_second = model.apply(params, second[None].astype(np.int32))
    np.testing.assert_allclose(logits[0, :7], alone_first[0], atol=1e-5)
    np.testing.assert_allclose(logits[0, 7:12], alone_second[0], atol=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_hidden_layer_matches_transformers_hidden_states(tmp_path, scan_layers):
    """hidden_layer picks the hidden states numbered as transformers' output_hidden_states (M-Prompt layer)."""
    hf = make_hf_llama(tmp_path, num_hidden_layers=3)
    config, params = load_hf_checkpoint(tmp_path, scan_layers=scan_layers)
    ids = np.random.RandomState(2).randint(0, config.vocab_size, (2, 9))
    with torch.no_grad():
        ref = hf(torch.tensor(ids), output_hidden_states=True).hidden_states
    model = LlamaForCausalLM(config)
    for layer in (0, 1, 2, 3, -1, -2):
        _, picked = model.apply({"params": params}, ids, return_hidden=True, hidden_layer=layer)
        diff = np.abs(np.asarray(picked) - ref[layer].numpy()).max()
        assert diff <= 1e-4, f"hidden_layer {layer}: max |diff| {diff}"
    with pytest.raises(ValueError, match="hidden_layer 4 out of range for 3 layers"):
        model.apply({"params": params}, ids, return_hidden=True, hidden_layer=4)
