"""eval.py's benchmark tasks: the registry mirrors the paper's tables, predictions resume without regenerating,
results tables keep their shape, unavailable metrics and data are skipped with their reason (never a number),
and an end-to-end coco_caption eval of the tiny model is scored by pycocoevalcap.

Generation is replaced by a stand-in in the fast tests (it is not what they check); every metric runs for real.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_spider_flags

from spider_jax import eval_report as er
from spider_jax import eval_tasks as et
from spider_jax import template as tpl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "data", "samples")
COCO = os.path.join(SAMPLES, "coco")
PAPER = "/work/shared/papers/spider.txt"


def _options(max_new_tokens=16):
    from spider_jax.any_to_many import GenerationOptions

    return GenerationOptions(max_new_tokens=max_new_tokens)


class FakeGenerator:
    """Stands in for SpiderGenerator: a fixed caption for ``answer``; ``respond`` makes the groups it is given."""

    def __init__(self, answers=None, caption="A man resting on a wooden bench on a sunny day."):
        self.requests, self.answers, self.caption = [], answers or {}, caption

    def answer(self, requests, options):
        from spider_jax.any_to_many import Decoded

        self.requests += requests
        return [Decoded(f"[INPUT] {r.prompt}", f"[OUT] {self.caption} [END]", [1, 2, 3], [], True) for r in requests]

    def respond(self, requests, options):
        from spider_jax.any_to_many import GroupOutput, Response

        self.requests += requests
        out = []
        for k, r in enumerate(requests):
            answer = self.answers.get(r.request_id) or tpl.format_answer([tpl.Group(r.task, "a bench")])
            parsed = tpl.parse_answer(answer)
            groups = []
            for i, g in enumerate(parsed.groups):
                o = GroupOutput(i, g.modality, g.t_prompt, g.text_before)
                rng = np.random.default_rng([len(self.requests), k, i])
                if g.modality == "IMAGE":
                    o.image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                elif g.modality == "AUDIO":
                    o.audio, o.sample_rate = _voice(f0=110 + 10 * k) + rng.normal(0, 0.01, 9600), 16000
                elif g.modality == "VIDEO":
                    o.video = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
                groups.append(o)
            out.append(Response(r, f"[INPUT] {r.prompt}", answer, parsed, groups, 5, True))
        return out


def _voice(sr=16000, seconds=0.6, f0=120.0):
    t = np.arange(int(sr * seconds)) / sr
    phase = 2 * np.pi * np.cumsum(f0 + 30 * np.sin(2 * np.pi * 2 * t)) / sr
    return (sum(np.sin(k * phase) / k for k in range(1, 15)) * 0.2).astype(np.float32)


def _run(task, out, generator, limit=None, data_dir=COCO, max_new_tokens=16):
    run = er.RunConfig(data_dir, str(out), limit, batch_size=2, progress=False)
    return er.evaluate(et.get_task(task), run, lambda: generator, _options(max_new_tokens))


# ------------------------------------------------------------------------------------------ registry


def _value_pattern(v):
    """A printed value as the paper's text may spell it (trailing zeros: 27.10, 0.480, 31.0); None is "—"."""
    if v is None:
        return r"[^\t]+"
    text = f"{v:g}"
    return re.escape(text) + ("0*" if "." in text else r"(\.0*)?")


def test_registry_mirrors_the_papers_tables():
    from spider_jax import tmm

    pools = tmm.load_pools()
    paper = open(PAPER, encoding="utf-8").read() if os.path.exists(PAPER) else None
    assert {"coco_caption", "audiocaps_caption", "msrvtt_caption", "coco_t2i", "audiocaps_t2a", "msrvtt_t2v",
            "coco_i2i", "vctk_a2a", "davis_v2v", "ammg_image", "ammg_audio", "ammg_video", "tgi"} <= set(et.TASKS)
    for name, task in et.TASKS.items():
        assert callable(task.loader) and task.scorer in er.SCORERS and task.columns, name
        assert task.tables and all(re.fullmatch(r"Tab\. \d+( \(.+\))?", t) for t in task.tables), name
        assert task.generation == (et.ANSWER if task.group == "X-to-Text" else et.RESPOND), name
        assert task.task_prompt in tpl.TASK_PROMPTS and task.layout and task.notes, name
        labels = [c.label for c in task.columns if c.in_paper]
        assert labels and all(set(r.values) == set(labels) for r in task.paper), name
        assert sum(r.is_spider for r in task.paper) == 1 and None not in task.spider_row.values.values(), name
        if task.prompt_source.startswith("data/instructions/") and task.prompt:  # our pools' own wording
            pool = os.path.splitext(os.path.basename(task.prompt_source))[0]
            assert task.prompt in pools[pool].templates, name
        if paper is not None:  # every printed row, value for value, as in the paper's text
            for row in task.paper:
                pattern = r"\t".join(_value_pattern(row.values[c]) for c in labels)
                assert re.search(rf"(^|\t){pattern}(\t|$)", paper, re.M), (name, row.method)
    listing = et.registry_markdown()
    assert all(f"| {name} |" in listing for name in et.TASKS)


def test_task_list_and_usage_errors_from_the_command_line(tmp_path, capsys):
    proc = subprocess.run([sys.executable, "eval.py", "--task", "list"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in et.TASKS) and "Tab. 4" in proc.stdout
    assert er.main(["eval.py", "--task=nope"]) == 2 and "unknown task 'nope'" in capsys.readouterr().err
    assert er.main(["eval.py", "--task=msrvtt_caption"]) == 2
    assert "--data_dir is required for msrvtt_caption" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ runner


def test_predictions_resume_and_are_scored_by_pycocoevalcap(tmp_path):
    fake = FakeGenerator()
    first = _run("coco_caption", tmp_path, fake, limit=2)
    assert len(fake.requests) == 2 and first["generated_this_run"] == 2
    second = _run("coco_caption", tmp_path, fake, limit=3)
    assert len(fake.requests) == 3 and (second["generated_this_run"], second["cached"]) == (1, 2)
    request = fake.requests[-1]
    assert request.prompt == "Describe this image." and request.task == "TEXT"
    assert request.inputs == (("IMAGE", os.path.join(COCO, "images", "000000000003.png")),)
    task_dir = tmp_path / "coco_caption"
    lines = [json.loads(x) for x in (task_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == ["1", "2", "3"] and lines[0]["text"] == fake.caption
    # real pycocoevalcap numbers, on the paper's x100 scale
    from spider_jax.metrics.captioning import caption_scores

    refs = {s.id: list(s.references) for s in et.load_coco(COCO, 3).samples}
    direct = caption_scores({k: fake.caption for k in refs}, refs, ("bleu", "meteor", "cider"))
    assert second["skipped"] == {} and second["scored"] == 3
    for label, key in (("B@4", "Bleu_4"), ("METEOR", "METEOR"), ("CIDEr", "CIDEr")):
        assert second["metrics"][label] == pytest.approx(100 * direct[key]) and math.isfinite(direct[key])
    assert second["metrics"]["METEOR"] > 0
    # everything cached: scoring needs no model
    def no_model():
        raise AssertionError("the generator must not be loaded when every prediction is cached")

    run = er.RunConfig(COCO, str(tmp_path), 3, progress=False)
    assert er.evaluate(et.get_task("coco_caption"), run, no_model, _options())["generated_this_run"] == 0
    # a line cut by a kill mid-write is dropped and regenerated; other settings are refused
    with open(task_dir / "predictions.jsonl", "a") as f:
        f.write('{"id": "4", "quest')
    with pytest.warns(UserWarning, match="dropping an unreadable line"):
        assert _run("coco_caption", tmp_path, fake, limit=4)["generated_this_run"] == 1
    assert [json.loads(x)["id"] for x in (task_dir / "predictions.jsonl").read_text().splitlines()] == [
        "1", "2", "3", "4"]  # fmt: skip
    with pytest.raises(er.CacheMismatch, match="max_new_tokens"):
        _run("coco_caption", tmp_path, fake, limit=4, max_new_tokens=99)


def test_results_markdown_table_format():
    result = {"task": "audiocaps_caption", "data_dir": "/data/audiocaps", "status": "ok", "samples": 5, "scored": 4,
              "generated_this_run": 1, "cached": 3, "checkpoint": "/runs/x", "metrics": {"CIDEr": 0.12345},
              "skipped": {"SPIDEr": "needs SPICE, which was skipped: jars missing"}}  # fmt: skip
    md = et.results_markdown(result)
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0] == "| Method | SPIDEr (↑) | CIDEr (↑) |" and table[1] == "| --- | ---: | ---: |"
    assert len(table) == 2 + len(et.TASKS["audiocaps_caption"].paper) + 1
    assert all(line.count("|") == 4 for line in table)
    assert "| Spider (paper) | 0.537 | 0.819 |" in table and "| AudioCaps [25] | 0.369 | 0.593 |" in table
    assert table[-1] == "| **Ours (this run)** | skipped | 0.123 |"
    assert "- SPIDEr: needs SPICE, which was skipped: jars missing" in md and "**a subset**" in md
    ammg = et.results_markdown({**result, "task": "tgi", "metrics": {"B@4": 12.0, "Mod-F1": 0.5}, "skipped": {}})
    assert "| Spider (paper) | 17.48 | 33.02 | 20.02 | 40.8 | — | — | — |" in ammg
    assert "Columns the paper does not have: Mod-P, Mod-R, Mod-F1" in ammg


@pytest.mark.parametrize(("task", "modality", "weights"), [
    ("coco_t2i", "IMAGE", "pt_inception-2015-12-05-6726825d.pth"), ("audiocaps_t2a", "AUDIO", "clap-htsat-unfused")])
def test_media_metrics_are_skipped_with_the_reason_when_weights_are_missing(task, modality, weights, tmp_path,
                                                                            monkeypatch):  # fmt: skip
    monkeypatch.setenv("SPIDER_METRIC_WEIGHTS", str(tmp_path / "no_weights"))
    data = et.get_task(task).default_data_dir
    result = _run(task, tmp_path, FakeGenerator(), limit=3, data_dir=data)
    label = et.get_task(task).columns[0].label
    assert result["metrics"] == {} and weights in result["skipped"][label]
    assert "SPIDER_METRIC_WEIGHTS" in result["skipped"][label] and result["details"]["generated"] == 3
    md = (tmp_path / task / "results.md").read_text()
    assert "| **Ours (this run)** | skipped" in md and weights in md
    record = json.loads((tmp_path / task / "predictions.jsonl").read_text().splitlines()[0])
    assert record["groups"][0]["modality"] == modality and record["groups"][0]["ok"]
    assert all((tmp_path / task / f).is_file() for f in record["groups"][0]["files"])
    if task == "audiocaps_t2a":
        assert "CNN14" in result["skipped"]["IS"]


def test_speech_editing_mcd_is_computed_from_the_written_files(tmp_path):
    import soundfile as sf

    from spider_jax.metrics.mcd import mcd

    root = tmp_path / "vctk"
    for utt, f0 in (("001", 100.0), ("002", 140.0)):
        (root / "txt" / "p225").mkdir(parents=True, exist_ok=True)
        (root / "wav48" / "p225").mkdir(parents=True, exist_ok=True)
        (root / "txt" / "p225" / f"p225_{utt}.txt").write_text("Please call Stella.\n")
        sf.write(root / "wav48" / "p225" / f"p225_{utt}.wav", _voice(f0=f0), 16000)
    fake = FakeGenerator()
    result = _run("vctk_a2a", tmp_path / "out", fake, data_dir=str(root))
    assert fake.requests[0].prompt == "Edit this audio so that the speaker says: Please call Stella."
    assert fake.requests[0].inputs[0][0] == "AUDIO" and fake.requests[0].task == "AUDIO"
    records = [json.loads(x) for x in (tmp_path / "out" / "vctk_a2a" / "predictions.jsonl").read_text().splitlines()]
    pairs = [(str(root / "wav48" / "p225" / f"{r['id']}.wav"), str(tmp_path / "out" / "vctk_a2a" /
              r["groups"][0]["files"][0])) for r in records]  # fmt: skip
    assert result["skipped"] == {}
    assert result["metrics"]["MCD"] == pytest.approx(np.mean([mcd(a, b) for a, b in pairs]), rel=1e-9)


def test_ammg_groups_are_aligned_and_followed(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIDER_METRIC_WEIGHTS", str(tmp_path / "no_weights"))
    task = et.get_task("ammg_image")
    samples = task.loader(SAMPLES, 3, "raise").samples
    answers = {s.id: s.references[0] for s in samples}  # the stand-in answers exactly as the TMM reference
    fake = FakeGenerator(answers)
    result = _run("ammg_image", tmp_path, fake, limit=3, data_dir=SAMPLES)
    assert [r.request_id for r in fake.requests] == [s.id for s in samples]
    assert all(r.inputs and r.inputs[0][0] == "IMAGE" and r.task == tpl.SMART for r in fake.requests)
    assert "<IMAGE-Token>" not in fake.requests[0].prompt and "[INPUT]" not in fake.requests[0].prompt
    assert result["metrics"]["Mod-F1"] == 1.0 and result["metrics"]["B@4"] == pytest.approx(100.0)
    produced = result["details"]["groups"]
    assert sum(g["matched"] for g in produced.values()) == sum(len(s.extra["instance"]["targets"]) for s in samples)
    for label in ("I", "A", "V"):  # no weights here (or no reference file): a reason, never a number
        assert label not in result["metrics"] and result["skipped"][label]


def test_missing_dataset_skips_the_task_with_the_reason(tmp_path):
    result = _run("msrvtt_caption", tmp_path / "out", FakeGenerator(), data_dir=str(tmp_path))
    assert result["status"] == "skipped" and "test_videodatainfo.json" in result["reason"]
    md = (tmp_path / "out" / "msrvtt_caption" / "results.md").read_text()
    assert "**Task skipped:** dataset not available" in md and "| Spider (paper) | 59.8 | 40.2 |" in md


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def run_dir(tiny_spider_run):
    """The tiny Spider checkpoint shared with the generation tests (conftest.tiny_spider_run)."""
    return tiny_spider_run


@pytest.mark.slow
def test_tiny_model_coco_caption_end_to_end(run_dir, tmp_path, capsys):
    run, base = run_dir
    argv = ["eval.py", *tiny_spider_flags(base), "--task=coco_caption", f"--data_dir={COCO}", f"--checkpoint={run}",
            f"--out={tmp_path}", "--max_new_tokens=24"]  # fmt: skip
    assert er.main([*argv, "--limit=2"]) == 0, capsys.readouterr().err
    assert er.main(argv) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "coco_caption" / "results.json").read_text())
    assert (result["samples"], result["scored"], result["generated_this_run"], result["cached"]) == (4, 4, 2, 2)
    assert result["skipped"] == {} and result["details"]["count"] == 4  # pycocoevalcap ran on all 4
    assert set(result["metrics"]) == {"B@4", "METEOR", "CIDEr"}
    assert all(math.isfinite(v) and v >= 0 for v in result["metrics"].values())
    assert result["generation"]["checkpoint"] == os.path.abspath(run)
    records = [json.loads(x) for x in (tmp_path / "coco_caption" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["1", "2", "3", "4"]
    assert all(r["question"].startswith("[INPUT] [TEXT] <IMAGE> <IMAGE-Token> </IMAGE>") for r in records)
    assert "| **Ours (this run)** |" in capsys.readouterr().out
