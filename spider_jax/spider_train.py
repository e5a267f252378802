"""Spider's three-stage training job (paper §2.5, Tab. 21-22), driven by ``train.py``.

base LLaMA (HF folder, or the tiny demo's own) + template tokens -> Spider variables -> for each stage: TMM
stream of that stage's mixture -> grain batches with store embeddings -> sharded step on the mesh over the
stage's trainable groups -> orbax checkpoints (train state, the trained frozen groups, data-iterator position,
config) -> the next stage starts from the previous one's final variables. A killed run resumes exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import grain
import grain.experimental
import jax
import ml_collections
import numpy as np

from spider_jax import input_pipeline as ip
from spider_jax import lm_finetune, spider_inputs, tmm
from spider_jax import sharding as sharding_lib
from spider_jax import template as tpl
from spider_jax.checkpointing import Checkpointer
from spider_jax.convert.llama import load_hf_checkpoint
from spider_jax.embedding_store import load_store
from spider_jax.models.controller import ControllerConfig
from spider_jax.models.lora import LoraConfig
from spider_jax.models.spider import SpiderConfig, init_spider
from spider_jax.sources import load_layout
from spider_jax.spider_trainer import NonFiniteError, build_sharded_spider_step, init_stage_state
from spider_jax.tokenizer import Tokenizer, description_ids, load_tokenizer, resize_embeddings
from spider_jax.trainer import TrainState


@dataclasses.dataclass
class SpiderJob:
    cfg: ml_collections.ConfigDict
    tokenizer: Tokenizer
    template_ids: ip.TemplateIds
    spider: SpiderConfig
    llm_params: Any  # converted base weights (host), vocabulary already grown by the template tokens
    sources: dict[str, list[tmm.Sample]]
    pools: dict[str, tmm.InstructionPool]
    text_stores: dict[str, Any]
    media_store: Any
    pipeline: ip.PipelineConfig
    inputs: spider_inputs.SpiderInputSpec


def _base_model(cfg: ml_collections.ConfigDict) -> str:
    if cfg.base_model:
        return cfg.base_model
    lm_cfg = ml_collections.ConfigDict(cfg.to_dict())  # the tiny demo pretrains its own base (lm_finetune)
    del lm_cfg.model["vocab_size"]
    lm_cfg.data.corpus = base_corpus(cfg)
    lm_cfg.train.update(dict(sample_prompt="A dog", sample_tokens=12))
    base_dir, _ = lm_finetune.pretrain_base(lm_cfg)
    return base_dir


def base_corpus(cfg: ml_collections.ConfigDict) -> str:
    """The demo base's pretraining text: the captions plus every instruction template filled with captions.

    A real LLaMA already knows the words of the instructions ("draw an image", "let me hear"); a base pretrained
    on captions alone would meet them letter by letter (its tokenizer has no pieces for them) and could hardly
    learn which modality a request names.
    """
    from spider_jax.data_text import read_lines

    captions = read_lines(cfg.data.corpus)
    rng = np.random.default_rng(cfg.seed)
    lines = list(captions)
    for pool in sorted(tmm.load_pools().values(), key=lambda p: p.name):
        for template in pool.templates:
            for _ in range(3):
                caption = captions[int(rng.integers(len(captions)))].rstrip(".")
                lines.append(pool.render(template, caption if "{}" in template else ""))
    order = rng.permutation(len(lines))
    path = os.path.join(cfg.output_dir, "base_corpus.txt")
    os.makedirs(cfg.output_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(" ".join(lines[i].split()) for i in order) + "\n")
    return path


def prepare(cfg: ml_collections.ConfigDict) -> SpiderJob:
    base_dir = _base_model(cfg)
    tokenizer = load_tokenizer(cfg.tokenizer or base_dir)
    base_vocab = len(tokenizer)
    template_ids = ip.TemplateIds.build(tokenizer)
    execution = {k: cfg.model[k] for k in ("dtype", "param_dtype", "scan_layers", "remat_policy")}
    llm_cfg, params = load_hf_checkpoint(base_dir, lora=LoraConfig.from_dict(cfg.lora.to_dict()), **execution)
    if len(tokenizer) > llm_cfg.vocab_size:
        init_from = description_ids(tokenizer, tpl.DEFAULT.token_descriptions(), base_vocab)
        params = resize_embeddings(params, len(tokenizer), tied=llm_cfg.tie_word_embeddings, init_from=init_from)
        llm_cfg = llm_cfg.replace(vocab_size=len(tokenizer))
    controller = ControllerConfig.from_dict({**cfg.controller.to_dict(), "llm_width": llm_cfg.hidden_size})
    spider = SpiderConfig(
        llm_cfg,
        controller,
        base_vocab_size=min(base_vocab, llm_cfg.vocab_size),
        encoder_width=cfg.encoder_width,
        shared_projector=cfg.shared_projector,
        add_input_embedding=cfg.add_input_embedding,
        mprompt_layer=cfg.get("mprompt_layer", -1),
        lm_weight=cfg.loss.lm,
        alignment_weight=cfg.loss.alignment,
        reconstruction_weight=cfg.loss.reconstruction,
    )
    sources = load_layout(cfg.data.samples_dir)
    if cfg.get("demo_stores") and not any([cfg.stores.media, *cfg.stores.text.values()]):
        from spider_jax import demo_assets

        stores_cfg = demo_assets.build_demo_stores(cfg, sources)
    else:
        stores_cfg = cfg.stores
    text_stores = {m: load_store(p) for m, p in stores_cfg.text.items() if p and m in controller.outputs}
    media_store = load_store(stores_cfg.media) if stores_cfg.media else None
    pipeline = ip.PipelineConfig(
        max_length=cfg.data.max_length,
        max_inputs=cfg.data.max_inputs,
        max_groups=cfg.data.max_groups,
        batch_size=cfg.data.batch_size // jax.process_count(),
        seed=cfg.seed,
        packing=cfg.data.packing,
        media_root=cfg.data.samples_dir,
    )
    inputs = spider_inputs.SpiderInputSpec(controller.outputs, cfg.data.groups_per_modality, cfg.encoder_width)
    return SpiderJob(
        cfg, tokenizer, template_ids, spider, params, sources, tmm.load_pools(), text_stores, media_store,
        pipeline, inputs,
    )  # fmt: skip


def build_options(cfg: ml_collections.ConfigDict) -> tmm.BuildOptions:
    """How TMM instances are built for this config (training and the held-out check use the same)."""
    return tmm.BuildOptions(max_concat=cfg.data.get("max_concat", tmm.BuildOptions.max_concat))


def stage_batches(job: SpiderJob, stage: ml_collections.ConfigDict, seed: int):
    """This host's grain iterator of Spider batches for ``stage`` (checkpointable: ``get_state``/``set_state``)."""
    mixture = tmm.STAGE_MIXTURES[stage.mixture]
    instances = ip.instance_dataset(mixture, job.pools, job.sources, seed=seed, opts=build_options(job.cfg))
    batches = ip.batched_examples(
        instances, job.tokenizer, job.template_ids, job.pipeline, jax.process_index(), jax.process_count()
    )
    allow = job.cfg.data.allow_missing_embeddings

    def attach(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [
            spider_inputs.attach_embeddings(
                {k: v[i] for k, v in batch.items()}, job.inputs, job.text_stores, job.media_store, allow
            )
            for i in range(len(batch["input_ids"]))
        ]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    # Prepare the next batches on a thread while the device runs the step (the state stays checkpointable).
    prefetched = grain.experimental.ThreadPrefetchIterDataset(batches.map(attach), prefetch_buffer_size=2)
    return iter(prefetched)


def _close(iterator) -> None:
    """Stops a prefetching iterator's thread now (not at interpreter exit, where grain's cleanup is noisy)."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


class _Interrupt:
    """SIGTERM (preemption, ``kill``) sets a flag; the loop saves a checkpoint at the next step and exits."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        def handler(signum, frame):
            self.requested = True

        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: no handler
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _checkpoint_tree(state: TrainState, frozen: Mapping[str, Any]) -> dict[str, Any]:
    """What a stage checkpoint holds: the train state and every frozen group except the (reloadable) base LLM."""
    return {"train": state, "frozen": {k: v for k, v in frozen.items() if k != "llm"}}


def run_stage(job: SpiderJob, name: str, variables: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trains stage ``name`` from ``variables`` (or resumes it); returns the final variables and a summary."""
    from clu import metric_writers, periodic_actions

    cfg, stage = job.cfg, job.cfg.stages[name]
    optimizer = lm_finetune.make_optimizer(stage.optim, stage.steps)
    mesh = sharding_lib.create_mesh((cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
    boxed = jax.eval_shape(lambda: init_spider(job.spider, jax.random.PRNGKey(0)))
    seed = cfg.seed + 1000 * (list(cfg.stages.keys()).index(name) + 1)
    batches = stage_batches(job, stage, seed)
    probe = stage_batches(job, stage, seed)
    first = next(probe)  # shapes only; the real iterator is untouched
    _close(probe)
    step_fn, shardings = build_sharded_spider_step(
        job.spider, optimizer, mesh, boxed, list(stage.trainable), first, stage.accumulation_steps, "skip"
    )  # fmt: skip  (the step always skips a non-finite update; the loop decides whether to halt)
    state, frozen = init_stage_state(variables, list(stage.trainable), optimizer)
    frozen_sh = shardings["frozen"]
    tree = sharding_lib.place(_checkpoint_tree(state, frozen), _checkpoint_tree(shardings["state"], frozen_sh))
    llm = sharding_lib.place(frozen["llm"], frozen_sh["llm"])

    stage_dir = os.path.join(cfg.output_dir, name)
    ckpt = Checkpointer(
        os.path.join(stage_dir, "checkpoints"), cfg.train.keep_checkpoints, cfg.train.checkpoint_every,
        cfg.train.get("async_checkpoints", True),
    )  # fmt: skip
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        tree, meta = ckpt.restore(latest, tree, _checkpoint_tree(shardings["state"], frozen_sh))
        start = int(meta["step"])
        batches.set_state(meta["iterator"])
        print(f"[{name}] resumed from {ckpt.directory} at step {start}", flush=True)
    state, frozen_rest = tree["train"], tree["frozen"]
    frozen = {**frozen_rest, "llm": llm}

    writer = metric_writers.create_default_writer(
        os.path.join(stage_dir, "tensorboard"), just_logging=jax.process_index() > 0
    )
    progress = periodic_actions.ReportProgress(
        num_train_steps=stage.steps, writer=writer, every_steps=cfg.train.log_every
    )
    rng = jax.random.PRNGKey(cfg.seed + 7)
    logged: list[tuple[int, float]] = []
    bad_in_a_row = 0
    t0 = time.perf_counter()
    with _Interrupt() as interrupt:
        for step in range(start, stage.steps):
            host_batch = next(batches)
            batch = sharding_lib.place_local_batch(host_batch, shardings["batch"])
            state, metrics = step_fn(state, frozen, batch, rng)
            done = step + 1
            progress(done)
            if cfg.train.nonfinite == "halt" or done % cfg.train.log_every == 0 or done in (start + 1, stage.steps):
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not scalars["finite"]:
                    bad = sorted(k for k, v in scalars.items() if not np.isfinite(v))
                    bad_in_a_row += 1
                    if cfg.train.nonfinite == "halt" or bad_in_a_row > cfg.train.max_nonfinite_in_a_row:
                        ckpt.close()
                        raise NonFiniteError(f"[{name}] step {done}: non-finite {bad or ['gradients']}; update skipped")
                else:
                    bad_in_a_row = 0
                logged.append((done, scalars["loss"]))
                writer.write_scalars(done, scalars)
                if cfg.train.get("metrics_file") and jax.process_index() == 0:  # exact values, one JSON line a step
                    with open(cfg.train.metrics_file, "a", encoding="utf-8") as f:
                        f.write(json.dumps({"stage": name, "step": done, **scalars}) + "\n")
                print(
                    f"[{name}] step {done:5d}/{stage.steps}  loss {scalars['loss']:.4f}  lm {scalars['lm_loss']:.4f}  "
                    f"align {scalars['alignment_loss']:.4f}  recon {scalars['reconstruction_loss']:.4f}  "
                    f"grad_norm {scalars['grad_norm']:.3f}  {time.perf_counter() - t0:.0f}s",
                    flush=True,
                )
            final = done == stage.steps
            if final or interrupt.requested or done % cfg.train.checkpoint_every == 0:
                meta = {"step": done, "iterator": batches.get_state(), "config": cfg.to_json()}
                ckpt.save(
                    done, _checkpoint_tree(state, frozen_rest_of(frozen)), meta, force=final or interrupt.requested
                )
            if interrupt.requested:
                ckpt.close()
                raise SystemExit(
                    f"[{name}] SIGTERM: checkpoint saved at step {done} in {ckpt.directory}; rerun to resume"
                )
    ckpt.close()
    _close(batches)
    writer.flush()
    out = {**frozen, **state.trainable}
    summary = {
        "steps": stage.steps,
        "resumed_from": start,
        "first_logged": logged[0] if logged else None,
        "last_logged": logged[-1] if logged else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return out, summary


def frozen_rest_of(frozen: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in frozen.items() if k != "llm"}


def initial_variables(job: SpiderJob) -> dict[str, Any]:
    return nn.unbox(init_spider(job.spider, jax.random.PRNGKey(job.cfg.seed), llm_params=job.llm_params))


def stage_names(cfg: ml_collections.ConfigDict) -> list[str]:
    names = [n.strip() for n in cfg.run_stages.split(",") if n.strip()]
    unknown = [n for n in names if n not in cfg.stages]
    if unknown:
        raise ValueError(f"run_stages names unknown stages {unknown}; configured: {list(cfg.stages.keys())}")
    return names


def run(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """All of ``cfg.run_stages`` in order; a stage whose final checkpoint exists is loaded, not retrained."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    job = prepare(cfg)
    summary: dict[str, Any] = {"devices": jax.device_count(), "mesh": dict(cfg.mesh)}
    names = stage_names(cfg)
    all_names = list(cfg.stages.keys())
    variables = initial_variables(job)
    earlier = all_names[: all_names.index(names[0])]
    if earlier:  # continue from the previous stage's final checkpoint
        variables = load_stage_variables(job, earlier[-1], variables)
    for name in names:
        variables, summary[name] = run_stage(job, name, variables)
    from spider_jax import spider_eval

    if jax.process_count() == 1:
        summary["template_following"] = spider_eval.template_following(job, variables)
    else:  # decoding runs on one host's arrays; evaluate the checkpoint with eval.py in a single process
        summary["template_following"] = "skipped on multi-host runs: run eval.py with this config"
    return summary


def evaluate(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Template following of the final checkpoint of the last stage in ``run_stages``."""
    job = prepare(cfg)
    last = stage_names(cfg)[-1]
    variables = load_stage_variables(job, last, initial_variables(job))
    from spider_jax import spider_eval

    return {"stage": last, "template_following": spider_eval.template_following(job, variables)}


def load_stage_variables(job: SpiderJob, name: str, like: Mapping[str, Any]) -> dict[str, Any]:
    """The final variables of an earlier stage, from its checkpoint directory."""
    cfg, stage = job.cfg, job.cfg.stages[name]
    ckpt = Checkpointer(os.path.join(cfg.output_dir, name, "checkpoints"))
    step = ckpt.latest_step()
    if step is None or step < stage.steps:
        ckpt.close()
        raise FileNotFoundError(
            f"stage {name!r} has no final checkpoint under {ckpt.directory} (latest: {step}, needs {stage.steps}); "
            f"run it first (--config.run_stages={name})"
        )
    optimizer = lm_finetune.make_optimizer(stage.optim, stage.steps)
    state, frozen = init_stage_state(like, list(stage.trainable), optimizer)
    tree = _checkpoint_tree(state, frozen)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restored, _ = ckpt.restore(step, tree, jax.tree.map(lambda _: device, tree))
    ckpt.close()
    return {**like, **restored["frozen"], **restored["train"].trainable}


def compile_for_topology(cfg: ml_collections.ConfigDict, topology: str) -> dict[str, Any]:
    """AOT-compiles the first run stage's sharded step for a TPU ``topology`` (e.g. ``v5p:4x4x4``) on any host,
    at the config's shapes (no weights are read), and returns XLA's per-chip memory report."""
    from spider_jax import aot
    from spider_jax.models.llama import LlamaConfig

    model = {k: v for k, v in cfg.model.to_dict().items()}
    base_vocab = model.pop("vocab_size") or cfg.tokenizer_vocab_size  # tiny configs size it by their tokenizer
    vocab = base_vocab + len(tpl.DEFAULT.special_tokens())
    llm = LlamaConfig(vocab_size=vocab, lora=LoraConfig.from_dict(cfg.lora.to_dict()), **model)
    controller = ControllerConfig.from_dict({**cfg.controller.to_dict(), "llm_width": llm.hidden_size})
    spider = SpiderConfig(
        llm, controller, base_vocab, cfg.encoder_width, cfg.shared_projector, cfg.add_input_embedding,
        mprompt_layer=cfg.get("mprompt_layer", -1),
    )  # fmt: skip
    name = stage_names(cfg)[0]
    stage = cfg.stages[name]
    optimizer = lm_finetune.make_optimizer(stage.optim, stage.steps)
    mesh = aot.topology_mesh(topology, {"data": cfg.mesh.data, "fsdp": cfg.mesh.fsdp, "tensor": cfg.mesh.tensor})
    boxed = jax.eval_shape(lambda: init_spider(spider, jax.random.PRNGKey(0)))
    spec = spider_inputs.SpiderInputSpec(controller.outputs, cfg.data.groups_per_modality, cfg.encoder_width)
    b, length, inputs = cfg.data.batch_size, cfg.data.max_length, cfg.data.max_inputs
    shapes = {
        "input_ids": ((length,), np.int32),
        "labels": ((length,), np.int32),
        "attention_mask": ((length,), np.bool_),
        "segment_ids": ((length,), np.int32),
        "positions": ((length,), np.int32),
        "input_positions": ((inputs,), np.int32),
        "input_modality": ((inputs,), np.int32),
        **spec.example_shapes(inputs),
    }
    batch = {k: jax.ShapeDtypeStruct((b, *shape), dtype) for k, (shape, dtype) in shapes.items()}
    step, shardings = build_sharded_spider_step(
        spider, optimizer, mesh, boxed, list(stage.trainable), batch, stage.accumulation_steps
    )
    variables = nn.unbox(boxed)
    state = jax.eval_shape(lambda v: init_stage_state(v, list(stage.trainable), optimizer)[0], variables)
    frozen = {k: v for k, v in variables.items() if k not in stage.trainable}
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rng = jax.eval_shape(lambda: jax.random.PRNGKey(0))

    args = (
        aot.abstract_with_shardings(state, shardings["state"]),
        aot.abstract_with_shardings(frozen, shardings["frozen"]),
        aot.abstract_with_shardings(batch, shardings["batch"]),
        aot.abstract_with_shardings(rng, replicated),
    )
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    report = aot.memory_report(compiled)
    report.update(
        topology=topology,
        stage=name,
        mesh=dict(mesh.shape),
        global_batch=b,
        max_length=length,
        compile_seconds=round(time.perf_counter() - t0, 1),
    )
    report["table"] = aot.format_report(report)
    return report
