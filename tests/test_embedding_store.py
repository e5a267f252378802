"""Embedding store: write/load round trips, vectorised lookup semantics, error messages, HF text encoders."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from spider_jax import embedding_store as es
from spider_jax.input_pipeline import stable_key


def _items(n: int, shape=(3, 4), seed: int = 0) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(stable_key(f"media/{i}.jpg"), rng.normal(size=shape).astype(np.float32)) for i in range(n)]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(tmp_path, dtype):
    items = _items(20)
    out = es.write_store(str(tmp_path / "s"), items, name="imagebind", dtype=dtype, meta={"encoder": "x"})
    assert sorted(os.listdir(out)) == [es.RECORDS_FILE, es.META_FILE]
    info = json.load(open(os.path.join(out, es.META_FILE)))
    assert info == dict(
        format_version=es.FORMAT_VERSION,
        name="imagebind",
        shape=[3, 4],
        dtype=dtype,
        count=20,
        duplicates=0,
        meta={"encoder": "x"},
    )
    store = es.load_store(out)
    assert len(store) == 20 and store.shape == (3, 4) and store.dtype == np.dtype(dtype)
    assert store.name == "imagebind" and store.meta == {"encoder": "x"} and store.path == out
    assert store.keys.dtype == np.int64 and np.all(np.diff(store.keys) > 0)
    keys = np.array([k for k, _ in items], np.int64)
    want = np.stack([v for _, v in items])
    got, found = store.lookup(keys)
    assert got.dtype == np.float32 and got.shape == (20, 3, 4) and found.all()
    if dtype == "float32":
        np.testing.assert_array_equal(got, want)
    else:  # exactly the float16 rounding of the input, and within its relative precision
        np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(got, want, rtol=2**-10, atol=2**-14)
    assert keys[3] in store and int(keys[3]) in store
    assert 0 not in store and 12345 not in store and -1 not in store and "x" not in store


def test_lookup_zero_keys_2d_and_allow_missing(tmp_path):
    items = _items(5, shape=(6,))
    store = es.load_store(es.write_store(str(tmp_path), items, name="te", dtype="float32"))
    k = [key for key, _ in items]
    keys = np.array([[k[0], 0, k[4]], [0, 0, k[2]]], np.int64)  # (B, G), 0 = unused slot
    emb, found = store.lookup(keys)
    assert emb.shape == (2, 3, 6) and found.shape == (2, 3)
    np.testing.assert_array_equal(found, [[True, False, True], [False, False, True]])
    np.testing.assert_array_equal(emb[0, 0], items[0][1])
    np.testing.assert_array_equal(emb[0, 2], items[4][1])
    np.testing.assert_array_equal(emb[1, 2], items[2][1])
    assert not emb[~found].any()
    # allow_missing: an absent non-zero key reads as zeros / not found instead of raising
    emb, found = store.lookup(np.array([k[1], 77, 0]), allow_missing=True)
    np.testing.assert_array_equal(found, [True, False, False])
    assert not emb[1:].any() and emb[0].any()
    # all-zero and empty key arrays never raise
    emb, found = store.lookup(np.zeros((2, 0), np.int64))
    assert emb.shape == (2, 0, 6) and found.shape == (2, 0)
    assert not store.lookup(np.zeros(4, np.int32))[1].any()
    with pytest.raises(TypeError, match="integers"):
        store.lookup(np.array([1.0]))


def test_missing_key_error_message(tmp_path):
    path = str(tmp_path / "clip_te")
    store = es.load_store(es.write_store(path, _items(4), name="sd_clip"))
    known = int(store.keys[0])
    with pytest.raises(es.MissingEmbeddingError) as err:
        store.lookup(np.array([[known, 11, 0], [22, 11, 0]]))
    assert isinstance(err.value, KeyError)
    msg = str(err.value)
    assert "2 key(s) missing" in msg and "'sd_clip'" in msg and path in msg and "[11, 22]" in msg, msg
    assert "allow_missing=True" in msg and "(4 entries)" in msg
    np.testing.assert_array_equal(err.value.missing, [11, 22])
    many = np.arange(1, 101, dtype=np.int64)  # only the first few keys are named
    with pytest.raises(es.MissingEmbeddingError, match=r"100 key\(s\) missing .*\[1, 2, 3, 4, 5\];"):
        store.lookup(many)


def test_write_validation(tmp_path):
    a, b = np.zeros((2, 3)), np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"key 7 has shape \(3, 2\).*key 5\) has shape \(2, 3\)"):
        es.write_store(str(tmp_path / "a"), [(5, a), (6, a), (7, b)], name="x")
    for bad in (0, -3, 2**63):
        with pytest.raises(ValueError, match=f"key {bad} must be a positive int64"):
            es.write_store(str(tmp_path / "b"), [(1, a), (bad, a)], name="x")
    with pytest.raises(ValueError, match="dtype must be one of"):
        es.write_store(str(tmp_path / "c"), [(1, a)], name="x", dtype="bfloat16")
    with pytest.raises(ValueError, match="key 2 has non-finite values as float16"):
        es.write_store(str(tmp_path / "d"), [(1, a), (2, a + 1e5)], name="x")  # overflows float16
    with pytest.raises(ValueError, match="no items"):
        es.write_store(str(tmp_path / "e"), [], name="x")
    for d in "abcde":  # a failed write never leaves a loadable store behind
        assert not os.path.exists(tmp_path / d / es.META_FILE)


def test_duplicates_keep_first(tmp_path):
    v = [np.full((2,), i, np.float32) for i in range(4)]
    path = es.write_store(str(tmp_path), [(9, v[0]), (3, v[1]), (9, v[2]), (9, v[3])], name="d", dtype="float32")
    info = json.load(open(os.path.join(path, es.META_FILE)))
    assert info["count"] == 2 and info["duplicates"] == 2
    store = es.load_store(path)
    np.testing.assert_array_equal(store.keys, [3, 9])
    np.testing.assert_array_equal(store.lookup(np.array([9, 3]))[0], [v[0], v[1]])


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*not found; .*write_store"):
        es.load_store(str(tmp_path / "nowhere"))
    path = es.write_store(str(tmp_path / "s"), _items(3, shape=(4,)), name="s", dtype="float32")
    os.remove(os.path.join(path, es.RECORDS_FILE))
    with pytest.raises(FileNotFoundError, match=es.RECORDS_FILE):
        es.load_store(path)
    # a record of the wrong length: 8-byte key + 4 float32 = 24 bytes expected, record 1 has 20
    records = os.path.join(path, es.RECORDS_FILE)
    w = ArrayRecordWriter(records, "group_size:1")
    for i, n in enumerate([4, 3, 4]):
        w.write((i + 1).to_bytes(8, "little") + np.zeros(n, np.float32).tobytes())
    w.close()
    with pytest.raises(ValueError, match=r"embeddings\.array_record: record 1 has 20 bytes, expected 24") as err:
        es.load_store(path)
    assert path in str(err.value)
    # a count that disagrees with store.json
    meta = os.path.join(path, es.META_FILE)
    info = json.load(open(meta))
    json.dump({**info, "count": 5}, open(meta, "w"))
    with pytest.raises(ValueError, match="holds 3 records but .* says count=5"):
        es.load_store(path)


def test_in_memory_store_sorts_and_rejects_duplicates():
    store = es.EmbeddingStore(np.array([30, 10, 20]), np.arange(3, dtype=np.float32)[:, None], name="m")
    np.testing.assert_array_equal(store.keys, [10, 20, 30])
    np.testing.assert_array_equal(store.lookup(np.array([30, 10]))[0][:, 0], [0.0, 1.0])
    with pytest.raises(ValueError, match="duplicate keys"):
        es.EmbeddingStore(np.array([1, 1]), np.zeros((2, 3)))


# ---- Hugging Face text encoders, tiny and random, built offline ----

_ASCII = [chr(i) for i in range(33, 127)]  # printable ASCII maps to itself in byte-level BPE
_SPACE = "\u0120"  # byte-level BPE's stand-in for a leading space


def _write_bpe(folder, vocab: dict[str, int], merges: list[str]) -> tuple[str, str]:
    os.makedirs(folder, exist_ok=True)
    vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    json.dump(vocab, open(vocab_file, "w"))
    open(merges_file, "w").write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def _randomise(model, seed: int):
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():  # HF zero-initialises biases; randomise everything so parity means something
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0))
    return model.eval()


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> str:
    """A flat folder: CLIPTextModel weights + tokenizer files side by side."""
    import transformers

    folder = str(tmp_path_factory.mktemp("clip"))
    vocab: dict[str, int] = {}
    for tok in _ASCII + [c + "</w>" for c in _ASCII]:
        vocab[tok] = len(vocab)
    merges = ["c a", "ca t</w>", "d o", "do g</w>", "r e", "re d</w>"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = transformers.CLIPTokenizer(*_write_bpe(folder + "/bpe", vocab, merges), model_max_length=77)
    tokenizer.save_pretrained(folder)
    config = transformers.CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    _randomise(transformers.CLIPTextModel(config), 0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clap_folder(tmp_path_factory) -> str:
    """A diffusers-style pipeline folder: text_encoder/ (ClapTextModelWithProjection) + tokenizer/ (RoBERTa BPE)."""
    import transformers

    folder = str(tmp_path_factory.mktemp("audioldm"))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for tok in _ASCII + [_SPACE]:
        vocab[tok] = len(vocab)
    merges = [f"{_SPACE} d", f"{_SPACE}d o", f"{_SPACE}do g", "b a", "ba r"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    vocab["<mask>"] = len(vocab)
    bpe = _write_bpe(folder + "/bpe", vocab, merges)
    transformers.RobertaTokenizer(*bpe, model_max_length=24).save_pretrained(folder + "/tokenizer")
    config = transformers.ClapTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=26,  # RoBERTa positions start after padding_idx: model_max_length + 2
        projection_dim=16,
        pad_token_id=1,
    )
    _randomise(transformers.ClapTextModelWithProjection(config), 1).save_pretrained(folder + "/text_encoder")
    return folder


CAPTIONS = ["a red cat", "a dog barking", "a red cat", "", "x" * 300, "a dog barking", "the bar"]


@pytest.mark.parametrize("backend", es.BACKENDS)
def test_clip_text_store_matches_transformers(tmp_path, clip_folder, backend):
    import torch
    import transformers

    encoder = es.text_encoder(clip_folder, "clip", backend=backend)
    path = es.build_text_store(str(tmp_path / "te"), CAPTIONS, encoder, name="sd", batch_size=2, dtype="float32")
    store = es.load_store(path)
    unique = list(dict.fromkeys(CAPTIONS))
    assert len(store) == len(unique) == 5 and store.shape == (77, 32) and store.dtype == np.float32

    model = transformers.CLIPTextModel.from_pretrained(clip_folder).eval()
    tok = transformers.CLIPTokenizer.from_pretrained(clip_folder)
    ids = tok(unique, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():  # StableDiffusionPipeline.encode_prompt: no attention mask, last hidden state
        want = model(ids).last_hidden_state.numpy()
    got, found = store.lookup(np.array([stable_key(t) for t in unique]))
    assert found.all()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.abs(got).max() > 0.1  # not trivially zero
    assert store.text(stable_key("a red cat")) == "a red cat" and store.text(stable_key("x" * 300)) == "x" * 300
    assert store.text(12345) is None
    lines = [json.loads(line) for line in open(os.path.join(path, es.TEXTS_FILE))]
    assert [r["text"] for r in lines] == unique and [r["key"] for r in lines] == [stable_key(t) for t in unique]


@pytest.mark.parametrize("backend", es.BACKENDS)
def test_clap_text_store_is_l2_normalised_like_audioldm(tmp_path, clap_folder, backend):
    import torch
    import transformers

    encoder = es.text_encoder(clap_folder, "clap", backend=backend)
    path = es.build_text_store(str(tmp_path / "te"), CAPTIONS, encoder, name="audioldm", dtype="float32")
    store = es.load_store(path)
    unique = list(dict.fromkeys(CAPTIONS))
    assert len(store) == 5 and store.shape == (16,)

    model = transformers.ClapTextModelWithProjection.from_pretrained(clap_folder + "/text_encoder").eval()
    tok = transformers.RobertaTokenizer.from_pretrained(clap_folder + "/tokenizer")
    inputs = tok(unique, padding="max_length", max_length=24, truncation=True, return_tensors="pt")
    with torch.no_grad():  # AudioLDMPipeline._encode_prompt: text_embeds with the attention mask, then F.normalize
        raw = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).text_embeds
    want = torch.nn.functional.normalize(raw, dim=-1).numpy()
    got, found = store.lookup(np.array([stable_key(t) for t in unique]))
    assert found.all()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw.numpy(), axis=-1), 1.0)  # the model's own output is not normalised


@pytest.mark.parametrize("backend", es.BACKENDS)
def test_text_encoder_rejects_unknown_kind_and_backend(clip_folder, backend):
    with pytest.raises(ValueError, match="unknown text encoder kind 't5'"):
        es.text_encoder(clip_folder, "t5", backend=backend)
    with pytest.raises(ValueError, match="unknown backend 'tf'"):
        es.text_encoder(clip_folder, "clip", backend="tf")


def test_cli_text(tmp_path, clip_folder, capsys):
    captions = tmp_path / "caps.jsonl"
    captions.write_text("\n".join(json.dumps({"caption": c, "id": i}) for i, c in enumerate(CAPTIONS)) + "\n\n")
    out = str(tmp_path / "out_store")
    args = ["text", "--encoder_folder", clip_folder, "--kind", "clip", "--captions", str(captions), "--out", out]
    es.main(args)
    assert "wrote 5 embeddings of shape (77, 32) (float16)" in capsys.readouterr().out
    store = es.load_store(out)
    assert store.name == "out_store" and store.meta["kind"] == "clip" and stable_key("the bar") in store
    txt = tmp_path / "caps.txt"
    txt.write_text("a red cat\n\n  the bar  \n")
    assert es.read_captions(str(txt)) == ["a red cat", "the bar"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"caption": "a"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: no 'caption' field"):
        es.read_captions(str(bad))
