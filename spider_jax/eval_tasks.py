"""The paper's benchmark tasks (Tab. 1-4, with their appendix versions Tab. 6-14) as the registry eval.py runs.

Why a registry: a benchmark number is only comparable when everything that decides it is pinned down in one
place — the test-set reader and the files it expects under ``--data_dir``, the question (prompt, TaskPrompt,
input media), the generation path (text-only decoding for X-to-Text, the decoders for everything else), the
metric columns exactly as the paper's table prints them (with the factor between the metric library's value and
the printed one) and the numbers the paper reports for Spider and its peers. ``eval_report`` runs a task and
puts ours next to those numbers; it never invents one (missing data or weights are reported as skipped).

Prompts: X-to-Text and Text-to-X use the first template of our instruction pool for that task
(``data/instructions``), the form the model was trained on; the paper gives no evaluation prompts. The editing
tasks have no pool, so their prompts are written here (``prompt_source`` says which is which). AMMG tasks build
one TMM instance per test sample with a fixed seed (``tmm.build_single`` / ``build_travel_guide``), so the
reference answer is the TMM answer for that sample.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from spider_jax import eval_datasets as eds
from spider_jax import template as tpl

AMMG_SEED = 20_000  # template draws of the AMMG instances (training streams use other seeds)
ANSWER, RESPOND = "answer", "respond"  # text-only decoding / decoding + decoders (SpiderGenerator methods)
EDIT_PROMPTS_FILE = "edit_prompts.json"  # optional {sample id: target text} for the editing tasks
WRITTEN = "written for this benchmark (data/instructions has no editing pool)"


@dataclasses.dataclass(frozen=True)
class Column:
    """One metric column as the paper prints it; ``key`` names the scorer's raw value, ``scale`` converts it."""

    label: str
    key: str
    higher_is_better: bool
    scale: float = 1.0  # printed value = scale x raw value (pycocoevalcap fractions -> the paper's x100)
    digits: int = 2
    in_paper: bool = True  # False: our own column (the paper's rows show "—")

    @property
    def header(self) -> str:
        return f"{self.label} ({'↑' if self.higher_is_better else '↓'})"


@dataclasses.dataclass(frozen=True)
class PaperRow:
    """A row of the paper's table: method (with its citation number) and the printed values (None: "—")."""

    method: str
    values: Mapping[str, float | None]
    is_spider: bool = False


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A task's test samples and the files they were read from (reported with the results)."""

    samples: list[eds.EvalSample]
    files: dict[str, str]


@dataclasses.dataclass(frozen=True)
class EvalTask:
    name: str
    title: str
    group: str  # X-to-Text, Text-to-X, X-to-X, Any-to-Many
    tables: tuple[str, ...]  # where the paper reports it
    dataset: str
    layout: str  # what --data_dir must hold
    loader: Callable[[str, int | None, str], Loaded]
    generation: str  # ANSWER or RESPOND
    scorer: str  # key of eval_report.SCORERS
    columns: tuple[Column, ...]
    paper: tuple[PaperRow, ...]
    task_prompt: str = tpl.SMART  # TaskPrompt of the question (AMMG: the instance's own)
    prompt: str = ""  # instruction template; "{}" takes the sample's text, <X> markers become words
    prompt_source: str = ""
    input_modality: str | None = None
    default_data_dir: str = ""  # bundled sample folder, when one exists in the official layout
    max_new_tokens: int = 0  # 0: the config's generate.max_new_tokens
    notes: tuple[str, ...] = ()

    @property
    def spider_row(self) -> PaperRow:
        return next(r for r in self.paper if r.is_spider)


# ------------------------------------------------------------------------------------------ loaders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "data", "samples")


def _first(data_dir: str, candidates: tuple[str, ...], what: str, folder: bool = False) -> str:
    """The first of ``candidates`` (relative to ``data_dir``) that exists: official names first, samples last."""
    for name in candidates:
        path = os.path.join(data_dir, name)
        if os.path.isdir(path) if folder else os.path.isfile(path):
            return path
    raise eds.DatasetError(f"{data_dir}: none of {list(candidates)} found (expected {what})")


def _edit_prompts(data_dir: str) -> dict[str, str]:
    path = os.path.join(data_dir, EDIT_PROMPTS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise eds.DatasetError(f"{path}: expected a JSON object {{sample id: target text}}")
    return {str(k): v for k, v in data.items()}


def _with_target(samples: list[eds.EvalSample], targets: Mapping[str, str], default: Callable) -> list:
    return [dataclasses.replace(s, extra={**s.extra, "target_text": targets.get(s.id) or default(s)}) for s in samples]


def load_coco(data_dir: str, limit: int | None = None, missing: str = "raise") -> Loaded:
    """Karpathy ``dataset_coco.json`` (test split; images under ``data_dir/<filepath>/``) when present, else the
    official ``annotations/captions_val2014.json`` + ``val2014/`` (or the bundled ``captions.json`` + ``images/``)."""
    data_dir = os.path.abspath(data_dir)
    ann = _first(data_dir, ("dataset_coco.json", "annotations/captions_val2014.json", "annotations/captions.json"),
                 "COCO captions: dataset_coco.json (Karpathy) or annotations/captions_val2014.json")  # fmt: skip
    if os.path.basename(ann) == "dataset_coco.json":
        images = data_dir
    else:
        images = _first(data_dir, ("val2014", "images"), "the COCO image folder val2014/", folder=True)
    samples = eds.load_coco_captions(ann, images, split="test", limit=limit, missing=missing)
    return Loaded(samples, {"annotations": ann, "images": images})


def load_coco_edit(data_dir: str, limit: int | None = None, missing: str = "raise") -> Loaded:
    """COCO images with a target text: ``edit_prompts.json`` {image id: text} if present, else the first caption."""
    loaded = load_coco(data_dir, limit, missing)
    samples = _with_target(loaded.samples, _edit_prompts(os.path.abspath(data_dir)), lambda s: s.references[0])
    return Loaded(samples, loaded.files)


def load_audiocaps(data_dir: str, limit: int | None = None, missing: str = "raise") -> Loaded:
    """AudioCaps ``test.csv`` (falls back to val/train, the bundled sample has train.csv) + ``{ytid}_{start}.wav``."""
    data_dir = os.path.abspath(data_dir)
    csv_path = _first(data_dir, ("test.csv", "val.csv", "train.csv"), "AudioCaps test.csv")
    audio = _first(data_dir, ("audio/test", "test", "audio", "waveforms"), "the AudioCaps audio folder", folder=True)
    samples = eds.load_audiocaps(csv_path, audio, limit=limit, missing=missing)
    return Loaded(samples, {"csv": csv_path, "audio": audio})


def load_msrvtt(data_dir: str, limit: int | None = None, missing: str = "raise") -> Loaded:
    """MSR-VTT test split: ``test_videodatainfo.json`` (or ``MSRVTT_data.json``) + ``TestVideo/<id>.mp4``."""
    data_dir = os.path.abspath(data_dir)
    ann = _first(data_dir, ("test_videodatainfo.json", "MSRVTT_data.json", "videodatainfo.json"),
                 "MSR-VTT annotations test_videodatainfo.json")  # fmt: skip
    videos = _first(data_dir, ("TestVideo", "videos/all", "videos"), "the MSR-VTT video folder TestVideo/", folder=True)
    samples = eds.load_msrvtt(ann, videos, split="test", limit=limit, missing=missing)
    return Loaded(samples, {"annotations": ann, "videos": videos})


def load_vctk(data_dir: str, limit: int | None = None, missing: str = "raise") -> Loaded:
    """VCTK utterances; the target text is the transcript (the speech is edited to say it)."""
    data_dir = os.path.abspath(data_dir)
    samples = eds.load_vctk(data_dir, limit=limit, missing=missing)
    return Loaded(_with_target(samples, _edit_prompts(data_dir), lambda s: s.references[0]), {"root": data_dir})


def load_davis(data_dir: str, limit: int | None = None, missing: str = "raise") -> Loaded:
    """DAVIS 2017 val sequences; target text from ``edit_prompts.json`` or "a video of <sequence name>"."""
    data_dir = os.path.abspath(data_dir)
    samples = eds.load_davis(data_dir, limit=limit, missing=missing)
    default = lambda s: f"a video of {s.id.replace('-', ' ').replace('_', ' ')}"  # noqa: E731
    return Loaded(_with_target(samples, _edit_prompts(data_dir), default), {"root": data_dir})


def ammg_loader(dataset: str) -> Callable[[str, int | None, str], Loaded]:
    """One TMM instance of ``dataset`` (i2t_ts, a2t_ts, v2t_ts, tgi) per sample of a ``data/samples``-style layout."""

    def load(data_dir: str, limit: int | None = None, missing: str = "raise") -> Loaded:
        from spider_jax import sources, tmm

        data_dir = os.path.abspath(data_dir)
        try:
            layout = sources.load_layout(data_dir, skip_bad_records=missing != "raise")
        except sources.SourceError as e:
            raise eds.DatasetError(str(e)) from e
        if not layout.get(dataset):
            raise eds.DatasetError(
                f"{data_dir}: no samples for the TMM dataset {dataset!r}; it needs "
                f"{AMMG_LAYOUT[dataset]} (the layout of data/samples, see sources.load_layout)"
            )
        pool = tmm.load_pools()[dataset]
        samples = []
        for i, record in enumerate(layout[dataset][: limit if limit is not None else None]):
            rng = tmm.instance_rng(AMMG_SEED, i)
            if dataset == "tgi":
                inst = tmm.build_travel_guide(pool, record, rng)
            else:
                inst = tmm.build_single(pool, record, rng, dataset)
            media = tuple(p for _, p in inst.inputs)
            samples.append(eds.EvalSample(f"{dataset}_{i:06d}", media, (inst.answer,),
                                          {"instance": tmm.instance_to_json(inst)}))  # fmt: skip
        return Loaded(samples, {"layout": data_dir, "pool": os.path.join(tmm.DEFAULT_POOL_DIR, f"{dataset}.json")})

    return load


AMMG_LAYOUT = {
    "i2t_ts": "image-caption data: cc3m/captions.tsv + cc3m/images or coco/annotations/captions.json + coco/images",
    "a2t_ts": "audiocaps/train.csv + audiocaps/audio",
    "v2t_ts": "webvid/results.csv + webvid/videos",
    "tgi": "travel_guides.json",
}


# ------------------------------------------------------------------------------------------ requests


def build_request(task: EvalTask, sample: eds.EvalSample) -> Any:
    """The :class:`~spider_jax.any_to_many.Request` for one sample (the question is formatted by the generator)."""
    from spider_jax.any_to_many import Request

    if "instance" in sample.extra:  # AMMG: the TMM instance's own instruction, TaskPrompt and inputs
        from spider_jax import tmm
        from spider_jax.generation_cli import tpl_instruction, tpl_task

        inst = tmm.instance_from_json(sample.extra["instance"])
        return Request(tpl_instruction(inst.question, tpl.DEFAULT), tuple(inst.inputs),
                       task=tpl_task(inst.question, tpl.DEFAULT), request_id=sample.id)  # fmt: skip
    from spider_jax.tmm import InstructionPool

    fill = sample.extra.get("target_text") or (sample.references[0] if sample.references else "")
    prompt = InstructionPool.render(task.prompt, fill if "{}" in task.prompt else "")
    inputs = ()
    if task.input_modality:
        inputs = ((task.input_modality, sample.extra.get("input_path") or sample.media[0]),)
    return Request(prompt, inputs, task=task.task_prompt, request_id=sample.id)


def safe_id(sample_id: str) -> str:
    """A sample id as a folder name (ids come from datasets: YouTube ids, sequence names)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", sample_id) or "_"


def prepare_sample(task: EvalTask, sample: eds.EvalSample, task_dir: str) -> eds.EvalSample:
    """A video input given as frames (DAVIS) becomes an MP4 under ``inputs/``, which the generator can read."""
    if task.input_modality != "VIDEO" or not sample.media or not sample.media[0].lower().endswith((".jpg", ".png")):
        return sample
    path = os.path.join(task_dir, "inputs", safe_id(sample.id) + ".mp4")
    if not os.path.isfile(path):
        import numpy as np
        from PIL import Image

        from spider_jax.diffusion.video_pipeline import write_mp4

        frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sample.media])
        frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]  # H.264 needs even sizes
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_mp4(frames, path, fps=24)
    return dataclasses.replace(sample, extra={**sample.extra, "input_path": path})


def target_text(sample: eds.EvalSample) -> str:
    """The text a generated item is scored against (CLIP / CLIPSIM / CLIP-T): target text, else first reference."""
    return sample.extra.get("target_text") or (sample.references[0] if sample.references else "")


# ------------------------------------------------------------------------------------------ registry


def _rows(labels: tuple[str, ...], rows: list[tuple]) -> tuple[PaperRow, ...]:
    """Rows ``(method, value, ...)`` in column order; the method "Spider" (or "Spider (ours)") marks the paper's."""
    return tuple(PaperRow(m, dict(zip(labels, vals, strict=True)), m == "Spider") for m, *vals in rows)


B4, METEOR, CIDER = Column("B@4", "Bleu_4", True, 100, 1), Column("METEOR", "METEOR", True, 100, 1), Column(
    "CIDEr", "CIDEr", True, 100, 1)
FID, FD = Column("FID", "FID", False), Column("FD", "FD", False)
FOLLOWING = (Column("Mod-P", "modality_precision", True, 1, 3, False),
             Column("Mod-R", "modality_recall", True, 1, 3, False),
             Column("Mod-F1", "modality_f1", True, 1, 3, False))  # fmt: skip
AMMG_MEDIA = (Column("I", "I", False), Column("A", "A", False), Column("V", "V", False))
FD_NOTE = ("FD is computed on LAION-CLAP audio embeddings (metrics/audio_features.py), not on PANNs CNN14 as in the "
           "paper's AudioLDM evaluation: compare our FD with other runs of this code only, not with the paper's.")
FID_NOTE = "FID uses pytorch-fid's Inception weights (pt_inception-2015-12-05); few samples give a biased, high FID."
AMMG_NOTE = ("Each answer is split into modality groups (template parser); the k-th produced group of a modality is "
             "matched with the k-th reference group, and I / A / V are FID / FD / FID between matched produced media "
             "and the reference group's source file. Mod-P/R/F1: produced vs requested modalities (macro mean).")


def _ammg_task(name: str, dataset: str, title: str, block: str, rows: list[tuple], extra: tuple[Column, ...] = (),
               notes: tuple[str, ...] = ()) -> EvalTask:  # fmt: skip
    columns = AMMG_MEDIA + extra
    labels = tuple(c.label for c in columns if c.in_paper)
    return EvalTask(
        name, title, "Any-to-Many", (f"Tab. 4 ({block})",), f"TMM {dataset} instances built from the samples",
        AMMG_LAYOUT[dataset], ammg_loader(dataset), RESPOND, "ammg", columns + FOLLOWING, _rows(labels, rows),
        prompt_source=f"data/instructions/{dataset}.json", default_data_dir=SAMPLES,
        notes=(AMMG_NOTE, FD_NOTE, *notes),
    )  # fmt: skip


TASKS: dict[str, EvalTask] = {t.name: t for t in (
    EvalTask(
        "coco_caption", "Image-to-Text on COCO-caption", "X-to-Text", ("Tab. 1", "Tab. 6"),
        "COCO captions (Karpathy test when dataset_coco.json is given)",
        "dataset_coco.json + val2014/ (Karpathy), or annotations/captions_val2014.json + val2014/",
        load_coco, ANSWER, "captions", (B4, METEOR, CIDER),
        _rows(("B@4", "METEOR", "CIDEr"), [
            ("Oscar [32]", 36.58, 30.4, 124.12), ("BLIP-2 [30]", 43.7, None, 145.8), ("OFA [62]", 44.9, 32.5, 154.9),
            ("CoDi [55]", 40.2, 31.0, 149.9), ("NExT-GPT [66]", 45.1, 34.1, 158.3), ("Spider", 45.9, 34.3, 158.8)]),
        task_prompt="TEXT", prompt="Describe this image.", prompt_source="data/instructions/i2t.json",
        input_modality="IMAGE", default_data_dir=os.path.join(SAMPLES, "coco"), max_new_tokens=64,
        notes=("B@4, METEOR and CIDEr are pycocoevalcap's values x100, as the paper prints them.",),
    ),
    EvalTask(
        "audiocaps_caption", "Audio-to-Text on AudioCaps", "X-to-Text", ("Tab. 1", "Tab. 7"), "AudioCaps test",
        "test.csv (audiocap_id,youtube_id,start_time,caption) + audio/<youtube_id>_<start_time>.wav",
        load_audiocaps, ANSWER, "captions",
        (Column("SPIDEr", "SPIDEr", True, 1, 3), Column("CIDEr", "CIDEr", True, 1, 3)),
        _rows(("SPIDEr", "CIDEr"), [
            ("AudioCaps [25]", 0.369, 0.593), ("BART [18]", 0.465, 0.753), ("AL-MixGen [26]", 0.466, 0.755),
            ("CoDi [55]", 0.480, 0.789), ("NExT-GPT [66]", 0.534, 0.807), ("Spider", 0.537, 0.819)]),
        task_prompt="TEXT", prompt="Describe this audio clip.", prompt_source="data/instructions/a2t.json",
        input_modality="AUDIO", default_data_dir=os.path.join(SAMPLES, "audiocaps"), max_new_tokens=64,
        notes=("SPIDEr = (CIDEr-D + SPICE) / 2; SPICE needs the Stanford CoreNLP jars (see the skip reason).",),
    ),
    EvalTask(
        "msrvtt_caption", "Video-to-Text on MSR-VTT", "X-to-Text", ("Tab. 1", "Tab. 8"), "MSR-VTT test (2,990 videos)",
        "test_videodatainfo.json + TestVideo/<video_id>.mp4", load_msrvtt, ANSWER, "captions", (B4, METEOR),
        _rows(("B@4", "METEOR"), [
            ("ORG-TRL [72]", 43.6, 28.8), ("GIT [61]", 54.8, 33.1), ("mPLUG-2 [67]", 57.8, 34.9),
            ("CoDi [55]", 52.1, 32.5), ("NExT-GPT [66]", 58.8, 39.6), ("Spider", 59.8, 40.2)]),
        task_prompt="TEXT", prompt="Describe this video.", prompt_source="data/instructions/v2t.json",
        input_modality="VIDEO", max_new_tokens=64,
        notes=("B@4 and METEOR are pycocoevalcap's values x100, as the paper prints them.",),
    ),
    EvalTask(
        "coco_t2i", "Text-to-Image on COCO-caption", "Text-to-X", ("Tab. 2", "Tab. 9"),
        "COCO captions: each image's first caption is the prompt, the images are the reference set",
        "as coco_caption", load_coco, RESPOND, "t2i", (FID,),
        _rows(("FID",), [("CogVideo [13]", 27.10), ("GLIDE [41]", 12.24), ("CoDi [55]", 11.26), ("SD [47]", 11.21),
                         ("NExT-GPT [66]", 11.18), ("Spider", 11.13)]),
        task_prompt="IMAGE", prompt="Generate an <IMAGE> of {}", prompt_source="data/instructions/t2i.json",
        default_data_dir=os.path.join(SAMPLES, "coco"), max_new_tokens=96, notes=(FID_NOTE,),
    ),
    EvalTask(
        "audiocaps_t2a", "Text-to-Audio on AudioCaps", "Text-to-X", ("Tab. 2", "Tab. 10"),
        "AudioCaps test: each clip's first caption is the prompt, the clips are the reference set",
        "as audiocaps_caption", load_audiocaps, RESPOND, "t2a", (FD, Column("IS", "IS", True)),
        _rows(("FD", "IS"), [
            ("DiffSound [69]", 47.68, 4.01), ("AudioLDM-S [35]", 29.48, 6.90), ("AudioLDM-L [35]", 23.31, 8.13),
            ("CoDi [55]", 22.90, 8.77), ("NExT-GPT [66]", 23.25, 8.67), ("Spider", 23.02, 8.84)]),
        task_prompt="AUDIO", prompt="Generate an <AUDIO> of {}", prompt_source="data/instructions/t2a.json",
        default_data_dir=os.path.join(SAMPLES, "audiocaps"), max_new_tokens=96, notes=(FD_NOTE,),
    ),
    EvalTask(
        "msrvtt_t2v", "Text-to-Video on MSR-VTT", "Text-to-X", ("Tab. 2", "Tab. 11"),
        "MSR-VTT test: each video's first sentence is the prompt, the videos' frames are the reference set",
        "as msrvtt_caption", load_msrvtt, RESPOND, "t2v", (FID, Column("CLIPSIM", "CLIPSIM", True, 1, 4)),
        _rows(("FID", "CLIPSIM"), [
            ("CogVideo [20]", 23.59, 0.2631), ("MakeVideo [51]", 13.17, 0.3049), ("Latent-VDM [47]", 14.25, 0.2756),
            ("Latent-Shift [3]", 15.23, 0.2773), ("NExT-GPT [66]", 12.69, 0.3197), ("Spider", 12.62, 0.3258)]),
        task_prompt="VIDEO", prompt="Generate a <VIDEO> of {}", prompt_source="data/instructions/t2v.json",
        max_new_tokens=96,
        notes=("FID over up to 16 evenly spaced frames per video; CLIPSIM: mean text-frame CLIP cosine.", FID_NOTE),
    ),
    EvalTask(
        "coco_i2i", "Image-to-Image (text-conditioned object editing) on COCO", "X-to-X", ("Tab. 3", "Tab. 12"),
        "COCO images + target text (edit_prompts.json {image id: text}, else the first caption)",
        "as coco_caption, optionally edit_prompts.json", load_coco_edit, RESPOND, "i2i",
        (Column("CLIP", "CLIP", True), FID),
        _rows(("CLIP", "FID"), [
            ("BLDM [4]", 29.95, 6.14), ("DiffEdit [11]", 29.30, 3.78), ("PFB-Diff [24]", 30.81, 5.93),
            ("NExT-GPT [66]", 29.32, 6.62), ("Spider", 30.52, 5.33)]),
        task_prompt="IMAGE", prompt="Edit this <IMAGE> so that it shows: {}", prompt_source=WRITTEN,
        input_modality="IMAGE", default_data_dir=os.path.join(SAMPLES, "coco"), max_new_tokens=96,
        notes=("CLIP: 100 x cosine(edited image, target text); FID: edited vs source images.",
               "PFB-Diff's object-edit prompts are not distributed with COCO: without edit_prompts.json the target "
               "is the image's first caption, which makes this a caption-guided re-generation check.", FID_NOTE),
    ),
    EvalTask(
        "vctk_a2a", "Audio-to-Audio (text-conditioned speech editing) on VCTK", "X-to-X", ("Tab. 3", "Tab. 13"),
        "VCTK utterances; the target text is the transcript (or edit_prompts.json)",
        "txt/<spk>/*.txt + wav48_silence_trimmed/<spk>/*_mic1.flac (VCTK 0.92) or wav48/", load_vctk, RESPOND, "a2a",
        (Column("MCD", "MCD", False, 1, 3),),
        _rows(("MCD",), [("CampNet [63]", 0.380), ("MakeAudio [21]", 0.375), ("AudioLDM-L [35]", 0.349),
                         ("NExT-GPT [66]", 0.300), ("Spider", 0.279)]),
        task_prompt="AUDIO", prompt="Edit this <AUDIO> so that the speaker says: {}",
        prompt_source=WRITTEN, input_modality="AUDIO", max_new_tokens=96,
        notes=("MCD (metrics/mcd.py): DTW-aligned mel-cepstral distortion in dB between the original recording and "
               "the generated speech. The paper does not state its MCD configuration (0.279 is on no common scale) "
               "nor its editing protocol: compare our MCD only with other runs of this code.",),
    ),
    EvalTask(
        "davis_v2v", "Video-to-Video (text-conditioned video editing) on DAVIS", "X-to-X", ("Tab. 3", "Tab. 14"),
        "DAVIS 2017 val sequences + target text (edit_prompts.json {sequence: text}, else 'a video of <name>')",
        "ImageSets/2017/val.txt + JPEGImages/480p/<seq>/*.jpg, optionally edit_prompts.json", load_davis, RESPOND,
        "v2v", (Column("CLIP-T", "CLIP-T", True, 1, 4), Column("CLIP-I", "CLIP-I", True, 1, 4)),
        _rows(("CLIP-T", "CLIP-I"), [
            ("TuneVideo [65]", 0.2758, 0.9240), ("SDEdit [39]", 0.2775, 0.8731), ("Pix2Video [8]", 0.2891, 0.9767),
            ("NExT-GPT [66]", 0.2684, 0.9647), ("Spider", 0.2782, 0.9715)]),
        task_prompt="VIDEO", prompt="Edit this <VIDEO> so that it shows: {}", prompt_source=WRITTEN,
        input_modality="VIDEO", max_new_tokens=96,
        notes=("The input video is the sequence's frames written as an MP4 (24 fps). CLIP-T: mean CLIP cosine of the "
               "edited frames with the target text; CLIP-I: Pix2Video's mean cosine of consecutive edited frames.",),
    ),
    _ammg_task("ammg_image", "i2t_ts", "Image-to-Many (X_I-to-Xs)", "X_I-to-Xs", [
        ("NExT-GPT", 12.52, 39.12, 32.41), ("Spider-base", 9.24, 22.75, 18.95), ("Spider", 5.11, 18.44, 15.77)],
        (Column("B@4", "Bleu_4", True, 100, 1, False),)),
    _ammg_task("ammg_audio", "a2t_ts", "Audio-to-Many (X_A-to-Xs)", "X_A-to-Xs", [
        ("NExT-GPT", 26.13, 28.00, 40.02), ("Spider-base", 15.60, 16.82, 22.17), ("Spider", 12.36, 12.23, 18.93)],
        (Column("B@4", "Bleu_4", True, 100, 1, False),)),
    _ammg_task("ammg_video", "v2t_ts", "Video-to-Many (X_V-to-Xs)", "X_V-to-Xs", [
        ("NExT-GPT", 32.02, 48.17, 23.66), ("Spider-base", 17.88, 24.01, 13.22), ("Spider", 14.53, 20.55, 10.03)],
        (Column("B@4", "Bleu_4", True, 100, 1, False),)),
    _ammg_task("tgi", "tgi", "Text-to-Many travel guides (Text-to-Xs, T-to-TXs TGI)", "Text-to-Xs", [
        ("NExT-GPT", 35.16, 60.53, 37.68, 32.4), ("Spider-base", 20.73, 38.27, 23.11, 40.5),
        ("Spider", 17.48, 33.02, 20.02, 40.8)], (B4,),
        ("B@4: COCO BLEU-4 of the answer's text response against the reference guide's text (metrics.ammg).",
         "The reference guides are text only, so I / A / V have no reference media here and are skipped.")),
)}  # fmt: skip


def get_task(name: str) -> EvalTask:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; choose from {', '.join(TASKS)} (or 'list')")
    return TASKS[name]


def registry_markdown() -> str:
    """``eval.py --task list``: one row per task with its data, metrics and the paper's numbers for Spider."""
    lines = ["| task | paper | dataset (--data_dir holds) | generation | metrics | Spider (paper) |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for t in TASKS.values():
        spider = ", ".join(f"{k} {v:g}" for k, v in t.spider_row.values.items() if v is not None)
        metrics = ", ".join(c.header + ("" if c.in_paper else "*") for c in t.columns)
        default = f" [default {os.path.relpath(t.default_data_dir, ROOT)}]" if t.default_data_dir else ""
        lines.append(f"| {t.name} | {' / '.join(t.tables)}: {t.title} | {t.layout}{default} | {t.generation} | "
                     f"{metrics} | {spider} |")  # fmt: skip
    lines.append("\n`*`: our column, not in the paper. Run: python eval.py --config CFG --task NAME --data_dir DIR "
                 "--checkpoint RUN_DIR [--limit N] [--out DIR]")  # fmt: skip
    return "\n".join(lines)


def results_markdown(result: dict[str, Any]) -> str:
    """The paper's table for the task with our row appended, then skipped metrics (with reasons) and notes."""
    task = get_task(result["task"])
    lines = [f"# {task.title} (`{task.name}`)", "", f"Paper: {', '.join(task.tables)}. Data: `{result['data_dir']}`."]
    if result.get("status") == "skipped":
        lines += ["", f"**Task skipped:** {result['reason']}"]
    else:
        ok = result["scored"] == result["samples"]
        lines += [f"Samples: {result['scored']} scored of {result['samples']}"
                  f"{'' if ok else ' (**a subset**: see generation_errors in results.json)'}; "
                  f"{result['generated_this_run']} generated in this run, {result['cached']} from the cache. "
                  f"Checkpoint: `{result.get('checkpoint') or 'n/a'}`."]  # fmt: skip
    lines += ["", "| Method | " + " | ".join(c.header for c in task.columns) + " |",
              "| --- |" + " ---: |" * len(task.columns)]  # fmt: skip
    for row in task.paper:
        cells = [f"{row.values[c.label]:g}" if c.in_paper and row.values.get(c.label) is not None else "—"
                 for c in task.columns]  # fmt: skip
        lines.append(f"| {row.method}{' (paper)' if row.is_spider else ''} | " + " | ".join(cells) + " |")
    metrics = result.get("metrics", {})
    cells = [f"{metrics[c.label]:.{c.digits}f}" if c.label in metrics else "skipped" for c in task.columns]
    lines.append("| **Ours (this run)** | " + " | ".join(cells) + " |")
    if any(not c.in_paper for c in task.columns):
        lines += ["", "Columns the paper does not have: " + ", ".join(c.label for c in task.columns if not c.in_paper)]
    if result.get("skipped"):
        lines += ["", "**Skipped metrics** (no number is reported for them):"]
        lines += [f"- {label}: {reason}" for label, reason in result["skipped"].items()]
    if task.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in task.notes]
    return "\n".join(lines) + "\n"
