"""Grain pipeline: answer-only labels, modality slots, M-Prompt positions, host sharding, exact resume."""

import dataclasses
import json
import os

import numpy as np
import pytest

from spider_jax import input_pipeline as ip
from spider_jax import template as tpl
from spider_jax import tmm
from spider_jax.tokenizer import load_tokenizer
from spider_jax.trainer import IGNORE_INDEX

STAGE1 = tmm.STAGE_MIXTURES["stage1"]


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
    sources = {n: caps for n in ("i2t", "v2t", "a2t", "t2i", "t2v", "t2a")}
    sources.update(i2b=refs, i2m=refs)
    return sources


@pytest.fixture()
def setup(sp_model_path):
    tok = load_tokenizer(sp_model_path)
    ids = ip.TemplateIds.build(tok)
    pools = tmm.load_pools()
    return tok, ids, pools


def test_example_fields_point_at_the_right_tokens(setup):
    tok, ids, pools = setup
    config = ip.PipelineConfig(max_length=128, batch_size=2, media_root=os.getcwd())  # sample paths are relative
    instances = ip.instance_dataset(STAGE1, pools, _sources(), seed=3)
    seen_inputs = seen_groups = seen_targets = 0
    for index in range(40):
        inst = instances[index]
        ex = ip.encode_instance(inst, tok, ids, config)
        n = int(ex["attention_mask"].sum())
        assert ex["attention_mask"][:n].all() and not ex["attention_mask"][n:].any()
        answer_tokens = ex["labels"][ex["labels"] != IGNORE_INDEX]
        assert tok.decode(answer_tokens) == inst.answer  # labels cover exactly the answer
        assert (ex["labels"][: n - len(answer_tokens)] == IGNORE_INDEX).all()
        for k, (modality, path) in enumerate(inst.inputs):
            pos = ex["input_positions"][k]
            assert tok.decode([ex["input_ids"][pos]]) == f"<{modality}-Token>"
            assert ex["input_modality"][k] == ip.modality_code(modality)
            assert ex["input_key"][k] == ip.stable_key(path)
            seen_inputs += 1
        assert (ex["input_positions"][len(inst.inputs) :] == -1).all()
        groups = tpl.parse_answer(inst.answer).groups
        for k, group in enumerate(groups):
            pos = ex["mprompt_positions"][k]
            assert tok.decode([ex["input_ids"][pos]]) == f"[{group.modality}0]"
            assert ex["mprompt_modality"][k] == ip.modality_code(group.modality)
            assert ex["tprompt_key"][k] == ip.stable_key(group.t_prompt)
            target = inst.outputs[k]
            assert ex["target_key"][k] == (ip.stable_key(target) if target else 0)
            if inst.dataset.startswith("t2"):  # caption datasets: the group targets the sample's own file
                sample = next(x for x in _sources()[inst.dataset] if x.sample_id == inst.sample_ids[0])
                assert target == dict(sample.media)[group.modality]
                seen_targets += 1
            seen_groups += 1
        assert (ex["mprompt_positions"][len(groups) :] == -1).all()
    assert seen_inputs > 5 and seen_groups > 5 and seen_targets > 3


def test_truncation_drops_what_does_not_fit(setup):
    tok, ids, pools = setup
    inst = tmm.build_single(pools["t2i"], tmm.Sample("a very long caption " * 10), np.random.default_rng(0), "t2i")
    ex = ip.encode_instance(inst, tok, ids, ip.PipelineConfig(max_length=24))
    assert ex["attention_mask"].all()
    assert (ex["mprompt_positions"] == -1).all()  # the group's M-Prompt was cut off


def test_too_many_inputs_is_a_clear_error(setup):
    tok, ids, _ = setup
    question = tpl.format_question("compare", "TEXT", ["IMAGE", "IMAGE"])
    inst = tmm.Instance(question, "[OUT] same [END]", (("IMAGE", "a"), ("IMAGE", "b")), (), "x", ("s1",))
    with pytest.raises(ip.EncodingError, match="max_inputs 1"):
        ip.encode_instance(inst, tok, ids, ip.PipelineConfig(max_inputs=1))


def test_batches_hosts_and_exact_resume(setup):
    tok, ids, pools = setup
    config = ip.PipelineConfig(max_length=96, batch_size=4, seed=1)
    instances = ip.instance_dataset(STAGE1, pools, _sources(), seed=1)
    single = iter(ip.batched_examples(instances, tok, ids, config))
    batch = next(single)
    assert batch["input_ids"].shape == (4, 96) and batch["input_ids"].dtype == np.int32
    assert batch["mprompt_positions"].shape == (4, config.max_groups)

    host0 = iter(ip.batched_examples(instances, tok, ids, dataclasses.replace(config, batch_size=2), 0, 2))
    host1 = iter(ip.batched_examples(instances, tok, ids, dataclasses.replace(config, batch_size=2), 1, 2))
    b0, b1 = next(host0), next(host1)
    np.testing.assert_array_equal(b0["input_ids"], batch["input_ids"][[0, 2]])  # disjoint, interleaved slices
    np.testing.assert_array_equal(b1["input_ids"], batch["input_ids"][[1, 3]])

    it = iter(ip.batched_examples(instances, tok, ids, config))
    for _ in range(3):
        next(it)
    state = ip.iterator_state(it)
    expected = [next(it) for _ in range(2)]
    resumed = ip.restore_iterator(iter(ip.batched_examples(instances, tok, ids, config)), state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_materialized_array_record_round_trip(setup, tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    tok, ids, pools = setup
    instances = ip.instance_dataset(STAGE1, pools, _sources(), seed=5)
    path = str(tmp_path / "tmm.array_record")
    writer = ArrayRecordWriter(path, "group_size:1")
    for i in range(10):
        writer.write(json.dumps(tmm.instance_to_json(instances[i])).encode())
    writer.close()
    stored = ip.materialized_dataset([path])
    config = ip.PipelineConfig(max_length=96)
    for i in range(10):
        a = ip.encode_instance(stored[i], tok, ids, config)
        b = ip.encode_instance(instances[i], tok, ids, config)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_tfds_builder_materialises_splits_in_stream_order(setup, tmp_path):
    from spider_jax import tmm_tfds

    tok, ids, pools = setup
    mixture = tmm.normalised_mixture(STAGE1)
    sources = _sources()

    def make(index):
        return tmm.build_instance(index, 11, mixture, pools, sources)

    tmm_tfds.materialize(tmp_path, make, {"train": 12, "validation": 4})
    train = tmm_tfds.tmm_data_source(tmp_path, "train")
    validation = tmm_tfds.tmm_data_source(tmp_path, "validation")
    assert len(train) == 12 and len(validation) == 4
    assert [train[i] for i in range(12)] == [make(i) for i in range(12)]
    assert [validation[i] for i in range(4)] == [make(12 + i) for i in range(4)]
    batch = next(iter(ip.batched_examples(validation, tok, ids, ip.PipelineConfig(max_length=64, batch_size=4))))
    assert batch["input_ids"].shape == (4, 64)
    with pytest.raises(KeyError, match="split 'test' not materialised"):
        tmm_tfds.tmm_data_source(tmp_path, "test")


def test_bundled_samples_feed_every_stage(setup):
    from spider_jax.sources import load_layout

    tok, ids, pools = setup
    sources = load_layout()
    for stage, mixture in tmm.STAGE_MIXTURES.items():
        assert set(mixture) <= set(sources), stage  # the sample set covers every dataset of every stage
        instances = ip.instance_dataset(mixture, pools, sources, seed=0)
        batch = next(iter(ip.batched_examples(instances, tok, ids, ip.PipelineConfig(max_length=256, batch_size=8))))
        assert batch["attention_mask"].any(axis=1).all()
        if stage != "stage1":
            assert (batch["mprompt_positions"] >= 0).any()


def test_packing_keeps_every_instance_intact_and_resumes_exactly(setup):
    tok, ids, pools = setup
    config = ip.PipelineConfig(max_length=160, batch_size=2, max_groups=24, max_inputs=12, packing=True)
    instances = ip.instance_dataset(STAGE1, pools, _sources(), seed=2)
    packed = iter(ip.batched_examples(instances, tok, ids, config))
    batches = [next(packed) for _ in range(3)]
    rows = [{k: b[k][r] for k in b} for b in batches for r in range(config.batch_size)]
    assert max(int(r["segment_ids"].max()) for r in rows) >= 2  # rows really hold several instances

    # Every segment equals the unpacked encoding of the next instance in stream order (first-fit, unshuffled).
    unpacked = {}
    for index in range(40):
        ex = ip.encode_instance(instances[index], tok, ids, dataclasses.replace(config, packing=False))
        n = int(ex["attention_mask"].sum())
        unpacked[tuple(ex["input_ids"][:n])] = ex
    fill = 0
    for row in rows:
        for seg in range(1, int(row["segment_ids"].max()) + 1):
            where = np.nonzero(row["segment_ids"] == seg)[0]
            start = where[0]
            want = unpacked[tuple(row["input_ids"][where])]
            np.testing.assert_array_equal(row["positions"][where], np.arange(len(where)))
            np.testing.assert_array_equal(row["labels"][where], want["labels"][: len(where)])
            for prefix, code in (("input", "input_modality"), ("mprompt", "mprompt_modality")):
                mine = (row[f"{prefix}_positions"] >= start) & (row[f"{prefix}_positions"] <= where[-1])
                theirs = want[f"{prefix}_positions"] >= 0
                got_positions = row[f"{prefix}_positions"][mine] - start
                np.testing.assert_array_equal(got_positions, want[f"{prefix}_positions"][theirs])
                np.testing.assert_array_equal(row[code][mine], want[code][theirs])
            fill += len(where)
        assert (row["labels"][row["segment_ids"] == 0] == IGNORE_INDEX).all()
    assert fill / (len(rows) * config.max_length) > 0.5

    it = iter(ip.batched_examples(instances, tok, ids, config))
    next(it)
    state = ip.iterator_state(it)
    want = next(it)
    got = next(ip.restore_iterator(iter(ip.batched_examples(instances, tok, ids, config)), state))
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_media_keys_are_relative_to_the_data_root(tmp_path):
    """A store keyed on one machine serves the same files mounted under another root."""
    a, b = tmp_path / "mnt_a" / "data", tmp_path / "home" / "data"
    key_a = ip.media_key(str(a / "coco" / "images" / "1.jpg"), str(a))
    key_b = ip.media_key(str(b / "coco" / "images" / ".." / "images" / "1.jpg"), str(b) + "/")
    assert key_a == key_b == ip.stable_key("coco/images/1.jpg")
    outside = str(tmp_path / "elsewhere" / "1.jpg")
    assert ip.media_key(outside, str(a)) == ip.stable_key(outside) != key_a
    assert ip.media_key("rel/x.wav") == ip.stable_key(os.path.abspath("rel/x.wav"))
