"""Caption metrics (pycocoevalcap), SPICE availability, AMMG group alignment, modality following, TGI B@4.

Java metrics (PTB tokenizer, METEOR) start a JVM each; they run in few tests so the file stays well under a
minute. Most tests pass ``tokenize=False`` on already lower-cased, punctuation-free text, which is what the PTB
tokenizer would produce anyway.
"""

import itertools
import shutil

import pytest

from spider_jax import template as tpl
from spider_jax.metrics import ammg, captioning
from spider_jax.metrics.captioning import CaptionMetricError, caption_scores

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java not installed (PTB tokenizer, METEOR)")

CAT = "a black cat sits on a red sofa"
DOG = "two brown dogs run across the green field"


@pytest.fixture
def no_spice_jars(tmp_path, monkeypatch):
    """SPICE's jar folder is an empty tmp dir, and any download attempt fails the test."""
    import pycocoevalcap.spice.get_stanford_models as gsm

    def no_download(*args, **kwargs):
        raise AssertionError("pycocoevalcap tried to download CoreNLP")

    monkeypatch.setattr(captioning, "spice_lib_dir", lambda: str(tmp_path))
    monkeypatch.setattr(gsm, "urlretrieve", no_download)
    return tmp_path


# ------------------------------------------------------------------------------------------ caption metrics


def test_identical_captions_score_one_and_disjoint_zero(no_spice_jars):
    preds = {"a": CAT, "b": DOG}
    refs = {"a": [CAT, "a cat on a sofa"], "b": [DOG]}
    same = caption_scores(preds, refs, ("bleu", "rouge", "cider"), tokenize=False, per_item=True)
    assert same["count"] == 2 and same["skipped"] == {}
    assert same["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert same["ROUGE_L"] == pytest.approx(1.0)
    assert same["per_item"]["a"]["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    other = caption_scores({"a": "xx yy zz ww", "b": "qq rr ss tt"}, refs, ("bleu", "rouge", "cider"), tokenize=False)
    assert other["Bleu_1"] == pytest.approx(0.0, abs=1e-6) and other["Bleu_4"] == pytest.approx(0.0, abs=1e-6)
    assert other["ROUGE_L"] == 0.0 and other["CIDEr"] == 0.0


def test_cider_d_hand_computed():
    """Two images, one distinct reference each: every n-gram has df 1, so a perfect match scores
    10 · mean over n=1..4 of cos_n; a 2-word caption has no 3/4-grams (cos 0) → 10 · (1+1+0+0)/4 = 5."""
    two_words = caption_scores({1: "a b", 2: "c d"}, {1: ["a b"], 2: ["c d"]}, ("cider",), tokenize=False)
    assert two_words["CIDEr"] == pytest.approx(5.0)
    four_words = caption_scores(
        {1: "a b c d", 2: "e f g h"}, {1: ["a b c d"], 2: ["e f g h"]}, ("cider",), tokenize=False
    )
    assert four_words["CIDEr"] == pytest.approx(10.0)
    # one image alone: IDF = log(1/1) = 0 for every n-gram, so CIDEr is 0 even for a perfect match (library quirk)
    assert caption_scores({1: "a b c d"}, {1: ["a b c d"]}, ("cider",), tokenize=False)["CIDEr"] == 0.0


def test_cider_and_bleu_match_the_library_called_directly():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    preds = {0: "a man rides a horse on the beach", 1: "a plate of food", 2: "people walk in the city street"}
    refs = {
        0: ["a man riding a horse on a beach", "a person on a horse by the sea"],
        1: ["a plate with food on a table", "food on a white plate"],
        2: ["a crowd walks down a city street", "people walking on a street"],
    }
    ours = caption_scores(preds, refs, ("bleu", "cider"), tokenize=False, per_item=True)
    res = {k: [v] for k, v in preds.items()}
    cider, cider_items = Cider().compute_score(refs, res)
    bleu, _ = Bleu(4).compute_score(refs, res, verbose=0)
    assert ours["CIDEr"] == pytest.approx(cider) and 0 < ours["CIDEr"] < 10
    assert [ours["per_item"][k]["CIDEr"] for k in preds] == pytest.approx(list(cider_items))
    assert [ours[f"Bleu_{n}"] for n in range(1, 5)] == pytest.approx(bleu)


@needs_java
def test_ptb_tokenizer_meteor_and_line_breaks(no_spice_jars):
    """One PTB + one METEOR JVM: punctuation/case removed, and a caption holding '\\r' or U+2028 (which the
    library's tokenizer would split into extra lines, shifting later ids) stays aligned."""
    preds = {"x": "A black cat\rsits on a red sofa.", "y": "Two brown dogs run across the green field!", "z": ""}
    refs = {"x": [CAT], "y": ["two brown dogs\u2028run across the green field"], "z": ["an empty answer"]}
    out = caption_scores(preds, refs, ("bleu", "meteor", "rouge", "cider", "spice", "spider"), per_item=True)
    assert out["count"] == 3
    for k in ("x", "y"):
        assert out["per_item"][k]["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
        assert out["per_item"][k]["METEOR"] == pytest.approx(1.0)
    assert out["per_item"]["z"]["METEOR"] == 0.0 and out["per_item"]["z"]["CIDEr"] == 0.0
    assert set(out["skipped"]) == {"SPICE", "SPIDEr"} and "SPICE" not in out and "SPIDEr" not in out
    assert captioning.ptb_tokenize({1: ["Hello, World!", "It's a dog-sled."]}) == {
        1: ["hello world", "it 's a dog-sled"]
    }


def test_spice_skipped_when_jars_absent(no_spice_jars):
    out = caption_scores({1: CAT, 2: DOG}, {1: [CAT], 2: [DOG]}, ("cider", "spice", "spider"), tokenize=False)
    assert "CIDEr" in out and "SPICE" not in out and "SPIDEr" not in out
    reason = out["skipped"]["SPICE"]
    assert "stanford-corenlp-3.6.0.jar" in reason and "stanford-corenlp-3.6.0-models.jar" in reason
    assert str(no_spice_jars) in reason
    assert out["skipped"]["SPIDEr"].startswith("needs SPICE")
    # SPIDEr alone: its CIDEr part is not reported, and the reason says why it is missing
    only = caption_scores({1: CAT, 2: DOG}, {1: [CAT], 2: [DOG]}, ("spider",), tokenize=False)
    assert set(only) == {"count", "skipped"} and set(only["skipped"]) == {"SPIDEr"}
    # the jars present: nothing missing (detection only; SPICE itself is not run here)
    for name in captioning.spice_required_jars():
        (no_spice_jars / name).write_bytes(b"")
    assert captioning.spice_missing_jars() == []


def test_spice_crash_is_reported_as_skipped(monkeypatch):
    """Jars present but spice-1.0.jar fails (e.g. a Java it does not support): a reason, never a number."""
    import subprocess

    def crash(gts, res):
        raise subprocess.CalledProcessError(1, ["java", "-jar", "spice-1.0.jar"])

    monkeypatch.setattr(captioning, "spice_unavailable_reason", lambda: None)
    monkeypatch.setattr(captioning, "_spice", crash)
    with pytest.warns(UserWarning, match="SPICE skipped"):
        out = caption_scores({1: CAT, 2: DOG}, {1: [CAT], 2: [DOG]}, ("spice", "spider"), tokenize=False)
    assert set(out) == {"count", "skipped"} and "spice-1.0.jar failed" in out["skipped"]["SPICE"]


def test_caption_input_errors():
    with pytest.raises(CaptionMetricError, match=r"references without predictions for ids \['b'\]"):
        caption_scores({"a": CAT}, {"a": [CAT], "b": [DOG]}, ("bleu",), tokenize=False)
    with pytest.raises(CaptionMetricError, match=r"predictions without references for ids \['z'\]"):
        caption_scores({"a": CAT, "z": DOG}, {"a": [CAT]}, ("bleu",), tokenize=False)
    with pytest.raises(CaptionMetricError, match="prediction for id 'a' is NoneType"):
        caption_scores({"a": None}, {"a": [CAT]}, ("bleu",), tokenize=False)
    with pytest.raises(CaptionMetricError, match="non-empty list"):
        caption_scores({"a": CAT}, {"a": []}, ("bleu",), tokenize=False)
    with pytest.raises(ValueError, match="unknown caption metrics"):
        caption_scores({"a": CAT}, {"a": [CAT]}, ("bleurt",), tokenize=False)
    subset = caption_scores({"a": CAT}, {"a": CAT, "b": [DOG]}, ("bleu",), tokenize=False, restrict_to_predictions=True)
    assert subset["count"] == 1 and subset["Bleu_4"] == pytest.approx(1.0, abs=1e-6)  # a bare str reference is fine
    empty = caption_scores({}, {}, ("bleu", "cider"))
    assert empty["count"] == 0 and empty["skipped"]["CIDEr"] == "no predictions to score" and "Bleu_4" not in empty


# ------------------------------------------------------------------------------------------ AMMG


def _answer(*groups, trailing=""):
    return tpl.format_answer([tpl.Group(m, p, t) for m, p, t in groups], trailing)


REFERENCE = _answer(
    ("IMAGE", "the forbidden city", "Beijing has a long history."),
    ("AUDIO", "peking opera", "Listen to the opera."),
    ("IMAGE", "the great wall", "Walk on the wall."),
    trailing="Enjoy the food.",
)


def test_align_groups_pairs_by_modality_occurrence():
    produced = _answer(
        ("AUDIO", "opera music", "Here is opera."),
        ("IMAGE", "palace", "Here is the palace."),
        ("VIDEO", "city tour", "And a video."),
    )
    records = ammg.align_groups(produced, REFERENCE, answer_id="bj")
    got = [(r.modality, r.occurrence, r.produced_index, r.reference_index, r.status) for r in records]
    assert got == [
        ("IMAGE", 0, 1, 0, "matched"),
        ("AUDIO", 0, 0, 1, "matched"),
        ("IMAGE", 1, None, 2, "missing"),
        ("VIDEO", 0, 2, None, "extra"),
    ]
    first = records[0]
    assert (first.produced_t_prompt, first.reference_t_prompt) == ("palace", "the forbidden city")
    assert first.reference_text_before == "Beijing has a long history." and first.answer_id == "bj"
    # requested modalities only (Instance.targets): no texts on the reference side
    bare = ammg.align_groups(produced, ("IMAGE", "IMAGE"))
    assert [(r.status, r.reference_t_prompt) for r in bare] == [
        ("matched", None),
        ("missing", None),
        ("extra", None),
        ("extra", None),
    ]


def test_malformed_answers_are_split_with_warnings():
    no_end = "[OUT] A dog. <IMAGE> a dog [IMAGE0] </IMAGE> and its bark <AUDIO> a bark [AUDIO0] </AUDIO>"
    unclosed = "[OUT] A dog. <IMAGE> a dog [IMAGE0] and a bark <AUDIO> a bark [AUDIO0] [END]"
    never_closed = "[OUT] A dog. <VIDEO> a dog running [VIDEO0] [END]"
    requested = ("IMAGE", "AUDIO")
    out = ammg.ammg_scores(
        {"no_end": no_end, "unclosed": unclosed, "never_closed": never_closed, "plain": "just text, no groups"},
        {"no_end": requested, "unclosed": requested, "never_closed": ("VIDEO",), "plain": ()},
        tokenize=False,
    )
    assert any("[END]" in w for w in out["parser_warnings"]["no_end"])
    assert any("not closed" in w for w in out["parser_warnings"]["unclosed"])
    assert any("never closed" in w for w in out["parser_warnings"]["never_closed"])
    statuses = [r.status for r in out["records"]]
    assert statuses == ["matched"] * 5
    assert out["following"]["exact_order"] == 1.0 and out["following"]["macro_f1"] == 1.0
    assert out["text"]["skipped"] == {"text": "no reference answer has a text response"}


def test_modality_prf_consistent_with_spider_eval():
    from spider_jax.spider_eval import modality_f1

    assert ammg.modality_prf([], []) == (1.0, 1.0, 1.0)
    assert ammg.modality_prf(["IMAGE"], []) == (0.0, 0.0, 0.0)
    assert ammg.modality_prf([], ["IMAGE"]) == (0.0, 0.0, 0.0)
    p, r, f = ammg.modality_prf(["IMAGE", "IMAGE", "AUDIO"], ["IMAGE", "VIDEO"])
    assert (p, r, f) == pytest.approx((1 / 3, 1 / 2, 0.4))
    pool = [
        (),
        *itertools.chain.from_iterable(itertools.product(["IMAGE", "AUDIO", "VIDEO"], repeat=n) for n in (1, 2)),
    ]
    for produced, requested in itertools.product(pool, repeat=2):
        assert ammg.modality_prf(produced, requested)[2] == pytest.approx(modality_f1(produced, requested))


def test_modality_following_micro_macro():
    produced = [["IMAGE", "AUDIO"], ["IMAGE"], [], ["AUDIO", "IMAGE"]]
    requested = [["IMAGE", "AUDIO"], ["IMAGE", "VIDEO"], [], ["IMAGE", "AUDIO"]]
    out = ammg.modality_following(produced, requested)
    assert out["answers"] == 4
    assert out["exact_order"] == 0.5 and out["exact_multiset"] == 0.75 and out["same_count"] == 0.75
    # micro: overlap 2 + 1 + 0 + 2 = 5 groups, of 5 produced and 6 requested
    assert out["micro_precision"] == pytest.approx(5 / 5) and out["micro_recall"] == pytest.approx(5 / 6)
    assert out["micro_f1"] == pytest.approx(2 * (5 / 6) / (1 + 5 / 6))
    assert out["macro_recall"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert out["macro_f1"] == pytest.approx((1 + 2 / 3 + 1 + 1) / 4)
    assert ammg.modality_following([[]], [[]])["micro_f1"] == 1.0
    with pytest.raises(ValueError, match="2 produced modality lists but 1"):
        ammg.modality_following([[], []], [[]])


@needs_java
def test_tgi_bleu4_and_ammg_text_scores():
    """Response text = answer with groups and [OUT]/[END] removed; identical texts give B@4 = 1."""
    assert ammg.response_text(REFERENCE) == (
        "Beijing has a long history. Listen to the opera. Walk on the wall. Enjoy the food."
    )
    other = _answer(("IMAGE", "a temple", "Beijing has a long history."), trailing="Listen to the opera now, walk.")
    preds = {"bj": REFERENCE, "sh": _answer(trailing="Shanghai is a big city by the river with tall towers.")}
    refs = {"bj": REFERENCE, "sh": "Shanghai is a big city by the river with tall towers."}
    assert ammg.tgi_bleu4(preds, refs)["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    worse = ammg.tgi_bleu4({"bj": other, "sh": preds["sh"]}, refs, tokenize=False)
    assert 0.0 < worse["Bleu_4"] < 1.0 and worse["count"] == 2
    out = ammg.ammg_scores({"bj": other}, {"bj": REFERENCE}, tokenize=False)
    assert out["text"]["count"] == 1 and 0.0 <= out["text"]["Bleu_4"] < 1.0
    assert out["following"]["macro_recall"] == pytest.approx(1 / 3)
