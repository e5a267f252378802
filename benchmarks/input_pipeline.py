"""Input-pipeline throughput vs what the tiny train step consumes, on this machine.

Builds TMM instances online from the bundled caption corpus (every dataset of the chosen stage mixture),
tokenizes, pads to ``--max_length`` and batches them through grain, and reports examples/s. It then times the
tiny-config LoRA LLaMA train step on batches of the same shape and prints pipeline / step throughput (goal: the
pipeline is at least 10x faster, so it never starves training). Usage:

    python benchmarks/input_pipeline.py [--stage stage3 --max_length 1024 --batch 8 --batches 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # configs/ is a folder of the repository, not of the installed package

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import tiny_lm as tiny  # noqa: E402
from spider_jax import input_pipeline as ip  # noqa: E402
from spider_jax import tmm, trainer  # noqa: E402
from spider_jax.data_text import read_lines  # noqa: E402
from spider_jax.models.llama import LlamaConfig, LlamaForCausalLM, init_params  # noqa: E402
from spider_jax.models.lora import LoraConfig  # noqa: E402
from spider_jax.tokenizer import load_tokenizer, train_sentencepiece  # noqa: E402


def synthetic_sources(captions: list[str]) -> dict[str, list[tmm.Sample]]:
    """Every dataset name of the paper's mixtures, filled from the caption corpus (media paths are not read)."""
    media = (("IMAGE", "img.png"), ("VIDEO", "clip.mp4"), ("AUDIO", "clip.wav"))
    caps = [tmm.Sample(c, media, sample_id=str(i)) for i, c in enumerate(captions)]
    refs = [
        tmm.Sample(f"the {c.split()[1]}", media[:1], box=(0.1, 0.2, 0.6, 0.8), sample_id=f"r{i}")
        for i, c in enumerate(captions)
    ]
    guide = " ".join(f"Stop {i}: <IMAGE> {c} </IMAGE> and <AUDIO> {c} </AUDIO>." for i, c in enumerate(captions[:4]))
    sources: dict[str, list[tmm.Sample]] = {}
    for name in {n for mix in tmm.STAGE_MIXTURES.values() for n in mix}:
        sources[name] = refs if name.startswith(("i2b", "i2m")) else caps
    sources["tgi"] = [tmm.Sample(city, guide=guide, sample_id=city) for city in ("Paris", "Kyoto", "Lima")]
    return sources


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", default="stage3", choices=sorted(tmm.STAGE_MIXTURES))
    p.add_argument("--max_length", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--step_repeats", type=int, default=5)
    p.add_argument("--packing", action="store_true", help="pack several instances per row (first-fit)")
    args = p.parse_args()

    captions = read_lines(os.path.join(ROOT, "data", "tiny_captions.txt"))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(train_sentencepiece(captions, os.path.join(tmp, "sp"), vocab_size=320))
    ids = ip.TemplateIds.build(tokenizer)
    pools = tmm.load_pools()
    sources = synthetic_sources(captions)
    config = ip.PipelineConfig(
        max_length=args.max_length, batch_size=args.batch, packing=args.packing, max_inputs=64, max_groups=128
    )
    instances = ip.instance_dataset(tmm.STAGE_MIXTURES[args.stage], pools, sources, seed=0)
    iterator = iter(ip.batched_examples(instances, tokenizer, ids, config))
    next(iterator)  # start-up
    t0 = time.perf_counter()
    tokens = instances_seen = 0
    for _ in range(args.batches):
        batch = next(iterator)
        tokens += int(batch["attention_mask"].sum())
        instances_seen += int(batch["segment_ids"].max(axis=1).sum())
    pipeline_s = time.perf_counter() - t0
    pipeline_eps = args.batches * args.batch / pipeline_s

    model_cfg = tiny.get_config()
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        lora=LoraConfig(**model_cfg.lora.to_dict()),
        **{**model_cfg.model.to_dict(), "max_position_embeddings": args.max_length},
    )
    variables = init_params(llama, jax.random.PRNGKey(0))
    optimizer = trainer.make_optimizer(1e-3)
    step = jax.jit(trainer.make_lm_train_step(LlamaForCausalLM(llama), optimizer), donate_argnums=(0,))
    state = trainer.init_train_state(variables["lora"], optimizer)
    lm_batch = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    state, metrics = step(state, variables["params"], lm_batch, jax.random.PRNGKey(0))
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.step_repeats):
        t = time.perf_counter()
        state, metrics = step(state, variables["params"], lm_batch, jax.random.PRNGKey(0))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    step_eps = args.batch / float(np.median(times))

    print(f"machine: {platform.machine()} {os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()})")
    print(
        f"stage {args.stage}, max_length {args.max_length}, batch {args.batch}, {args.batches} batches, "
        f"packing {args.packing}, real tokens/row {tokens / (args.batches * args.batch):.0f}, "
        f"instances/row {instances_seen / (args.batches * args.batch):.2f}"
    )
    print(f"input pipeline (1 process): {pipeline_eps:9.1f} rows/s")
    print(f"tiny train step           : {step_eps:9.1f} rows/s")
    print(f"pipeline / step           : {pipeline_eps / step_eps:9.1f}x (goal >= 10x)")


if __name__ == "__main__":
    main()
