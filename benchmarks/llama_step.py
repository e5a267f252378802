"""Flax LLaMA vs transformers (PyTorch) on the same machine, same weights, same shapes.

Measures (fp32 by default):
  * train: forward + backward of the next-token loss over all parameters, tokens/s
  * decode: greedy generation with a KV cache (prompt, then N new tokens), new tokens/s; sampled decoding
    (temperature 0.8, top-k 50, top-p 0.9) vs ``generate(do_sample=True)``; and greedy with Spider's M-Prompt
    hidden-state capture switched on (vs plain greedy ``generate``: the capture is our extra work)
and prints the JAX/PyTorch ratio for each. Compile time is excluded (one warm-up call each), and the two
sides are timed in alternation; medians are reported. Usage:

    python benchmarks/llama_step.py [--layers 4 --hidden 512 --batch 2 --seq 256 --new_tokens 128] [--decode_only]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from spider_jax.convert.llama import load_hf_checkpoint  # noqa: E402
from spider_jax.generate import SamplingConfig, decode, greedy_generate  # noqa: E402
from spider_jax.models.llama import LlamaForCausalLM  # noqa: E402
from spider_jax.trainer import next_token_loss  # noqa: E402


def interleaved_median(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Median wall time of two functions measured in alternation (after one warm-up each), so slow drifts of a
    shared machine (other load, thermal state) hit both sides equally."""
    fn_a()  # warm-up: compilation for JAX, allocator/first-call overhead for PyTorch
    fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return float(np.median(times_a)), float(np.median(times_b))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv_heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=1376)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--decode_batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--decode_only", action="store_true", help="skip the train step")
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args()

    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(args.seq, args.prompt + args.new_tokens),
    )
    torch_model = transformers.LlamaForCausalLM(hf_config).eval()
    with tempfile.TemporaryDirectory() as folder:
        torch_model.save_pretrained(folder)
        config, params = load_hf_checkpoint(folder)
    params = jax.device_put(params)
    model = LlamaForCausalLM(config)
    rng = np.random.RandomState(0)
    ids = rng.randint(0, args.vocab, (args.batch, args.seq))
    results: dict[str, dict[str, float]] = {}

    # ---- train step: forward + backward over all parameters
    @jax.jit
    def jax_grads(params, ids):
        def loss(p):
            return next_token_loss(model.apply({"params": p}, ids), ids)[0]

        return jax.value_and_grad(loss)(params)

    ids_jax = jnp.asarray(ids)
    ids_torch = torch.tensor(ids, dtype=torch.long)

    def torch_step():
        torch_model.zero_grad(set_to_none=True)
        out = torch_model(ids_torch, labels=ids_torch)
        out.loss.backward()

    if not args.decode_only:
        jax_t, torch_t = interleaved_median(
            lambda: jax.block_until_ready(jax_grads(params, ids_jax)), torch_step, args.repeats
        )
        tokens = args.batch * args.seq
        results["train_fwd_bwd"] = {
            "jax_tokens_per_s": tokens / jax_t,
            "torch_tokens_per_s": tokens / torch_t,
            "ratio_jax_over_torch": torch_t / jax_t,
        }

    # ---- greedy decode with KV cache
    prompt = rng.randint(3, args.vocab, (args.decode_batch, args.prompt))
    mask = np.ones_like(prompt, dtype=bool)
    variables = {"params": params}

    def jax_decode():
        out, _ = greedy_generate(config, variables, prompt, mask, args.new_tokens)
        jax.block_until_ready(out)

    prompt_torch = torch.tensor(prompt, dtype=torch.long)

    def torch_decode():
        with torch.no_grad():
            torch_model.generate(
                prompt_torch,
                attention_mask=torch.ones_like(prompt_torch),
                do_sample=False,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                use_cache=True,
                pad_token_id=0,
            )

    new = args.decode_batch * args.new_tokens
    repeats = max(3, args.repeats // 2)

    def record(name, jax_fn, torch_fn):
        jax_t, torch_t = interleaved_median(jax_fn, torch_fn, repeats)
        results[name] = {
            "jax_tokens_per_s": new / jax_t,
            "torch_tokens_per_s": new / torch_t,
            "ratio_jax_over_torch": torch_t / jax_t,
        }

    record("greedy_decode", jax_decode, torch_decode)

    # ---- sampled decode (temperature + top-k + top-p), and greedy with Spider's M-Prompt capture
    sampling = SamplingConfig(temperature=0.8, top_k=50, top_p=0.9)
    never = jnp.asarray([-5], jnp.int32)  # no stop token: exactly new_tokens each, as min_new_tokens on torch

    def jax_sampled():
        out = decode(config, variables, prompt, mask, args.new_tokens, sampling=sampling,
                     rng=jax.random.PRNGKey(0), stop_ids=never)  # fmt: skip
        jax.block_until_ready(out.tokens)

    def torch_sampled():
        with torch.no_grad():
            torch_model.generate(
                prompt_torch, attention_mask=torch.ones_like(prompt_torch), do_sample=True, temperature=0.8,
                top_k=50, top_p=0.9, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                use_cache=True, pad_token_id=0,
            )  # fmt: skip

    record("sampled_decode", jax_sampled, torch_sampled)
    capture_ids = jnp.arange(args.vocab - 8, args.vocab, dtype=jnp.int32)  # 8 stand-in M-Prompt tokens

    def jax_capture():
        out = decode(config, variables, prompt, mask, args.new_tokens, stop_ids=never, capture_ids=capture_ids,
                     max_captures=16)  # fmt: skip
        jax.block_until_ready(out.tokens)

    record("greedy_capture", jax_capture, torch_decode)  # torch: plain greedy (it has no capture to time)

    machine = (
        f"{platform.machine()} {os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print(f"machine: {machine}")
    print(
        f"config: layers={args.layers} d={args.hidden} heads={args.heads}/{args.kv_heads} "
        f"mlp={args.intermediate} vocab={args.vocab} fp32; train batch {args.batch}x{args.seq}; "
        f"decode batch {args.decode_batch}, prompt {args.prompt}, {args.new_tokens} new tokens"
    )
    print(f"{'benchmark':<16}{'JAX tok/s':>12}{'torch tok/s':>13}{'JAX/torch':>11}")
    for name, r in results.items():
        print(
            f"{name:<16}{r['jax_tokens_per_s']:>12.1f}{r['torch_tokens_per_s']:>13.1f}"
            f"{r['ratio_jax_over_torch']:>10.2f}x"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
