"""TMM instance construction: pools (paper counts), builders, answers that parse cleanly, stage mixtures."""

import json
from collections import Counter

import numpy as np
import pytest

from spider_jax import template as tpl
from spider_jax import tmm

PAPER_COUNTS = {
    "t2i_ts": 24,
    "t2v_ts": 24,
    "t2a_ts": 24,
    "i2t_ts": 17,
    "v2t_ts": 17,
    "a2t_ts": 17,
    "i2b_ts": 18,
    "i2m_ts": 16,
    "smmi": 24,
    "spmi": 5,
    "tgi": 6,
}
X2X = ("i2t", "v2t", "a2t", "t2i", "t2v", "t2a", "i2b", "i2m")
DEFINING = {"t2i_ts": "IMAGE", "t2v_ts": "VIDEO", "t2a_ts": "AUDIO", "i2b_ts": "BOX", "i2m_ts": "MASK"}


@pytest.fixture(scope="module")
def pools():
    return tmm.load_pools()


def _sources():
    caps = [
        tmm.Sample(
            f"a dog number {i} runs on the beach",
            (("IMAGE", f"img{i}.jpg"), ("VIDEO", f"v{i}.mp4"), ("AUDIO", f"a{i}.wav")),
            sample_id=str(i),
        )
        for i in range(20)
    ]
    refs = [
        tmm.Sample(f"the red cup {i}", (("IMAGE", f"coco{i}.jpg"),), box=(0.1, 0.2, 0.5, 0.75), sample_id=f"r{i}")
        for i in range(10)
    ]
    guide = (
        "Attractions: <IMAGE> Forbidden City </IMAGE> is a palace. Culture: <AUDIO> Peking Opera </AUDIO> "
        "is loved. Streets: <VIDEO> a busy hutong </VIDEO>."
    )
    cities = [tmm.Sample("Beijing", guide=guide, sample_id="bj")]
    sources = {
        name: caps
        for name in (
            "i2t",
            "v2t",
            "a2t",
            "t2i",
            "t2v",
            "t2a",
            "t2i_ts",
            "t2v_ts",
            "t2a_ts",
            "i2t_ts",
            "v2t_ts",
            "a2t_ts",
            "smmi",
            "spmi",
        )
    }
    sources.update({n: refs for n in ("i2b", "i2m", "i2b_ts", "i2m_ts")}, tgi=cities)
    return sources


def test_pool_counts_match_the_paper(pools):
    for name, count in PAPER_COUNTS.items():
        assert len(pools[name].templates) == count, name
    for name in X2X:
        assert name in pools
    for name, modality in DEFINING.items():
        assert all(modality in pools[name].targets(t) for t in pools[name].templates), name
    assert all(not pools["spmi"].targets(t) for t in pools["spmi"].templates)


def test_render_and_targets(pools):
    pool = tmm.InstructionPool("x", "SMARTMULTIMODAL", None, ("Make an <IMAGE> and a <VIDEO> of {}",))
    assert pool.targets(pool.templates[0]) == ("IMAGE", "VIDEO")
    assert pool.render(pool.templates[0], " a cat ") == "Make an image and a video of a cat"
    assert pools["t2i"].targets("{}") == ("IMAGE",)  # single-modal task implies its modality


@pytest.mark.parametrize("name", sorted(set(PAPER_COUNTS) | set(X2X)))
def test_every_dataset_builds_answers_that_parse_cleanly(pools, name):
    sources = _sources()
    for index in range(30):
        inst = tmm.build_instance(index, 0, {name: 1.0}, pools, sources)
        parsed = tpl.parse_answer(inst.answer)
        assert parsed.warnings == (), (inst.answer, parsed.warnings)
        assert tuple(parsed.modalities) == inst.targets
        assert inst.question.startswith("[INPUT] [")
        question = inst.question
        for modality, _ in inst.inputs:
            slot = f"<{modality}> <{modality}-Token> </{modality}>"
            assert slot in question
            question = question.replace(slot, "")
        if name != "spmi":
            assert not tmm.MARKER_RE.search(question), question  # markers were rendered as words
        if name in ("i2t", "v2t", "a2t"):
            assert inst.targets == () and inst.answer.startswith("[OUT] a dog number")


def test_paper_example_shape_and_boxes(pools):
    pool = tmm.InstructionPool(
        "t2x", "SMARTMULTIMODAL", None, ("Please generate an <IMAGE> and a <VIDEO> based on the following text: {}",)
    )
    inst = tmm.build_single(pool, tmm.Sample("A cat is sitting on a couch"), np.random.default_rng(0), "t2x")
    assert inst.question == (
        "[INPUT] [SMARTMULTIMODAL] Please generate an image and a video based on the following "
        "text: A cat is sitting on a couch"
    )
    assert inst.answer == (
        "[OUT] A cat is sitting on a couch. <IMAGE> A cat is sitting on a couch [IMAGE0] </IMAGE> "
        ". <VIDEO> A cat is sitting on a couch [VIDEO0] </VIDEO> [END]"
    )
    box_inst = tmm.build_instance(0, 0, {"i2b": 1.0}, pools, _sources())
    assert tpl.parse_boxes(box_inst.answer) == [(0.1, 0.2, 0.5, 0.75)]


def test_travel_guide_keeps_only_requested_modalities(pools):
    pool = tmm.InstructionPool("tgi", "SMARTMULTIMODAL", None, ("Show me <IMAGE> highlights of {}",))
    inst = tmm.build_travel_guide(pool, _sources()["tgi"][0], np.random.default_rng(0))
    assert inst.targets == ("IMAGE",)
    assert "Peking Opera" in inst.answer and "[AUDIO0]" not in inst.answer and "<VIDEO>" not in inst.answer


def test_instances_are_deterministic_and_follow_the_stage_mixture(pools):
    sources = _sources()
    mixture = tmm.STAGE_MIXTURES["stage3"]
    assert abs(sum(mixture.values()) - 1.0) < 1e-9
    first = [tmm.build_instance(i, 7, mixture, pools, sources) for i in range(50)]
    again = [tmm.build_instance(i, 7, mixture, pools, sources) for i in range(50)]
    assert first == again
    assert first != [tmm.build_instance(i, 8, mixture, pools, sources) for i in range(50)]
    n = 3000
    counts = Counter(tmm.choose_dataset(mixture, tmm.instance_rng(7, i)) for i in range(n))
    for name, weight in mixture.items():
        assert abs(counts[name] / n - weight) < 4 * np.sqrt(weight * (1 - weight) / n) + 1e-3, name
    for stage in ("stage1", "stage2"):
        assert abs(sum(tmm.STAGE_MIXTURES[stage].values()) - 1.0) < 1e-9


def test_mixture_renormalises_over_available_datasets():
    mix = tmm.normalised_mixture(tmm.STAGE_MIXTURES["stage3"], available=["smmi", "tgi"])
    assert mix == pytest.approx({"smmi": 0.5 / 0.6, "tgi": 0.1 / 0.6})
    with pytest.raises(ValueError, match="no dataset"):
        tmm.normalised_mixture({"smmi": 1.0}, available=["tgi"])


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "cannot read"),
        (json.dumps({"name": "x", "task": "PICTURE", "templates": ["a"]}), "task 'PICTURE'"),
        (json.dumps({"name": "x", "task": "SMARTMULTIMODAL", "templates": ["plain {}"]}), "template 0 names no"),
        (json.dumps({"name": "x", "task": "IMAGE", "templates": ["{} and {}"]}), "template 0 must hold at most one"),
        (json.dumps({"name": "x", "task": "IMAGE", "templates": ["<IMAGE> <IMAGE>"]}), "repeats a modality"),
        (json.dumps({"name": "x", "task": "IMAGE", "templates": ["a", "a"]}), "duplicate"),
        (json.dumps({"task": "IMAGE", "templates": ["a"]}), "missing key 'name'"),
    ],
)
def test_malformed_pools_name_the_file_and_template(tmp_path, content, message):
    path = tmp_path / "pool.json"
    path.write_text(content)
    with pytest.raises(tmm.PoolError, match=message) as err:
        tmm.load_pool(path)
    assert str(path) in str(err.value)


def test_missing_media_is_reported(pools):
    with pytest.raises(ValueError, match="has no IMAGE media"):
        tmm.build_single(pools["i2t"], tmm.Sample("a caption", sample_id="s1"), np.random.default_rng(0), "i2t")
