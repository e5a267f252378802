"""Runs one benchmark task of ``eval_tasks`` end to end: generate (resumably), score, report next to the paper.

``python eval.py --config configs/tiny.py --task coco_caption --data_dir data/samples/coco --checkpoint RUN_DIR``

Why the predictions cache: benchmark generation is the expensive part (thousands of samples, hours with the
decoders) and gets interrupted. Every prediction is appended to ``<out>/<task>/predictions.jsonl`` and flushed as
soon as it exists, generated media go to ``<out>/<task>/media/<id>/`` (``response_writer``), and a rerun skips the
ids already there — so ``--limit 100`` then ``--limit 500`` generates 400, and re-scoring needs no model at all.
The generation settings are stored beside the cache (``generation.json``); a rerun with other settings or
another checkpoint is refused (``--fresh`` starts over) rather than silently mixing two models' outputs.

Scoring always runs on the full selected set from the cache, with the real metric code (``spider_jax.metrics``).
A metric that cannot run here (weights or jars missing, too few items) is reported as skipped with its reason
in ``results.json`` and ``results.md`` — there is no placeholder number anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from spider_jax import eval_datasets as eds
from spider_jax import eval_tasks as et
from spider_jax.metrics.feature_models import WEIGHTS_ENV, MissingMetricWeights, try_metric

VIDEO_FRAMES = 16  # frames per video for video FID / CLIPSIM (evenly spaced; a uniform subsample of the mean)
AUDIO_IS_REASON = ("audio IS is defined on the 527-way logits of PANNs CNN14 (AudioLDM's evaluation); no offline CNN14 "
                   "loader exists here (metrics/audio_features.py explains why), so IS is not computed")
PREFERRED = {"IMAGE": (".png",), "AUDIO": (".wav",), "VIDEO": (".mp4", ".gif")}


class CacheMismatch(ValueError):
    """The cached predictions were made with other generation settings or another checkpoint."""


# ------------------------------------------------------------------------------------------ scoring


@dataclasses.dataclass
class ScoreContext:
    """Where a task's files are and how to run the metric networks (built once per task, on first use)."""

    task_dir: str
    device: str = "cpu"
    progress: bool = True
    models: dict[str, Any] = dataclasses.field(default_factory=dict)

    def model(self, key: str) -> Any:
        """``inception`` / ``clap`` / ``clip``; raises MissingMetricWeights (a skip) when the weights are absent."""
        if key not in self.models:
            if key == "inception":
                from spider_jax.metrics.inception import InceptionV3Extractor as cls
            elif key == "clap":
                from spider_jax.metrics.audio_features import ClapAudioExtractor as cls
            else:
                from spider_jax.metrics.clip_score import ClipScorer as cls
            self.models[key] = cls(device=self.device)
        return self.models[key]

    def path(self, relative: str) -> str:
        """A path stored relative to the task folder (records stay valid when --out is moved)."""
        return os.path.join(self.task_dir, relative)


Outcome = tuple[float | None, str | None]  # (value, None) or (None, why it was not computed)
Samples = Sequence[eds.EvalSample]
Records = dict[str, dict[str, Any]]  # sample id -> its predictions.jsonl record


def _scored(outcomes: dict[str, Outcome], **details: Any) -> dict[str, Any]:
    values = {k: float(v) for k, (v, _) in outcomes.items() if v is not None}
    return {"values": values, "skipped": {k: r for k, (v, r) in outcomes.items() if v is None}, "details": details}


def group_file(ctx: ScoreContext, record: dict, modality: str | None = None, index: int | None = None) -> str | None:
    """The scorable file of a record's first successful group of ``modality`` (or of group ``index``)."""
    for g in record.get("groups", []):
        if (index is not None and g["index"] != index) or (modality is not None and g["modality"] != modality):
            continue
        for ext in PREFERRED.get(g["modality"], ()):
            found = [f for f in g.get("files", []) if g.get("ok") and f.endswith(ext)]
            if found:
                return ctx.path(found[0])
        if index is not None:
            return None
    return None


def _video_frames(paths: Sequence[str], max_frames: int | None):
    from spider_jax.metrics.feature_models import load_video_frames

    for p in paths:
        yield from load_video_frames(p, max_frames)


def frechet(ctx: ScoreContext, kind: str, generated: Sequence[str], reference: Sequence[str]) -> Outcome:
    """FID (``image``, ``video`` frames) or FD (``audio``) between two file sets; reference statistics are cached."""
    if len(generated) < 2 or len(reference) < 2:
        return None, (f"needs at least 2 generated and 2 reference items, have {len(generated)} generated and "
                      f"{len(reference)} reference (answers without a decoded {kind} group give none)")

    def run() -> float:
        from spider_jax.metrics import frechet as fr

        ext = ctx.model("clap" if kind == "audio" else "inception")
        frames = VIDEO_FRAMES if kind == "video" else None
        gen = _video_frames(generated, frames) if frames else list(generated)
        ref = _video_frames(reference, frames) if frames else list(reference)
        digest = hashlib.sha1("\n".join([ext.name, str(frames), *reference]).encode()).hexdigest()[:12]
        cache = ctx.path(os.path.join("reference_stats", f"{kind}_{digest}.npz"))
        fn = fr.fd if kind == "audio" else fr.fid
        return fn(gen, ref, ext, cache_b=cache, progress=ctx.progress)

    return try_metric(run)


def _clip(ctx: ScoreContext, fn: Callable, n: int, *args: Any, **kwargs: Any) -> Outcome:
    if n == 0:
        return None, "no generated item to score"
    return try_metric(lambda: fn(ctx.model("clip"), *args, **kwargs))


def _produced(ctx: ScoreContext, samples: Samples, records: Records, modality: str) -> list[tuple[eds.EvalSample, str]]:
    """(sample, generated file) for the samples whose answer produced a ``modality`` group that was decoded."""
    out = []
    for s in samples:
        f = group_file(ctx, records[s.id], modality) if s.id in records else None
        if f:
            out.append((s, f))
    return out


def score_captions(task: et.EvalTask, samples: Samples, records: Records, ctx: ScoreContext) -> dict[str, Any]:
    """COCO caption metrics (pycocoevalcap) of the answers' text responses against the references."""
    from spider_jax.metrics.captioning import caption_scores

    names = {"Bleu_4": "bleu", "METEOR": "meteor", "CIDEr": "cider", "SPIDEr": "spider"}
    metrics = tuple(dict.fromkeys(names[c.key] for c in task.columns))
    preds = {s.id: records[s.id]["text"] for s in samples if s.id in records}
    refs = {s.id: list(s.references) for s in samples if s.id in records}
    if not preds:
        return _scored({c.key: (None, "no predictions to score") for c in task.columns})
    try:
        out = caption_scores(preds, refs, metrics)
    except RuntimeError as e:  # e.g. no Java for the PTB tokenizer
        return _scored({c.key: (None, str(e)) for c in task.columns})
    outcomes = {c.key: (out.get(c.key), out["skipped"].get(c.key)) for c in task.columns}
    extra = {k: v for k, v in out.items() if k not in ("skipped", "count")}
    return _scored(outcomes, count=out["count"], all_scores=extra)


def score_t2i(task: et.EvalTask, samples: Samples, records: Records, ctx: ScoreContext) -> dict[str, Any]:
    """FID of the generated images against the test set's own images (the real distribution for those captions)."""
    made = _produced(ctx, samples, records, "IMAGE")
    fid = frechet(ctx, "image", [f for _, f in made], [s.media[0] for s in samples])
    return _scored({"FID": fid}, generated=len(made), reference=len(samples), without_image=len(samples) - len(made))


def score_t2a(task: et.EvalTask, samples: Samples, records: Records, ctx: ScoreContext) -> dict[str, Any]:
    """FD of the generated clips against the test clips; IS is reported as skipped (no CNN14 here)."""
    made = _produced(ctx, samples, records, "AUDIO")
    fd = frechet(ctx, "audio", [f for _, f in made], [s.media[0] for s in samples])
    return _scored({"FD": fd, "IS": (None, AUDIO_IS_REASON)}, generated=len(made), reference=len(samples))


def score_t2v(task: et.EvalTask, samples: Samples, records: Records, ctx: ScoreContext) -> dict[str, Any]:
    """Frame FID against the test videos' frames, and CLIPSIM of each generated video with its prompt."""
    from spider_jax.metrics.clip_score import clipsim

    made = _produced(ctx, samples, records, "VIDEO")
    videos, texts = [f for _, f in made], [et.target_text(s) for s, _ in made]
    return _scored({
        "FID": frechet(ctx, "video", videos, [s.media[0] for s in samples]),
        "CLIPSIM": _clip(ctx, clipsim, len(made), videos, texts, max_frames=VIDEO_FRAMES),
    }, generated=len(made), reference=len(samples))  # fmt: skip


def score_i2i(task: et.EvalTask, samples: Samples, records: Records, ctx: ScoreContext) -> dict[str, Any]:
    """CLIP (x100) of each edited image with its target text; FID of the edited set against the source images."""
    from spider_jax.metrics.clip_score import clip_score

    made = _produced(ctx, samples, records, "IMAGE")
    images, texts = [f for _, f in made], [et.target_text(s) for s, _ in made]
    return _scored({
        "CLIP": _clip(ctx, clip_score, len(made), images, texts),
        "FID": frechet(ctx, "image", images, [s.media[0] for s in samples]),
    }, generated=len(made), reference=len(samples))  # fmt: skip


def score_a2a(task: et.EvalTask, samples: Samples, records: Records, ctx: ScoreContext) -> dict[str, Any]:
    """Mean MCD between each original utterance and the speech generated for it (pairs, not sets)."""
    made = _produced(ctx, samples, records, "AUDIO")
    if not made:
        return _scored({"MCD": (None, "no generated speech to score")}, generated=0)
    try:
        from spider_jax.metrics.mcd import mean_mcd

        value = mean_mcd([(s.media[0], f) for s, f in made], progress=ctx.progress)
    except ImportError as e:
        return _scored({"MCD": (None, str(e))}, generated=len(made))
    return _scored({"MCD": (value, None)}, generated=len(made), reference=len(samples))


def score_v2v(task: et.EvalTask, samples: Samples, records: Records, ctx: ScoreContext) -> dict[str, Any]:
    """CLIP-T (edited frames vs target text) and CLIP-I (consecutive edited frames), as Pix2Video reports them."""
    from spider_jax.metrics.clip_score import clip_frame_consistency, clip_t

    made = _produced(ctx, samples, records, "VIDEO")
    videos, texts = [f for _, f in made], [et.target_text(s) for s, _ in made]
    return _scored({
        "CLIP-T": _clip(ctx, clip_t, len(made), videos, texts),
        "CLIP-I": _clip(ctx, clip_frame_consistency, len(made), videos),
    }, generated=len(made), reference=len(samples))  # fmt: skip


def score_ammg(task: et.EvalTask, samples: Samples, records: Records, ctx: ScoreContext) -> dict[str, Any]:
    """Tab. 4: groups aligned by ``metrics.ammg``; I / A / V over matched groups whose reference has a file."""
    from spider_jax import tmm
    from spider_jax.metrics.ammg import ammg_scores

    ids = [s.id for s in samples if s.id in records]
    if not ids:
        return _scored({c.key: (None, "no predictions to score") for c in task.columns})
    inst = {s.id: tmm.instance_from_json(s.extra["instance"]) for s in samples}
    out = ammg_scores({i: records[i]["answer"] for i in ids}, {i: inst[i].answer for i in ids})
    follow = out["following"]
    outcomes: dict[str, Outcome] = {
        "modality_precision": (follow["macro_precision"], None),
        "modality_recall": (follow["macro_recall"], None),
        "modality_f1": (follow["macro_f1"], None),
        "Bleu_4": (out["text"].get("Bleu_4"), "; ".join(out["text"]["skipped"].values()) or None),
    }
    groups = {m: {"matched": 0, "missing": 0, "extra": 0} for m in ("IMAGE", "AUDIO", "VIDEO")}
    pairs: dict[str, list[tuple[str, str]]] = {m: [] for m in groups}
    for r in out["records"]:
        if r.modality not in groups:
            continue
        groups[r.modality][r.status] += 1
        outputs = inst[r.answer_id].outputs
        target = outputs[r.reference_index] if r.status == "matched" and r.reference_index < len(outputs) else ""
        produced = group_file(ctx, records[r.answer_id], index=r.produced_index) if target else None
        if produced:
            pairs[r.modality].append((produced, target))
    for modality, key, kind in (("IMAGE", "I", "image"), ("AUDIO", "A", "audio"), ("VIDEO", "V", "video")):
        gen, ref = [p for p, _ in pairs[modality]], [t for _, t in pairs[modality]]
        outcomes[key] = frechet(ctx, kind, gen, ref) if gen else (None, (
            f"no decoded {modality} group is matched to a reference group that has a source file "
            f"({groups[modality]['matched']} matched {modality} groups; a TMM reference group has a file only when "
            "it asks for the source sample's own modality)"))
    return _scored(outcomes, following=follow, groups=groups, parser_warnings=len(out["parser_warnings"]))


SCORERS: dict[str, Callable[..., dict[str, Any]]] = {
    "captions": score_captions, "t2i": score_t2i, "t2a": score_t2a, "t2v": score_t2v, "i2i": score_i2i,
    "a2a": score_a2a, "v2v": score_v2v, "ammg": score_ammg,
}  # fmt: skip


# ------------------------------------------------------------------------------------------ generation


class PredictionCache:
    """``predictions.jsonl``: one JSON object per sample id, appended and flushed as soon as it is produced."""

    def __init__(self, path: str):
        self.path, self.records = path, {}
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as f:
            text = f.read()
        good = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill mid-write: dropped, regenerated
                warnings.warn(f"{path}: dropping an unreadable line ({line[:60]!r}…)", stacklevel=2)
                continue
            self.records[record["id"]] = record
            good.append(line)
        if text and (len(good) != len(text.splitlines()) or not text.endswith("\n")):
            with open(path, "w", encoding="utf-8") as f:  # rewrite so the next append starts on a clean line
                f.write("".join(line + "\n" for line in good))

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self.records

    def append(self, record: dict[str, Any]) -> None:
        """Appends and syncs one record at once, so a kill loses at most the sample being written."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[record["id"]] = record


def _record(task: et.EvalTask, sample: eds.EvalSample, out: Any, task_dir: str, fps: float) -> dict[str, Any]:
    from spider_jax.metrics.ammg import response_text

    if task.generation == et.ANSWER:
        return {"id": sample.id, "question": out.question, "answer": out.text, "text": response_text(out.text),
                "stopped": out.stopped, "tokens": len(out.token_ids)}  # fmt: skip
    from spider_jax.response_writer import write_response

    media = f"media/{et.safe_id(sample.id)}"
    manifest = write_response(out, os.path.join(task_dir, media), fps=fps)
    groups = [{k: g[k] for k in ("index", "modality", "t_prompt", "ok", "error")}
              | {"files": [f"{media}/{f}" for f in g.get("files", [])]} for g in manifest["groups"]]  # fmt: skip
    return {"id": sample.id, "question": out.question, "answer": out.answer, "text": out.parsed.text,
            "stopped": out.stopped, "tokens": out.tokens, "groups": groups}  # fmt: skip


def _run_batch(task: et.EvalTask, generator: Any, samples: list, options: Any) -> list[Any]:
    """Outputs in sample order; when the batch is refused (bad input), each sample alone, errors in its place."""
    from spider_jax.any_to_many import GenerationInputError

    call = generator.answer if task.generation == et.ANSWER else generator.respond
    requests = [et.build_request(task, s) for s in samples]
    try:
        return list(call(requests, options))
    except GenerationInputError as e:
        if len(requests) == 1:
            return [e]
    results: list[Any] = []
    for r in requests:
        try:
            results += call([r], options)
        except GenerationInputError as e:
            results.append(e)
    return results


# ------------------------------------------------------------------------------------------ the run


@dataclasses.dataclass
class RunConfig:
    """Where the data and outputs are and how to run: everything of an eval run except the model and its options."""

    data_dir: str
    out_dir: str
    limit: int | None = None
    batch_size: int = 8
    missing_media: str = "raise"
    fresh: bool = False
    metric_device: str = "cpu"
    progress: bool = True
    fps: float = 8.0
    checkpoint: str = ""


def _fingerprint(task: et.EvalTask, options: Any, checkpoint: str) -> dict[str, Any]:
    plain = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {"options": repr(options)}
    return {"task": task.name, "task_prompt": task.task_prompt, "prompt": task.prompt, **plain,
            "checkpoint": os.path.abspath(checkpoint) if checkpoint else ""}  # fmt: skip


def _check_settings(task_dir: str, settings: dict[str, Any], fresh: bool) -> None:
    path = os.path.join(task_dir, "generation.json")
    if fresh:  # our own outputs only: the cache, its settings and the media its records point to
        for name in ("predictions.jsonl", "generation.json"):
            if os.path.exists(os.path.join(task_dir, name)):
                os.remove(os.path.join(task_dir, name))
        shutil.rmtree(os.path.join(task_dir, "media"), ignore_errors=True)
    elif os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        differ = [k for k in settings if k != "checkpoint" and old.get(k) != settings[k]]
        if old.get("checkpoint") and settings["checkpoint"] and old["checkpoint"] != settings["checkpoint"]:
            differ.append("checkpoint")
        if differ:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in differ)
            raise CacheMismatch(f"{task_dir} holds predictions made with other settings ({shown}); pass --fresh to "
                                "discard them or choose another --out")  # fmt: skip
        settings = {**settings, "checkpoint": settings["checkpoint"] or old.get("checkpoint", "")}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=1, default=str)


def evaluate(task: et.EvalTask, run: RunConfig, generator: Callable[[], Any], options: Any) -> dict[str, Any]:
    """Generate what the cache lacks, score the selected samples, write results.json / results.md; returns them.

    ``generator`` is called (once) only when something must be generated, so re-scoring needs no model.
    """
    from tqdm.auto import tqdm

    task_dir = os.path.join(run.out_dir, task.name)
    os.makedirs(task_dir, exist_ok=True)
    result: dict[str, Any] = {"task": task.name, "title": task.title, "paper_tables": list(task.tables),
                              "data_dir": os.path.abspath(run.data_dir), "checkpoint": run.checkpoint}  # fmt: skip
    try:
        loaded = task.loader(run.data_dir, run.limit, run.missing_media)
    except (eds.DatasetError, OSError) as e:
        result.update(status="skipped", reason=f"dataset not available: {e}")
        return write_results(result, task_dir)
    samples = loaded.samples
    settings = _fingerprint(task, options, run.checkpoint)
    _check_settings(task_dir, settings, run.fresh)
    cache = PredictionCache(os.path.join(task_dir, "predictions.jsonl"))
    todo = [s for s in samples if s.id not in cache]
    generated, errors, model = 0, [], None
    with tqdm(total=len(todo), desc=f"{task.name}: generating", unit="sample", disable=not run.progress) as bar:
        for start in range(0, len(todo), run.batch_size):
            chunk = [et.prepare_sample(task, s, task_dir) for s in todo[start : start + run.batch_size]]
            model = model or generator()
            for sample, out in zip(chunk, _run_batch(task, model, chunk, options), strict=True):
                if isinstance(out, Exception):
                    errors.append({"id": sample.id, "error": str(out)})
                else:
                    cache.append(_record(task, sample, out, task_dir, run.fps))
                    generated += 1
                bar.update(1)
    records = {s.id: cache.records[s.id] for s in samples if s.id in cache}
    ctx = ScoreContext(task_dir, run.metric_device, run.progress)
    scored = SCORERS[task.scorer](task, samples, records, ctx)
    metrics, skipped = {}, {}
    for c in task.columns:
        if c.key in scored["values"]:
            metrics[c.label] = scored["values"][c.key] * c.scale
        else:
            skipped[c.label] = scored["skipped"].get(c.key) or "not computed"
    result.update(
        status="ok", dataset=task.dataset, data_files=loaded.files, samples=len(samples), scored=len(records),
        generated_this_run=generated, cached=len(records) - generated, generation_errors=errors[:20],
        failed=len(errors), generation=settings, metrics=metrics, skipped=skipped, raw=scored["values"],
        details=scored["details"], paper={r.method: dict(r.values) for r in task.paper}, notes=list(task.notes),
    )  # fmt: skip
    return write_results(result, task_dir)


def write_results(result: dict[str, Any], task_dir: str) -> dict[str, Any]:
    """``results.json`` (everything, machine-readable) and ``results.md`` (the table); returns ``result``."""
    with open(os.path.join(task_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, ensure_ascii=False, default=str)
    with open(os.path.join(task_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(et.results_markdown(result))
    return result


# ------------------------------------------------------------------------------------------ CLI


def _flags(argv: Sequence[str]):
    from absl import flags

    from spider_jax.generation_cli import model_flags

    fv = model_flags(argv)
    flags.DEFINE_string("task", None, "Task name (see --task list).", flag_values=fv)
    flags.DEFINE_string("data_dir", "", "Dataset folder in the task's official layout.", flag_values=fv)
    flags.DEFINE_string("out", "eval_results", "Results folder (<out>/<task>/...).", flag_values=fv)
    flags.DEFINE_integer("limit", None, "Evaluate the first N samples only.", flag_values=fv)
    flags.DEFINE_integer("batch_size", None, "Default: config generate.batch_size.", flag_values=fv)
    flags.DEFINE_string("metric_device", "cpu", "torch device of the metric networks.", flag_values=fv)
    flags.DEFINE_string("metric_weights", "", f"Metric weights folder (sets ${WEIGHTS_ENV}).", flag_values=fv)
    flags.DEFINE_enum("missing_media", "raise", ["raise", "skip"], "Samples whose media are missing.", flag_values=fv)
    flags.DEFINE_boolean("fresh", False, "Discard cached predictions of this task.", flag_values=fv)
    return fv


def main(argv: Sequence[str] | None = None) -> int:
    """``eval.py --task ...``; returns the exit status (2: usage, data or cache error)."""
    argv = list(sys.argv if argv is None else argv)
    if "--task=list" in argv or any(a == "--task" and b == "list" for a, b in zip(argv, argv[1:], strict=False)):
        print(et.registry_markdown())
        return 0
    fv = _flags(argv)
    try:
        fv(argv)
        task = et.get_task(fv["task"].value or "")
    except Exception as e:  # absl flag errors and unknown tasks: a usage error, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = fv["config"].value
    if cfg.get("cpu_devices") and "JAX_PLATFORMS" not in os.environ:
        os.environ["JAX_PLATFORMS"] = "cpu"
    if fv["metric_weights"].value:
        os.environ[WEIGHTS_ENV] = fv["metric_weights"].value
    data_dir = fv["data_dir"].value or task.default_data_dir
    if not data_dir:
        print(f"error: --data_dir is required for {task.name} ({task.layout})", file=sys.stderr)
        return 2
    from spider_jax.any_to_many import GenerationOptions
    from spider_jax.generation_cli import generate_settings

    g = generate_settings(cfg, fv, max_new_tokens=task.max_new_tokens or cfg.generate.get("max_new_tokens", 512))
    checkpoint = fv["checkpoint"].value or ""

    def load():
        if not checkpoint:
            raise FileNotFoundError("--checkpoint is required: some samples have no cached prediction")
        from spider_jax.generation_cli import load_generator

        return load_generator(cfg, checkpoint)

    run = RunConfig(data_dir, fv["out"].value, fv["limit"].value, fv["batch_size"].value or int(g.get("batch_size", 4)),
                    fv["missing_media"].value, fv["fresh"].value, fv["metric_device"].value,
                    fps=float(cfg.decoders.get("fps", 8)), checkpoint=checkpoint)  # fmt: skip
    try:
        result = evaluate(task, run, load, GenerationOptions.from_config(g))
    except (CacheMismatch, FileNotFoundError, MissingMetricWeights) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(et.results_markdown(result))
    print(f"wrote {os.path.join(run.out_dir, task.name, 'results.json')} and results.md")
    return 0 if result["status"] == "ok" else 2
