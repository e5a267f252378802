"""The decoding core: M-Prompt capture equals the teacher-forced hidden states, forced tokens, sampling filters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from spider_jax.generate import SamplingConfig, decode, filter_logits, greedy_generate, left_pad, pick_tokens
from spider_jax.models.llama import LlamaForCausalLM, init_params

CAPTURE = (90, 91)  # stand-ins for the M-Prompt tokens


@pytest.fixture(scope="module")
def model():
    config = tiny_config(num_hidden_layers=3)
    return config, init_params(config, jax.random.PRNGKey(7))


def _teacher_forced_hidden(config, variables, prompt, answer, layer):
    ids = jnp.asarray([list(prompt) + list(answer)], jnp.int32)
    _, hidden = LlamaForCausalLM(config).apply(variables, ids, return_hidden=True, hidden_layer=layer)
    return np.asarray(hidden[0, len(prompt) :])


@pytest.mark.parametrize("layer", [-1, 2])
def test_captured_states_equal_the_teacher_forced_forward_pass(model, layer):
    config, variables = model
    prompts = [[1, 5, 9, 33, 2], [1, 4]]
    forced = np.full((2, 6), -1, np.int32)
    forced[0, :4] = [7, 90, 8, 91]  # row 0: two captures at answer indices 1 and 3
    forced[1, :3] = [12, 13, 91]  # row 1: one capture at index 2 (then free tokens)
    ids, mask = left_pad(prompts, pad_id=0)
    out = decode(
        config, variables, ids, mask, 8, forced_ids=forced, capture_ids=jnp.asarray(CAPTURE),
        capture_layer=layer, max_captures=3,
    )  # fmt: skip
    tokens = np.asarray(out.tokens)
    assert list(tokens[0, :4]) == [7, 90, 8, 91] and list(tokens[1, :3]) == [12, 13, 91]
    for row, prompt in enumerate(prompts):
        answer = tokens[row, : int(out.lengths[row])]
        expected_at = [j for j, t in enumerate(answer[:-1]) if t in CAPTURE]  # the last token is never fed
        count = int(out.captured_count[row])
        assert count == len(expected_at)
        assert list(np.asarray(out.captured_at[row, :count])) == expected_at
        reference = _teacher_forced_hidden(config, variables, prompt, answer, layer)
        np.testing.assert_allclose(np.asarray(out.captured[row, :count]), reference[expected_at], atol=1e-4)
        assert (np.asarray(out.captured_at[row, count:]) == -1).all()


def test_forced_prefix_then_free_tokens_continue_greedily(model):
    config, variables = model
    ids, mask = left_pad([[1, 5, 9]], pad_id=0)
    forced = np.asarray([[3, 4, -1, 6]], np.int32)
    out = decode(config, variables, ids, mask, 6, forced_ids=forced)
    tokens = np.asarray(out.tokens[0])
    assert tokens[0] == 3 and tokens[1] == 4 and tokens[3] == 6
    # the free positions are the greedy continuations of the forced prefix
    full, _ = greedy_generate(config, variables, *left_pad([[1, 5, 9, 3, 4]], 0), 1)
    assert tokens[2] == int(full[0, 0])


def test_top_k_one_and_tiny_top_p_are_greedy(model):
    config, variables = model
    ids, mask = left_pad([[1, 5, 9, 33], [1, 4]], pad_id=0)
    greedy, _ = greedy_generate(config, variables, ids, mask, 8)
    rng = jax.random.PRNGKey(3)
    for sampling in (SamplingConfig(temperature=1.5, top_k=1), SamplingConfig(temperature=1.5, top_p=1e-6)):
        out = decode(config, variables, ids, mask, 8, sampling=sampling, rng=rng)
        np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(greedy))


def test_sampling_is_reproducible_per_seed_and_varies_across_seeds(model):
    config, variables = model
    ids, mask = left_pad([[1, 5, 9, 33]] * 4, pad_id=0)
    hot = SamplingConfig(temperature=3.0)
    a = decode(config, variables, ids, mask, 10, sampling=hot, rng=jax.random.PRNGKey(0)).tokens
    b = decode(config, variables, ids, mask, 10, sampling=hot, rng=jax.random.PRNGKey(0)).tokens
    c = decode(config, variables, ids, mask, 10, sampling=hot, rng=jax.random.PRNGKey(1)).tokens
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert len({tuple(r) for r in np.asarray(a)}) > 1  # rows draw independently
    with pytest.raises(ValueError, match="needs an rng"):
        decode(config, variables, ids, mask, 4, sampling=hot)


def test_filter_logits_by_hand():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda s: np.isfinite(np.asarray(filter_logits(logits, s)))[0].tolist()  # noqa: E731
    assert kept(SamplingConfig(temperature=1.0, top_p=0.6)) == [True, True, False, False]  # 0.5 < 0.6 ≤ 0.8
    assert kept(SamplingConfig(temperature=1.0, top_p=0.5)) == [True, False, False, False]
    assert kept(SamplingConfig(temperature=1.0, top_p=0.81)) == [True, True, True, False]
    assert kept(SamplingConfig(temperature=1.0, top_k=3)) == [True, True, True, False]
    scaled = np.asarray(filter_logits(logits, SamplingConfig(temperature=2.0)))
    np.testing.assert_allclose(scaled, np.asarray(logits) / 2, rtol=1e-6)
    for bad in (dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)


def test_sampled_frequencies_follow_the_softmax():
    probs = np.asarray([0.5, 0.3, 0.15, 0.05])
    logits = jnp.log(jnp.tile(jnp.asarray(probs)[None], (20000, 1)))
    drawn = np.asarray(pick_tokens(logits, SamplingConfig(temperature=1.0), jax.random.PRNGKey(0)))
    freq = np.bincount(drawn, minlength=4) / len(drawn)
    np.testing.assert_allclose(freq, probs, atol=0.015)
    nucleus = np.asarray(pick_tokens(logits, SamplingConfig(temperature=1.0, top_p=0.6), jax.random.PRNGKey(1)))
    freq = np.bincount(nucleus, minlength=4) / len(nucleus)
    np.testing.assert_allclose(freq, [0.625, 0.375, 0, 0], atol=0.015)  # renormalised over the kept two


def test_top_k_fast_path_draws_from_the_filtered_distribution():
    """pick_tokens samples among lax.top_k's k best (then top-p on those); the frequencies must match the
    full-vocabulary filter_logits distribution."""
    rng = np.random.default_rng(0)
    row = jnp.asarray(rng.normal(size=(1, 40)) * 2.0, jnp.float32)
    logits = jnp.tile(row, (40000, 1))
    sampling = SamplingConfig(temperature=0.7, top_k=5, top_p=0.8)
    drawn = np.asarray(pick_tokens(logits, sampling, jax.random.PRNGKey(2)))
    freq = np.bincount(drawn, minlength=40) / len(drawn)
    expected = np.asarray(jax.nn.softmax(filter_logits(row, sampling), axis=-1))[0]
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(expected))
    np.testing.assert_allclose(freq, expected, atol=0.01)


def test_decoding_on_a_sharded_mesh_matches_one_device(model):
    """LLM variables split over (data, fsdp, tensor) = (2, 2, 2) of the 8 simulated devices, prompts over data ×
    fsdp: the same tokens and captured states as on one device."""
    from spider_jax import sharding
    from spider_jax.generate import variable_shardings

    config, variables = model
    prompts = [[1, 5, 9, 33, 2], [1, 4], [1, 7, 7], [1, 2, 3, 4, 5, 6]]
    ids, mask = left_pad(prompts, pad_id=0)
    forced = np.full((4, 3), -1, np.int32)
    forced[:, 1] = 90  # one capture per row at answer index 1
    kwargs = dict(forced_ids=forced, capture_ids=jnp.asarray(CAPTURE), max_captures=2)
    single = decode(config, variables, ids, mask, 8, **kwargs)

    mesh = sharding.create_mesh((2, 2, 2))
    placed = sharding.place(variables, {k: v for k, v in variable_shardings(config, mesh).items() if k in variables})
    kernel = placed["params"]["model"]["layers_0"]["mlp"]["gate_proj"]["kernel"]
    assert kernel.addressable_shards[0].data.shape != kernel.shape  # really split, not replicated
    rows = sharding.batch_sharding(mesh)
    with sharding.activation_mesh(mesh):
        sharded = decode(config, placed, jax.device_put(ids, rows), jax.device_put(mask, rows), 8, **kwargs)
    np.testing.assert_array_equal(np.asarray(sharded.tokens), np.asarray(single.tokens))
    np.testing.assert_array_equal(np.asarray(sharded.captured_at), np.asarray(single.captured_at))
    np.testing.assert_allclose(np.asarray(sharded.captured), np.asarray(single.captured), atol=1e-4)
