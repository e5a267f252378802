"""CLIP / CLAP text encoders against transformers' PyTorch models, converters both ways, tokenizer helpers."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from spider_jax.convert.clap import load_clap_text, save_clap_text  # noqa: E402
from spider_jax.convert.clip import load_clip_text, resolve_component, save_clip_text  # noqa: E402
from spider_jax.convert.folders import CheckpointMismatchError  # noqa: E402
from spider_jax.models import text_encoders as te  # noqa: E402

TOL = 1e-4
VOCAB, WIDTH, LAYERS, HEADS, FFN = 99, 32, 2, 4, 37
MAX_DIFFS: dict[str, float] = {}


def _max_diff(name: str, ours, theirs) -> float:
    diff = float(np.max(np.abs(np.asarray(ours, np.float32) - theirs.detach().numpy())))
    MAX_DIFFS[name] = diff
    return diff


def _clip_batch(eos: int, pad: int, length: int = 77) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 5, 9 and `length` tokens (bos, words, eos) right-padded; word ids lie in [4, 95)."""
    rng = np.random.default_rng(0)
    ids = np.full((3, length), pad, np.int64)
    mask = np.zeros((3, length), np.int64)
    for row, n in enumerate((5, 9, length)):
        ids[row, :n] = np.concatenate([[96], rng.integers(4, 95, n - 2), [eos]])
        mask[row, :n] = 1
    return ids, mask


def _torch_clip(folder, with_projection: bool, hidden_act: str, eos_token_id: int):
    cfg = transformers.CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, max_position_embeddings=77, hidden_act=hidden_act, projection_dim=24,
        eos_token_id=eos_token_id, bos_token_id=96, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    model = cls(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so a scale/bias mix-up cannot pass
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def clip_cases(tmp_path_factory):
    """legacy: CLIPTextModel, quick_gelu, eos_token_id=2 (SD1.5's config: pools the largest id, here EOS 98);
    proj: WithProjection, gelu, eos_token_id=3 (pools the first EOS, which is not the largest id), padding = EOS
    (as SD tokenizers pad). Each case would pool another token under the other rule."""
    root = tmp_path_factory.mktemp("clip")
    return {
        "legacy": (root / "legacy", _torch_clip(root / "legacy", False, "quick_gelu", 2), _clip_batch(98, 0)),
        "proj": (root / "proj", _torch_clip(root / "proj", True, "gelu", 3), _clip_batch(3, 3)),
    }


def _run(module: nn.Module, params, ids, mask):
    fn = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m))
    return fn(params, jnp.asarray(ids, jnp.int32), None if mask is None else jnp.asarray(mask, jnp.int32))


def _check_clip(tag: str, torch_model, module, params, ids, mask):
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": torch.from_numpy(mask)}
        ref = torch_model(input_ids=torch.from_numpy(ids), **kwargs)
    out = _run(module, params, ids, mask)
    assert out.last_hidden_state.shape == (ids.shape[0], ids.shape[1], WIDTH)
    assert _max_diff(f"{tag}/last_hidden_state", out.last_hidden_state, ref.last_hidden_state) <= TOL
    if isinstance(torch_model, transformers.CLIPTextModelWithProjection):
        assert _max_diff(f"{tag}/text_embeds", out.text_embeds, ref.text_embeds) <= TOL
    else:
        assert _max_diff(f"{tag}/pooler_output", out.pooler_output, ref.pooler_output) <= TOL
    return out


@pytest.mark.parametrize("case", ["legacy", "proj"])
def test_clip_matches_transformers(clip_cases, case):
    folder, torch_model, (ids, mask) = clip_cases[case]
    config, params = load_clip_text(folder)
    assert config.with_projection == (case == "proj")
    assert config.hidden_act == ("gelu" if case == "proj" else "quick_gelu")
    module = te.clip_text_model(config)
    _check_clip(case, torch_model, module, params, ids, mask)
    if case == "legacy":  # SD pipelines pass no attention mask
        _check_clip(f"{case}-nomask", torch_model, module, params, ids, None)
    # The converter's tree is exactly the one init creates, and every parameter has logical axis names.
    boxed = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 77), jnp.int32))["params"]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    shapes = jax.tree_util.tree_map(lambda x: x.shape, nn.meta.unbox(boxed))
    assert shapes == jax.tree_util.tree_map(np.shape, params)


@pytest.mark.parametrize("case", ["legacy", "proj"])
def test_clip_export_round_trip(clip_cases, tmp_path, case):
    folder, _, (ids, mask) = clip_cases[case]
    config, params = load_clip_text(folder)
    save_clip_text(config, params, tmp_path / "out")
    cls = transformers.CLIPTextModelWithProjection if config.with_projection else transformers.CLIPTextModel
    reloaded, info = cls.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    _check_clip(f"{case}-export", reloaded.eval(), te.clip_text_model(config), params, ids, mask)
    config2, params2 = load_clip_text(tmp_path / "out")
    assert config2 == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)


def test_clip_checkpoint_mismatch(clip_cases, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = clip_cases["proj"][0]
    state = load_file(os.path.join(folder, "model.safetensors"))
    config_json = (folder / "config.json").read_text()

    def write(name, sd):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(config_json)
        save_file(sd, str(tmp_path / name / "model.safetensors"), metadata={"format": "pt"})
        return tmp_path / name

    bad = dict(state, **{"text_model.final_layer_norm.weight": torch.zeros(33)})
    with pytest.raises(CheckpointMismatchError, match=r"text_model\.final_layer_norm\.weight.*\(33,\).*\(32,\)"):
        load_clip_text(write("shape", bad))
    missing = {k: v for k, v in state.items() if k != "text_model.encoder.layers.1.mlp.fc2.bias"}
    with pytest.raises(CheckpointMismatchError, match=r"missing 1: \['text_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
        load_clip_text(write("missing", missing))
    with pytest.raises(CheckpointMismatchError, match="unexpected 1: .*text_model.extra.weight"):
        load_clip_text(write("extra", dict(state, **{"text_model.extra.weight": torch.zeros(2)})))
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        resolve_component(tmp_path, "text_encoder")
    assert resolve_component(folder, "text_encoder") == os.fspath(folder)


# ------------------------------------------------------------------------------------------------------ CLAP


def _clap_batch(length: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    ids = np.ones((3, length), np.int64)  # pad = 1
    mask = np.zeros((3, length), np.int64)
    for row, n in enumerate((4, 11, length)):
        ids[row, :n] = np.concatenate([[0], rng.integers(3, VOCAB, n - 2), [2]])
        mask[row, :n] = 1
    return ids, mask


_CLAP_TEXT = dict(
    vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
    num_attention_heads=HEADS, max_position_embeddings=40,
)  # fmt: skip


@pytest.fixture(scope="module")
def clap_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clap") / "text_encoder"
    torch.manual_seed(1)
    model = transformers.ClapTextModelWithProjection(transformers.ClapTextConfig(**_CLAP_TEXT, projection_dim=24))
    model.eval().save_pretrained(folder)
    return folder, model, _clap_batch()


def _check_clap(tag, torch_model, config, params, ids, mask):
    with torch.no_grad():
        ref = torch_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    out = _run(te.ClapTextModel(config), params, ids, mask)
    assert out.text_embeds.shape == (ids.shape[0], 24)
    assert _max_diff(f"{tag}/last_hidden_state", out.last_hidden_state, ref.last_hidden_state) <= TOL
    assert _max_diff(f"{tag}/text_embeds", out.text_embeds, ref.text_embeds) <= TOL
    return out


def test_clap_matches_transformers_and_round_trips(clap_case, tmp_path):
    folder, torch_model, (ids, mask) = clap_case
    config, params = load_clap_text(folder)
    assert config.projection_dim == 24 and config.max_text_length == 38
    out = _check_clap("clap", torch_model, config, params, ids, mask)
    normed = np.asarray(te.l2_normalize(out.text_embeds))
    np.testing.assert_allclose(np.linalg.norm(normed, axis=-1), 1.0, rtol=1e-5)

    save_clap_text(config, params, tmp_path / "out")
    reloaded, info = transformers.ClapTextModelWithProjection.from_pretrained(
        tmp_path / "out", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    _check_clap("clap-export", reloaded.eval(), config, params, ids, mask)

    bad_dir = tmp_path / "bad"
    save_clap_text(config.replace(projection_dim=16), {**params, "text_projection": {
        "linear1": {"kernel": np.zeros((WIDTH, 16), np.float32), "bias": np.zeros(16, np.float32)},
        "linear2": {"kernel": np.zeros((16, 16), np.float32), "bias": np.zeros(16, np.float32)},
    }}, bad_dir)  # fmt: skip
    (bad_dir / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text())}))
    with pytest.raises(CheckpointMismatchError, match=r"text_projection\.linear1\.weight.*\(16, 32\).*\(24, 32\)"):
        load_clap_text(bad_dir)


def test_clap_from_full_clap_model(tmp_path):
    """A full ClapModel folder (text + audio towers): the text part loads, the top-level projection wins."""
    audio = dict(hidden_size=32, patch_embeds_hidden_size=8, depths=[1, 1], num_attention_heads=[2, 2],
                 window_size=4, spec_size=32, num_mel_bins=16, patch_stride=[4, 4], patch_size=4)  # fmt: skip
    torch.manual_seed(2)
    full = transformers.ClapModel(
        transformers.ClapConfig(text_config=_CLAP_TEXT, audio_config=audio, projection_dim=24)
    )
    full.eval().save_pretrained(tmp_path)
    config, params = load_clap_text(tmp_path, param_dtype="float32")
    ids, mask = _clap_batch()
    with torch.no_grad():
        ref = full.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    out = _run(te.ClapTextModel(config), params, ids, mask)
    # transformers' get_text_features returns the L2-normalised projection, as AudioLDM uses it
    assert _max_diff("clap-full/normalized", te.l2_normalize(out.text_embeds), ref.pooler_output) <= TOL


def test_reference_shapes():
    """The decoder conditioning widths the design names: SD1.5 77×768, Zeroscope 77×1024, AudioLDM 512."""
    ids = jnp.zeros((1, 77), jnp.int32)
    for config, width in ((te.CLIPTextConfig(), 768), (te.OPENCLIP_H_TEXT, 1024)):
        module = te.CLIPTextModel(config)
        variables = jax.eval_shape(module.init, jax.random.key(0), ids)
        out = jax.eval_shape(module.apply, variables, ids)
        assert out.last_hidden_state.shape == (1, 77, width)
    module = te.ClapTextModel(te.ClapTextConfig())
    variables = jax.eval_shape(module.init, jax.random.key(0), ids)
    assert jax.eval_shape(module.apply, variables, ids).text_embeds.shape == (1, 512)


# ------------------------------------------------------------------------------------------------- tokenizers


def _write_clip_vocab(folder) -> dict[str, int]:
    letters = "acdgot"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({f"{c}</w>": len(vocab) + i for i, c in enumerate(letters)})
    merges = ["c a", "ca t</w>", "d o", "do g</w>"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab


def test_clip_tokenizer_helpers(tmp_path):
    vocab = _write_clip_vocab(tmp_path / "tok")
    tok = te.load_clip_tokenizer(tmp_path / "tok")
    bos, eos, cat, dog = vocab["<|startoftext|>"], vocab["<|endoftext|>"], vocab["cat</w>"], vocab["dog</w>"]
    ids, mask = te.tokenize(tok, ["a cat", "dog dog dog dog dog dog dog dog cat"], max_length=8)
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape == (2, 8)
    assert ids[0].tolist() == [bos, vocab["a</w>"], cat, eos, eos, eos, eos, eos]
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert ids[1].tolist() == [bos] + [dog] * 6 + [eos] and mask[1].all()  # truncated, EOS kept
    with pytest.raises(ValueError, match="max_length"):
        te.tokenize(tok, "a cat")  # no tokenizer_config.json: the length must be given
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    ids, mask = te.tokenize(te.load_clip_tokenizer(tmp_path / "tok"), "a cat")
    assert ids.shape == (1, 77) and int(mask.sum()) == 4
    with pytest.raises(FileNotFoundError, match="empty"):
        (tmp_path / "empty").mkdir()
        te.load_clip_tokenizer(tmp_path / "empty")


def test_clap_tokenizer_helper(tmp_path):
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4, "Ġ": 5, "d": 6, "o": 7, "g": 8, "Ġa": 9, "Ġd": 10,
             "og": 11, "Ġdog": 12}  # fmt: skip
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ a\nĠ d\no g\nĠd og\n")
    tok = te.load_clap_tokenizer(tmp_path)
    ids, mask = te.tokenize(tok, ["a dog"], max_length=6)
    assert ids.tolist() == [[0, 4, 12, 2, 1, 1]] and mask.tolist() == [[1, 1, 1, 1, 0, 0]]
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        te.load_clap_tokenizer(tmp_path / "missing_dir")


def test_report_max_diffs():
    """Not a check: prints the measured max |diff| (run with -s) so reviews can see the margins."""
    for name, diff in sorted(MAX_DIFFS.items()):
        print(f"{name}: {diff:.2e}")
