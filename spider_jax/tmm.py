"""TMM (Text-formatted Many-Modal) instances, built online from caption samples and instruction pools.

Paper App. H: (a) an instruction pool holds templates whose markers (``<IMAGE>``, ``<VIDEO>`` …) name the target
modalities; (b) a template is drawn at random and filled with the sample's text to make the question; (c) the
markers are parsed to build the answer in the Any-to-Many format. Instance ``i`` of a stage is a pure function
of ``(seed, i)`` — dataset choice by the stage mixture (Tab. 21b), sample and template — so a data iterator
resumes exactly from a step counter and every host can compute any slice of the stream.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spider_jax import template as tpl

DEFAULT_POOL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "instructions")
MARKER_RE = re.compile(r"<(IMAGE|VIDEO|AUDIO|BOX|MASK)>")
WORDS = {"IMAGE": "image", "VIDEO": "video", "AUDIO": "audio", "BOX": "bounding box", "MASK": "mask"}
GENERATED = ("IMAGE", "VIDEO", "AUDIO")  # modalities a specific-multimodal request may ask for

# Tab. 21(b): dataset proportions per training stage (70% instruction data / 30% TMM in stage 3).
STAGE_MIXTURES: dict[str, dict[str, float]] = {
    "stage1": {"i2t": 0.1, "v2t": 0.1, "a2t": 0.1, "t2i": 0.2, "t2v": 0.2, "t2a": 0.1, "i2b": 0.1, "i2m": 0.1},
    "stage2": {
        "t2i_ts": 0.1,
        "t2v_ts": 0.1,
        "t2a_ts": 0.1,
        "i2t_ts": 0.2,
        "v2t_ts": 0.2,
        "a2t_ts": 0.1,
        "i2b_ts": 0.1,
        "i2m_ts": 0.1,
    },
    "stage3": {
        "t2i_ts": 0.03,
        "t2v_ts": 0.03,
        "t2a_ts": 0.03,
        "i2t_ts": 0.06,
        "v2t_ts": 0.06,
        "a2t_ts": 0.03,
        "i2b_ts": 0.03,
        "i2m_ts": 0.03,
        "smmi": 0.5,
        "spmi": 0.1,
        "tgi": 0.1,
    },
}


class PoolError(ValueError):
    """An instruction pool file is malformed; the message names the file and the template."""


@dataclasses.dataclass(frozen=True)
class InstructionPool:
    name: str
    task: str
    input_modality: str | None
    templates: tuple[str, ...]
    source: str = ""

    def targets(self, template: str) -> tuple[str, ...]:
        """Target modalities named by the template's markers, in order; a single-modal task implies its own."""
        marked = tuple(dict.fromkeys(MARKER_RE.findall(template)))
        if not marked and self.task in tpl.MODALITIES:
            return (self.task,)
        return marked

    @staticmethod
    def render(template: str, fill: str = "") -> str:
        """Question text: markers become words, ``{}`` the sample text."""
        text = MARKER_RE.sub(lambda m: WORDS[m.group(1)], template)
        return text.replace("{}", fill.strip()) if "{}" in text else text


def load_pool(path: str | os.PathLike) -> InstructionPool:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PoolError(f"{path}: cannot read instruction pool ({e})") from e
    for key in ("name", "task", "templates"):
        if key not in raw:
            raise PoolError(f"{path}: missing key {key!r}")
    if raw["task"] not in tpl.TASK_PROMPTS:
        raise PoolError(f"{path}: task {raw['task']!r} is not one of {tpl.TASK_PROMPTS}")
    input_modality = raw.get("input_modality")
    if input_modality is not None and input_modality not in tpl.INPUT_MODALITIES:
        raise PoolError(f"{path}: input_modality {input_modality!r} is not one of {tpl.INPUT_MODALITIES}")
    templates = raw["templates"]
    if not isinstance(templates, list) or not templates:
        raise PoolError(f"{path}: 'templates' must be a non-empty list")
    for i, t in enumerate(templates):
        if not isinstance(t, str) or not t.strip():
            raise PoolError(f"{path}: template {i} is not a non-empty string")
        if t.count("{}") > 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
            raise PoolError(f"{path}: template {i} must hold at most one '{{}}' placeholder: {t!r}")
        markers = MARKER_RE.findall(t)
        if len(markers) != len(set(markers)):
            raise PoolError(f"{path}: template {i} repeats a modality marker: {t!r}")
        if not markers and raw["task"] in (tpl.SMART,):
            raise PoolError(f"{path}: template {i} names no target modality (<IMAGE>, <VIDEO> …): {t!r}")
    if len(set(templates)) != len(templates):
        raise PoolError(f"{path}: duplicate templates")
    return InstructionPool(raw["name"], raw["task"], input_modality, tuple(templates), raw.get("source", ""))


def load_pools(folder: str | os.PathLike = DEFAULT_POOL_DIR) -> dict[str, InstructionPool]:
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise PoolError(f"{folder}: instruction pool folder not found")
    pools = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            pool = load_pool(os.path.join(folder, name))
            pools[pool.name] = pool
    return pools


# ------------------------------------------------------------------------------------- instances


@dataclasses.dataclass(frozen=True)
class Sample:
    """One record of a source dataset: the text (caption, referring expression, or city) and its media."""

    text: str
    media: tuple[tuple[str, str], ...] = ()  # (modality, path) of the input-side media
    box: tuple[float, float, float, float] | None = None  # normalised x1, y1, x2, y2 (I2B)
    guide: str = ""  # TGI: the tagged multimodal guide answer ("… <IMAGE> Forbidden City </IMAGE> …")
    mask: dict | None = None  # I2M: COCO RLE {"size": [h, w], "counts": str} of the referred object
    sample_id: str = ""


@dataclasses.dataclass(frozen=True)
class Instance:
    question: str
    answer: str
    inputs: tuple[tuple[str, str], ...]  # input media to encode, in slot order
    targets: tuple[str, ...]  # output modality groups in the answer, in order
    dataset: str
    sample_ids: tuple[str, ...] = ()
    # Per answer group, the media file the group should produce ("" if unknown, e.g. travel guides): the
    # M-Reconstruction target E^X is that file's encoder embedding.
    outputs: tuple[str, ...] = ()


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if not text or text[-1] in ".!?" else text + "."


def _groups(targets: Sequence[str], t_prompt: str, lead_text: str) -> list[tpl.Group]:
    """Paper App. H answer: the text, then one group per target with the caption as T-Prompt."""
    prompt = t_prompt.strip().rstrip(".")
    return [tpl.Group(m, prompt, lead_text if i == 0 else ".") for i, m in enumerate(targets)]


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    template: tpl.TemplateConfig = tpl.DEFAULT
    boxes_in_text: bool = True  # I2B answers state the box as "[x1, y1, x2, y2]" before the <BOX> group
    max_concat: int = 5  # SmMI / SpMI: up to this many samples per instance


def build_single(
    pool: InstructionPool, sample: Sample, rng: np.random.Generator, dataset: str, opts: BuildOptions = BuildOptions()
) -> Instance:
    """T-to-TXs, X-to-TXs and single-task X-to-X instances from one sample."""
    template = pool.templates[rng.integers(len(pool.templates))]
    targets = pool.targets(template)
    inputs = ()
    if pool.input_modality is not None:
        paths = [p for m, p in sample.media if m == pool.input_modality]
        if not paths:
            raise ValueError(
                f"{dataset}: sample {sample.sample_id or sample.text!r} has no {pool.input_modality} media"
            )
        inputs = ((pool.input_modality, paths[0]),)
    fill = sample.text if "{}" in template else ""
    question = tpl.format_question(pool.render(template, fill), pool.task, [m for m, _ in inputs], opts.template)
    single_modal = pool.task in tpl.MODALITIES  # X-to-X pretraining: the answer is the group alone
    lead = "" if single_modal else _sentence(sample.text)
    if "BOX" in targets and sample.box is not None and opts.boxes_in_text:
        lead = _sentence(f"{sample.text.strip().rstrip('.')} {tpl.format_box(sample.box)}")
    if pool.task == "TEXT" or not targets:  # captioning: the answer is the text alone
        answer = tpl.format_answer([], _sentence(sample.text), opts.template)
    else:
        answer = tpl.format_answer(_groups(targets, sample.text, lead), "", opts.template)
    return Instance(question, answer, inputs, targets, dataset, (sample.sample_id,), _media_for(sample, targets))


def build_smart(
    pool: InstructionPool, samples: Sequence[Sample], rng: np.random.Generator, opts: BuildOptions = BuildOptions()
) -> Instance:
    """SmMI: several samples, each with its own template fragment, concatenated into one request."""
    chosen = _choose(samples, rng, opts.max_concat)
    questions, groups, targets, outputs = [], [], [], []
    for sample in chosen:
        template = pool.templates[rng.integers(len(pool.templates))]
        sample_targets = pool.targets(template)
        questions.append(_sentence(pool.render(template, sample.text)))
        groups += _groups(sample_targets, sample.text, _sentence(sample.text))
        targets += sample_targets
        outputs += _media_for(sample, sample_targets)
    question = tpl.format_question(" ".join(questions), pool.task, (), opts.template)
    answer = tpl.format_answer(groups, "", opts.template)
    return Instance(question, answer, (), tuple(targets), pool.name, tuple(s.sample_id for s in chosen), tuple(outputs))


def build_specific(
    pool: InstructionPool, samples: Sequence[Sample], rng: np.random.Generator, opts: BuildOptions = BuildOptions()
) -> Instance:
    """SpMI: the user writes the groups themselves (``<IMAGE> cap </IMAGE>``); the answer fills in M-Prompts."""
    chosen = _choose(samples, rng, opts.max_concat)
    requests, groups, outputs = [], [], []
    cfg = opts.template
    for sample in chosen:
        k = int(rng.integers(1, len(GENERATED) + 1))
        for modality in rng.permutation(GENERATED)[:k]:
            caption = sample.text.strip().rstrip(".")
            requests.append(f"{cfg.begin(modality)} {caption} {cfg.end(modality)}")
            groups.append(tpl.Group(str(modality), caption, "." if groups else ""))
            outputs += _media_for(sample, [str(modality)])
    template = pool.templates[rng.integers(len(pool.templates))]
    question = tpl.format_question(pool.render(template, " ".join(requests)), pool.task, (), cfg)
    answer = tpl.format_answer(groups, "", cfg)
    return Instance(
        question,
        answer,
        (),
        tuple(g.modality for g in groups),
        pool.name,
        tuple(s.sample_id for s in chosen),
        tuple(outputs),
    )


def build_travel_guide(
    pool: InstructionPool, record: Sample, rng: np.random.Generator, opts: BuildOptions = BuildOptions()
) -> Instance:
    """TGI: a city's tagged guide; groups of modalities the template did not ask for become plain text."""
    template = pool.templates[rng.integers(len(pool.templates))]
    wanted = set(pool.targets(template))
    parsed = tpl.parse_answer(f"{opts.template.out_token} {record.guide} {opts.template.end_token}", opts.template)
    groups, pending = [], []
    for g in parsed.groups:
        if g.modality in wanted:
            groups.append(tpl.Group(g.modality, g.t_prompt, " ".join(p for p in (*pending, g.text_before) if p)))
            pending = []
        else:
            pending += [p for p in (g.text_before, g.t_prompt) if p]
    trailing = " ".join(p for p in (*pending, parsed.trailing_text) if p)
    question = tpl.format_question(pool.render(template, record.text), pool.task, (), opts.template)
    answer = tpl.format_answer(groups, trailing, opts.template)
    targets = tuple(g.modality for g in groups)
    return Instance(question, answer, (), targets, pool.name, (record.sample_id,), ("",) * len(targets))


def _media_for(sample: Sample, targets: Sequence[str]) -> tuple[str, ...]:
    """The sample's file of each target modality ("" where it has none; boxes/masks target the input image)."""
    by_modality = dict(reversed(sample.media))  # first file of each modality wins
    return tuple(by_modality.get(m, "") if m in GENERATED else "" for m in targets)


def _choose(samples: Sequence[Sample], rng: np.random.Generator, max_concat: int) -> list[Sample]:
    if not samples:
        raise ValueError("no samples to concatenate")
    k = int(rng.integers(1, min(max_concat, len(samples)) + 1))
    return [samples[i] for i in rng.choice(len(samples), size=k, replace=False)]


# -------------------------------------------------------------------------------------- mixture


def instance_rng(seed: int, index: int) -> np.random.Generator:
    """Independent, reproducible randomness for instance ``index`` (no state carried between instances)."""
    return np.random.default_rng([seed, index])


def normalised_mixture(weights: Mapping[str, float], available: Sequence[str] | None = None) -> dict[str, float]:
    """Keeps datasets that are ``available`` (all if None) and rescales their weights to sum to 1."""
    kept = {k: float(v) for k, v in weights.items() if v > 0 and (available is None or k in available)}
    total = sum(kept.values())
    if total <= 0:
        raise ValueError(f"mixture {dict(weights)} has no dataset among the available ones {list(available or [])}")
    return {k: v / total for k, v in kept.items()}


def choose_dataset(mixture: Mapping[str, float], rng: np.random.Generator) -> str:
    names = sorted(mixture)
    probs = np.asarray([mixture[n] for n in names])
    return names[int(rng.choice(len(names), p=probs / probs.sum()))]


def build_instance(
    index: int,
    seed: int,
    mixture: Mapping[str, float],
    pools: Mapping[str, InstructionPool],
    sources: Mapping[str, Sequence[Sample]],
    opts: BuildOptions = BuildOptions(),
) -> Instance:
    """Instance ``index`` of the stream: dataset by ``mixture``, then sample(s) and template, all from (seed, index).

    ``sources[name]`` holds the samples of dataset ``name``; ``pools[name]`` its instruction pool.
    """
    rng = instance_rng(seed, index)
    name = choose_dataset(mixture, rng)
    if name not in pools:
        raise KeyError(f"dataset {name!r} has no instruction pool (have {sorted(pools)})")
    samples = sources.get(name)
    if not samples:
        raise KeyError(f"dataset {name!r} has no samples")
    pool = pools[name]
    if name == "smmi":
        return build_smart(pool, samples, rng, opts)
    if name == "spmi":
        return build_specific(pool, samples, rng, opts)
    sample = samples[int(rng.integers(len(samples)))]
    if name == "tgi":
        return build_travel_guide(pool, sample, rng, opts)
    return build_single(pool, sample, rng, name, opts)


def instance_to_json(instance: Instance) -> dict[str, Any]:
    return dataclasses.asdict(instance)


def instance_from_json(record: Mapping[str, Any]) -> Instance:
    """Inverse of :func:`instance_to_json` (JSON turns tuples into lists)."""
    return Instance(
        question=record["question"],
        answer=record["answer"],
        inputs=tuple((m, p) for m, p in record.get("inputs", ())),
        targets=tuple(record.get("targets", ())),
        dataset=record.get("dataset", ""),
        sample_ids=tuple(record.get("sample_ids", ())),
        outputs=tuple(record.get("outputs", ())),
    )
