"""LoRA language-model fine-tuning job: the foundation's main job, driven by ``train.py``.

tokenizer -> (HF or random) frozen LLaMA base -> LoRA tree -> sharded train step on the mesh -> orbax
checkpoints (resume is exact: the data position is the step) -> held-out loss, a greedy sample and a merged
HF export that transformers reloads (verified numerically at the end).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from spider_jax import sharding as sharding_lib
from spider_jax import trainer
from spider_jax.checkpointing import Checkpointer
from spider_jax.convert.llama import load_hf_checkpoint, save_hf_checkpoint
from spider_jax.data_text import lm_batches, pack_tokens, read_lines
from spider_jax.generate import greedy_generate, left_pad
from spider_jax.models.llama import LlamaConfig, LlamaForCausalLM, init_lora_params, init_params
from spider_jax.models.lora import LORA_COLLECTION, LoraConfig
from spider_jax.tokenizer import Tokenizer, load_tokenizer, resize_embeddings, train_sentencepiece


@dataclasses.dataclass
class Job:
    cfg: ml_collections.ConfigDict
    tokenizer: Tokenizer
    model_config: LlamaConfig
    params: Any  # frozen base (host arrays)
    train_rows: np.ndarray
    heldout_rows: np.ndarray


def _tokenizer(cfg: ml_collections.ConfigDict, train_lines: list[str]) -> Tokenizer:
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    folder = os.path.join(cfg.output_dir, "tokenizer")
    path = os.path.join(folder, "tokenizer.model")
    if not os.path.exists(path):  # trained once, then reused so a resumed run sees identical ids
        os.makedirs(folder, exist_ok=True)
        train_sentencepiece(train_lines, os.path.join(folder, "tokenizer"), vocab_size=cfg.tokenizer_vocab_size)
    return load_tokenizer(path)


def prepare(cfg: ml_collections.ConfigDict) -> Job:
    lines = read_lines(cfg.data.corpus)
    n_heldout = max(1, int(len(lines) * cfg.data.heldout_fraction))
    train_lines, heldout_lines = lines[:-n_heldout], lines[-n_heldout:]
    tokenizer = _tokenizer(cfg, train_lines)
    lora = LoraConfig.from_dict(cfg.lora.to_dict())
    execution = {k: cfg.model[k] for k in ("dtype", "param_dtype", "scan_layers", "remat_policy")}
    if cfg.base_model:
        model_config, params = load_hf_checkpoint(cfg.base_model, lora=lora, **execution)
        if len(tokenizer) > model_config.vocab_size:
            params = resize_embeddings(params, len(tokenizer), tied=model_config.tie_word_embeddings)
            model_config = model_config.replace(vocab_size=len(tokenizer))
    else:
        model_config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
            lora=lora,
            **cfg.model.to_dict(),
        )
        params = init_params(model_config, jax.random.PRNGKey(cfg.seed), with_lora=False)["params"]

    def rows(texts):
        return pack_tokens([tokenizer.encode(t, add_bos=True, add_eos=True) for t in texts], cfg.data.seq_len)

    return Job(cfg, tokenizer, model_config, params, rows(train_lines), rows(heldout_lines))


def make_optimizer(optim: ml_collections.ConfigDict, steps: int) -> optax.GradientTransformation:
    """AdamW with linear warmup then cosine decay to 10% of the peak rate."""
    warmup = min(optim.warmup_steps, max(steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, optim.learning_rate, warmup, max(steps, warmup + 1), end_value=optim.learning_rate * 0.1
    )
    return trainer.make_optimizer(schedule, optim.weight_decay, optim.b1, optim.b2, optim.grad_clip_norm)


def heldout_loss(model_config: LlamaConfig, variables: Any, rows: np.ndarray, batch_size: int) -> float:
    model = LlamaForCausalLM(model_config)

    @jax.jit
    def sums(ids):
        logits = model.apply(variables, ids)
        loss, count = trainer.next_token_loss(logits, ids)
        return loss * count, count

    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        s, c = sums(chunk)
        total, count = total + float(s), count + int(c)
    return total / max(count, 1)


@dataclasses.dataclass
class PhaseResult:
    trainable: Any  # host copy of the trained tree
    losses: list[tuple[int, float]]
    resumed_from: int
    tokens_per_s: float | None


def train_phase(
    job: Job,
    name: str,
    trainable_collection: str,
    steps: int,
    optim: ml_collections.ConfigDict,
    init_trainable: Any,
    frozen: Any,
) -> PhaseResult:
    """One training phase on the mesh with checkpoints under ``output_dir/<name>/checkpoints`` (resumed if present)."""
    from clu import metric_writers

    cfg = job.cfg
    model = LlamaForCausalLM(job.model_config)
    mesh = sharding_lib.create_mesh((cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
    optimizer = make_optimizer(optim, steps)
    step_fn, shardings = trainer.build_sharded_lm_step(model, optimizer, mesh, trainable_collection)
    frozen = sharding_lib.place(frozen, shardings["frozen"])
    state = sharding_lib.place(trainer.init_train_state(init_trainable, optimizer), shardings["state"])

    phase_dir = os.path.join(cfg.output_dir, name)
    ckpt = Checkpointer(os.path.join(phase_dir, "checkpoints"), cfg.train.keep_checkpoints, cfg.train.checkpoint_every)
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        state, meta = ckpt.restore(latest, state, shardings["state"])
        start = int(meta["step"])
        print(f"[{name}] resumed from {ckpt.directory} at step {start}")
    if cfg.data.batch_size % jax.process_count():
        raise ValueError(f"data.batch_size={cfg.data.batch_size} (global) must divide over {jax.process_count()} hosts")
    batches = lm_batches(
        job.train_rows,
        cfg.data.batch_size // jax.process_count(),
        seed=cfg.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        start_step=start,
    )
    writer = metric_writers.create_default_writer(
        os.path.join(phase_dir, "tensorboard"), just_logging=jax.process_index() > 0
    )
    rng = jax.random.PRNGKey(cfg.seed + 2)
    losses: list[tuple[int, float]] = []
    tokens, t0 = 0, time.perf_counter()
    for step in range(start, steps):
        batch = sharding_lib.place(next(batches), shardings["batch"])
        state, metrics = step_fn(state, frozen, batch, rng)
        tokens += int(batch["input_ids"].size)
        done = step + 1
        if done % cfg.train.log_every == 0 or done == steps or step == start:
            scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
            losses.append((done, scalars["loss"]))
            writer.write_scalars(done, scalars)
            now = time.perf_counter()
            if step == start:
                timing = f"first step (incl. compile) {now - t0:.1f}s"
                t_first, first_done = now, done
            else:
                rate = (done - first_done) / (now - t_first)
                timing = f"{rate:.1f} steps/s  ETA {(steps - done) / rate:.0f}s"
            print(
                f"[{name}] step {done:5d}/{steps}  loss {scalars['loss']:.4f}  "
                f"grad_norm {scalars['grad_norm']:.3f}  {timing}",
                flush=True,
            )
        ckpt.save(done, state, {"step": done, "config": cfg.to_json()}, force=done == steps)
    elapsed = time.perf_counter() - t0
    ckpt.close()
    writer.flush()
    return PhaseResult(jax.device_get(state.trainable), losses, start, tokens / elapsed if tokens else None)


def _phase_summary(job: Job, result: PhaseResult, variables: Any) -> dict[str, Any]:
    loss = heldout_loss(job.model_config, variables, job.heldout_rows, job.cfg.data.batch_size)
    return {
        "resumed_from": result.resumed_from,
        "first_logged_loss": result.losses[0] if result.losses else None,
        "last_logged_loss": result.losses[-1] if result.losses else None,
        "train_tokens_per_s": result.tokens_per_s,
        "heldout_loss": loss,
        "heldout_perplexity": float(np.exp(loss)),
        "sample": sample(job, variables, job.cfg.train.sample_prompt, job.cfg.train.sample_tokens),
    }


def pretrain_base(cfg: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
    """Full-parameter training of the random tiny base, exported as an HF folder (the LoRA phase's base).

    A frozen *random* base cannot be adapted usefully (its random LM head caps the logit scale), and no real
    LLaMA can be downloaded here, so the demo makes its own base first, exactly as a user would bring theirs.
    """
    base_dir = os.path.join(cfg.output_dir, "base_hf")
    if os.path.exists(os.path.join(base_dir, "config.json")):
        return base_dir, {"reused": base_dir}
    job = prepare(cfg)
    job.model_config = job.model_config.replace(lora=None)
    result = train_phase(job, "pretrain", "params", cfg.pretrain.steps, cfg.pretrain.optim, job.params, {})
    summary = _phase_summary(job, result, {"params": result.trainable})
    save_hf_checkpoint(job.model_config, result.trainable, base_dir)
    job.tokenizer.save(base_dir)
    return base_dir, summary


def run(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The demo job: (pretrain a tiny base if none is given) -> LoRA fine-tune -> evaluate -> merged export."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    summary: dict[str, Any] = {"devices": jax.device_count(), "mesh": dict(cfg.mesh)}
    if not cfg.base_model:
        cfg = ml_collections.ConfigDict(cfg.to_dict())  # do not mutate the caller's config
        cfg.base_model, summary["pretrain"] = pretrain_base(cfg)
    job = prepare(cfg)
    lora = init_lora_params(job.model_config, jax.random.PRNGKey(cfg.seed + 1))
    result = train_phase(job, "lora", LORA_COLLECTION, cfg.train.steps, cfg.optim, lora, job.params)
    variables = {"params": job.params, LORA_COLLECTION: result.trainable}
    summary["lora"] = _phase_summary(job, result, variables)
    summary["lora"]["heldout_loss_before"] = heldout_loss(
        job.model_config, {"params": job.params}, job.heldout_rows, cfg.data.batch_size
    )
    if cfg.train.export_merged:
        export_dir = os.path.join(cfg.output_dir, "hf_merged")
        save_hf_checkpoint(job.model_config, job.params, export_dir, lora=result.trainable)
        job.tokenizer.save(export_dir)
        summary["export_dir"] = export_dir
        summary["export_max_abs_logit_diff_vs_transformers"] = verify_export(job, variables, export_dir)
    return summary


def sample(job: Job, variables: Any, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of ``prompt``, decoded together with it (so word boundaries come out right)."""
    prompt_ids = job.tokenizer.encode(prompt)
    ids, mask = left_pad([prompt_ids], job.tokenizer.pad_id)
    eos = job.tokenizer.eos_id if job.tokenizer.eos_id is not None else -1
    tokens, lengths = greedy_generate(
        job.model_config, variables, ids, mask, max_new_tokens, eos_id=eos, pad_id=job.tokenizer.pad_id
    )
    generated = np.asarray(tokens[0, : int(lengths[0])]).tolist()
    return job.tokenizer.decode(prompt_ids + generated, skip_special_tokens=True)


def verify_export(job: Job, variables: Any, export_dir: str) -> float:
    """Reloads the merged export with transformers and returns max |logit difference| on held-out text."""
    import torch
    import transformers

    reference = transformers.LlamaForCausalLM.from_pretrained(export_dir, dtype=torch.float32).eval()
    ids = job.heldout_rows[:2]
    with torch.no_grad():
        ref = reference(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    ours = np.asarray(LlamaForCausalLM(job.model_config).apply(variables, ids))
    return float(np.abs(ref - ours).max())


def evaluate(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Held-out loss/perplexity and a sample from the latest checkpoint of ``cfg.output_dir``."""
    if not cfg.base_model:
        cfg = ml_collections.ConfigDict(cfg.to_dict())
        cfg.base_model = os.path.join(cfg.output_dir, "base_hf")
    job = prepare(cfg)
    ckpt = Checkpointer(os.path.join(cfg.output_dir, "lora", "checkpoints"))
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {ckpt.directory}; run train.py with this config first")
    optimizer = make_optimizer(cfg.optim, cfg.train.steps)
    like = trainer.init_train_state(init_lora_params(job.model_config, jax.random.PRNGKey(0)), optimizer)
    replicated = jax.tree_util.tree_map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), like)
    state, _ = ckpt.restore(step, like, replicated)
    ckpt.close()
    variables = {"params": job.params, LORA_COLLECTION: state.trainable}
    loss = heldout_loss(job.model_config, variables, job.heldout_rows, cfg.data.batch_size)
    return {
        "checkpoint_step": step,
        "heldout_loss": loss,
        "heldout_perplexity": float(np.exp(loss)),
        "sample": sample(job, variables, cfg.train.sample_prompt, cfg.train.sample_tokens),
    }
