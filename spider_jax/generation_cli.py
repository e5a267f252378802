"""``python -m spider_jax.generate``: a prompt (+ media) -> a many-modal response folder; or a pseudo X-to-Xs dataset.

One response::

    python -m spider_jax.generate --config configs/tiny.py --checkpoint runs/tiny \\
        --prompt "Show me a dog and let me hear it bark" [--image a.png] [--audio b.wav] [--video c.mp4] --out out/

writes ``response.md``, the media in answer order, ``boxes.json``, masks and a self-contained ``index.html``
(``response_writer``). ``--checkpoint`` is a training run's ``output_dir`` (the final checkpoint of the config's
last stage is read) or a folder exported by ``convert.spider.export_trainables``. Input media are placed in the
question in the order images, audio, videos.

Pseudo X-to-Xs dataset (paper App. I)::

    python -m spider_jax.generate --config ... --checkpoint ... --pseudo_dataset smmi --num_samples 2000 --out ds/

draws TMM questions of that dataset (Tab. 21a names: t2i_ts, i2t_ts, smmi, spmi, tgi, ...), answers them with the
decoders and writes ``ds/records.jsonl`` (one JSON per instance: question, inputs, requested groups, answer, each
group's files) and ``ds/<id>/`` media. Re-running continues after the last written record.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

from spider_jax import template as tpl


def model_flags(argv: Sequence[str]):
    """The flags of every entry point that loads a checkpoint and decodes (this CLI, ``eval.py --task``): ``--config``
    (+ ``--config.x`` overrides), ``--checkpoint`` and the decoding settings (default: ``cfg.generate``).

    A private flag set, so tests and notebooks can call the entry points many times; config_flags defines the
    override flags from ``argv`` itself.
    """
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", "configs/tiny.py", "Spider config the checkpoint was trained with.",
                                    flag_values=fv, sys_argv=list(argv))  # fmt: skip
    flags.DEFINE_string("checkpoint", None, "Run output_dir, or an export_trainables folder.", flag_values=fv)
    flags.DEFINE_integer("max_new_tokens", None, "Default: config generate.max_new_tokens.", flag_values=fv)
    flags.DEFINE_float("temperature", None, "0 = greedy. Default: config.", flag_values=fv)
    flags.DEFINE_integer("top_k", None, "Default: config.", flag_values=fv)
    flags.DEFINE_float("top_p", None, "Default: config.", flag_values=fv)
    flags.DEFINE_integer("seed", None, "Sampling and decoder noise seed. Default: config.", flag_values=fv)
    return fv


def generate_settings(cfg: ml_collections.ConfigDict, fv, **defaults: Any) -> dict[str, Any]:
    """``cfg.generate`` with ``defaults`` (e.g. a task's answer length) and then the command line's flags on top."""
    g = {**cfg.generate.to_dict(), **defaults}
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "seed"):
        if fv[name].value is not None:
            g[name] = fv[name].value
    return g


def _flags(argv: Sequence[str]):
    from absl import flags

    fv = model_flags(argv)
    flags.DEFINE_string("prompt", "", "The user's instruction.", flag_values=fv)
    flags.DEFINE_multi_string("image", [], "Input image file(s).", flag_values=fv)
    flags.DEFINE_multi_string("audio", [], "Input audio file(s).", flag_values=fv)
    flags.DEFINE_multi_string("video", [], "Input video file(s).", flag_values=fv)
    flags.DEFINE_enum("task", tpl.SMART, list(tpl.TASK_PROMPTS), "TaskPrompt of the question.", flag_values=fv)
    flags.DEFINE_string("answer_prefix", "", "Force the answer to start with this text.", flag_values=fv)
    flags.DEFINE_string("out", "generated", "Output folder.", flag_values=fv)
    flags.DEFINE_string("pseudo_dataset", "", "TMM dataset name: write a pseudo X-to-Xs dataset.", flag_values=fv)
    flags.DEFINE_integer("num_samples", 16, "Pseudo dataset size.", flag_values=fv)
    return fv


def load_generator(cfg: ml_collections.ConfigDict, checkpoint: str):
    """A :class:`~spider_jax.any_to_many.SpiderGenerator` for ``cfg`` with the weights at ``checkpoint``."""
    import jax
    from flax import linen as nn

    from spider_jax import spider_train
    from spider_jax.any_to_many import SpiderGenerator
    from spider_jax.convert import spider as convert_spider

    if not checkpoint or not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint!r} is not a folder (a run's output_dir or an export)")
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    exported = os.path.exists(os.path.join(checkpoint, convert_spider.WEIGHTS_FILE))
    if not exported:
        cfg.output_dir = checkpoint
    job = spider_train.prepare(cfg)
    like = nn.unbox(spider_train.init_spider(job.spider, jax.random.PRNGKey(cfg.seed), llm_params=job.llm_params))
    if exported:
        variables = {**like, **convert_spider.import_trainables(checkpoint, like)}
    else:
        variables = spider_train.load_stage_variables(job, spider_train.stage_names(cfg)[-1], like)
    return SpiderGenerator(job, variables, cfg)  # demo decoders are built on first use (demo_decoders.resolve)


def _options(cfg: ml_collections.ConfigDict, fv) -> Any:
    from spider_jax.any_to_many import GenerationOptions

    return GenerationOptions.from_config(generate_settings(cfg, fv))


def write_pseudo_dataset(generator, name: str, num_samples: int, out: str, options, batch_size: int = 4) -> str:
    """Answers ``num_samples`` TMM questions of dataset ``name`` and writes ``out/records.jsonl`` + media.

    Questions come from the eval seed's stream (not the training seeds) restricted to ``name``. Records already
    in the file are kept and skipped, so an interrupted run continues.
    """
    from tqdm import tqdm

    from spider_jax import input_pipeline as ip
    from spider_jax.any_to_many import Request
    from spider_jax.response_writer import write_response
    from spider_jax.spider_train import build_options

    job = generator.job
    if name not in job.pools or not job.sources.get(name):
        raise ValueError(f"dataset {name!r} has no instruction pool or samples; available: {sorted(job.sources)}")
    stream = ip.instance_dataset({name: 1.0}, job.pools, job.sources, seed=job.cfg.eval.seed + 1,
                                 opts=build_options(job.cfg))  # fmt: skip
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "records.jsonl")
    done = set()
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            done = {json.loads(line)["id"] for line in f if line.strip()}
    todo = [i for i in range(num_samples) if f"{name}_{i:06d}" not in done]
    media_root = job.pipeline.media_root
    with open(path, "a", encoding="utf-8") as f, tqdm(total=len(todo), desc=f"pseudo {name}") as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            instances = [stream[i] for i in chunk]
            requests = [
                Request(
                    tpl_instruction(inst.question, generator.template),
                    tuple((m, p if os.path.isabs(p) else os.path.join(media_root, p)) for m, p in inst.inputs),
                    task=tpl_task(inst.question, generator.template),
                    request_id=f"{name}_{i:06d}",
                )
                for i, inst in zip(chunk, instances, strict=True)
            ]
            for i, inst, response in zip(chunk, instances, generator.respond(requests, options), strict=True):
                rid = f"{name}_{i:06d}"
                if response.question != inst.question:  # the request must ask exactly the TMM question
                    raise RuntimeError(f"{rid}: rebuilt question {response.question!r} != {inst.question!r}")
                manifest = write_response(response, os.path.join(out, rid), fps=generator.cfg.decoders.fps)
                record = {
                    "id": rid, "dataset": name, "question": response.question, "inputs": [list(x) for x in inst.inputs],
                    "requested": list(inst.targets), "tmm_answer": inst.answer, "answer": response.answer,
                    "groups": [
                        {**g, "files": [os.path.join(rid, x) for x in g.get("files", [])]} for g in manifest["groups"]
                    ],
                }  # fmt: skip
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
                bar.update(1)
    return path


def tpl_instruction(question: str, config: tpl.TemplateConfig) -> str:
    """The user's words of a TMM question (input slots and the TaskPrompt removed)."""
    text = question.replace(config.input_token, " ")
    for task in tpl.TASK_PROMPTS:
        text = text.replace(config.task_prompt(task), " ")
    for m in tpl.INPUT_MODALITIES:
        text = text.replace(f"{config.begin(m)} {config.slot(m)} {config.end(m)}", " ")
    return " ".join(text.split())


def tpl_task(question: str, config: tpl.TemplateConfig) -> str:
    for task in tpl.TASK_PROMPTS:
        if config.task_prompt(task) in question:
            return task
    return tpl.SMART


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    fv = _flags(argv)
    try:
        fv(argv)
    except Exception as e:  # absl's flag errors: show them as a usage error, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = fv["config"].value
    if cfg.get("cpu_devices") and "JAX_PLATFORMS" not in os.environ:
        os.environ["JAX_PLATFORMS"] = "cpu"
    from spider_jax.any_to_many import GenerationInputError, Request
    from spider_jax.response_writer import write_response

    if not fv["pseudo_dataset"].value and not fv["prompt"].value.strip():
        print("error: --prompt is empty (or pass --pseudo_dataset NAME)", file=sys.stderr)
        return 2
    inputs = tuple(("IMAGE", p) for p in fv["image"].value)
    inputs += tuple(("AUDIO", p) for p in fv["audio"].value) + tuple(("VIDEO", p) for p in fv["video"].value)
    try:
        generator = load_generator(cfg, fv["checkpoint"].value)
        options = _options(cfg, fv)
        if fv["pseudo_dataset"].value:
            path = write_pseudo_dataset(generator, fv["pseudo_dataset"].value, fv["num_samples"].value,
                                        fv["out"].value, options, int(cfg.generate.batch_size))  # fmt: skip
            print(f"wrote {path}")
            return 0
        request = Request(fv["prompt"].value, inputs, fv["task"].value, fv["answer_prefix"].value)
        (response,) = generator.respond([request], options)
    except (GenerationInputError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = write_response(response, fv["out"].value, fps=cfg.decoders.fps)
    print(response.answer)
    for g in manifest["groups"]:
        status = ", ".join(g.get("files", [])) if g["ok"] else f"FAILED: {g['error']}"
        print(f"  [{g['index'] + 1}] {g['modality']:5s} {g['t_prompt'][:50]!r}: {status}")
    print(f"wrote {os.path.join(fv['out'].value, 'index.html')}")
    return 0
