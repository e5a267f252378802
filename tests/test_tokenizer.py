"""Tokenizer backends, added template tokens, embedding resize."""

import numpy as np
import pytest
import transformers
from helpers import write_hf_tokenizer_folder

from spider_jax.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    TokenizerError,
    description_ids,
    load_tokenizer,
    resize_embeddings,
)

TEMPLATE_TOKENS = ["[OUT]", "[END]", "<IMAGE>", "</IMAGE>", "[IMAGE0]", "<AUDIO>", "</AUDIO>", "[AUDIO0]"]


def test_round_trip_plain_and_unicode(sp_model_path, tiny_corpus):
    tok = load_tokenizer(sp_model_path)
    assert isinstance(tok, SentencePieceTokenizer) and len(tok) == 300
    for text in tiny_corpus[:50] + ["Café ☃ naïve 1234!", "  double  spaces ", "tabs\tand\nnewlines"]:
        ids = tok.encode(text)
        assert ids[0] == tok.bos_id
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_matches_transformers_llama_tokenizer(sp_model_path, tiny_corpus, tmp_path):
    write_hf_tokenizer_folder(sp_model_path, tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = load_tokenizer(sp_model_path)
    for text in tiny_corpus[:100] + ["Café ☃ 123!"]:
        assert ours.encode(text) == ref(text).input_ids, text


def test_added_tokens_are_single_ids_and_round_trip(sp_model_path, tmp_path):
    tok = load_tokenizer(sp_model_path)
    n = tok.add_tokens(TEMPLATE_TOKENS)
    assert n == len(TEMPLATE_TOKENS) and len(tok) == 300 + n
    assert [tok.single_token_id(t) for t in TEMPLATE_TOKENS] == list(range(300, 300 + n))
    assert tok.add_tokens(["[OUT]"]) == 0  # idempotent
    text = "[OUT] A dog on the beach. <IMAGE> a dog running [IMAGE0] </IMAGE><AUDIO>waves[AUDIO0]</AUDIO> [END]"
    ids = tok.encode(text, add_bos=False)
    assert tok.decode(ids) == text
    assert ids.count(tok.token_to_id("[IMAGE0]")) == 1
    # save / load keeps the added ids
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode(text) == tok.encode(text)


def test_special_tokens_skipped_on_request(sp_model_path):
    tok = load_tokenizer(sp_model_path)
    tok.add_tokens(["[END]"], special=True)
    ids = tok.encode("a cat [END]", add_eos=True)
    assert tok.decode(ids, skip_special_tokens=True) == "a cat "
    assert tok.decode(ids).startswith("<s>") and "[END]" in tok.decode(ids)


def test_hf_folder_backend(sp_model_path, tmp_path):
    write_hf_tokenizer_folder(sp_model_path, tmp_path)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer)
    tok.add_tokens(TEMPLATE_TOKENS)
    ids = tok.encode("[OUT] a cat [END]")
    assert ids[0] == tok.bos_id and tok.token_to_id("[OUT]") in ids and tok.token_to_id("[END]") in ids
    assert "a cat" in tok.decode(ids)


def test_missing_and_bad_files_raise(tmp_path):
    with pytest.raises(TokenizerError, match="no such tokenizer"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(TokenizerError, match="neither tokenizer.model"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a sentencepiece model"):
        load_tokenizer(bad)


@pytest.mark.parametrize("tied", [False, True])
def test_resize_embeddings_new_rows_are_mean(tied):
    rng = np.random.RandomState(0)
    params = {"model": {"embed_tokens": rng.randn(10, 4).astype(np.float32)}}
    if not tied:
        params["lm_head"] = rng.randn(4, 10).astype(np.float32)
    out = resize_embeddings(params, 13, tied=tied)
    emb = out["model"]["embed_tokens"]
    assert emb.shape == (13, 4)
    np.testing.assert_array_equal(emb[:10], params["model"]["embed_tokens"])
    np.testing.assert_allclose(emb[10:], np.tile(params["model"]["embed_tokens"].mean(0), (3, 1)), rtol=1e-6)
    if not tied:
        head = out["lm_head"]
        assert head.shape == (4, 13)
        np.testing.assert_allclose(head[:, 12], params["lm_head"].mean(1), rtol=1e-6)
    else:
        assert "lm_head" not in out


def test_resize_embeddings_from_descriptions_jnp_and_errors():
    import jax.numpy as jnp

    rng = np.random.RandomState(1)
    params = {"model": {"embed_tokens": rng.randn(10, 4).astype(np.float32)}, "lm_head": rng.randn(4, 10)}
    out = resize_embeddings(
        {"model": {"embed_tokens": jnp.asarray(params["model"]["embed_tokens"])}, "lm_head": params["lm_head"]},
        13,
        init_from={10: [2], 12: [3, 7]},
    )
    emb, head = np.asarray(out["model"]["embed_tokens"]), out["lm_head"]
    np.testing.assert_allclose(emb[10], params["model"]["embed_tokens"][2], rtol=1e-6)
    np.testing.assert_allclose(emb[11], params["model"]["embed_tokens"].mean(0), rtol=1e-6)  # no description
    np.testing.assert_allclose(emb[12], params["model"]["embed_tokens"][[3, 7]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(head[:, 12], params["lm_head"][:, [3, 7]].mean(1), rtol=1e-6)
    with pytest.raises(ValueError, match=r"init_from\[10\] = \[11\]"):
        resize_embeddings(params, 13, init_from={10: [11]})  # a description must use old rows
    with pytest.raises(ValueError, match=r"init_from\[4\]"):
        resize_embeddings(params, 13, init_from={4: [1]})  # only new rows can be seeded


def test_template_tokens_get_distinct_descriptions(sp_model_path):
    from spider_jax import template as tpl

    descriptions = tpl.DEFAULT.token_descriptions()
    assert list(descriptions) == tpl.DEFAULT.special_tokens()
    assert len(set(descriptions.values())) == len(descriptions)  # no two tokens start from the same row
    assert descriptions["<VIDEO>"] == "video" and descriptions["[AUDIO0]"] == "audio prompt 0"
    tok = load_tokenizer(sp_model_path)
    base = len(tok)
    tok.add_tokens(tpl.DEFAULT.special_tokens())
    init_from = description_ids(tok, descriptions, base)
    assert set(init_from) == {tok.token_to_id(t) for t in descriptions}
    assert init_from[tok.token_to_id("<IMAGE>")] == tok.encode("image", add_bos=False)
    assert all(i < base for ids in init_from.values() for i in ids)
