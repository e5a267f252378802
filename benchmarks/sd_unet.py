"""One UNet forward (ε prediction): Flax ``UNet2DConditionModel`` vs diffusers PyTorch, same machine, same weights.

The diffusers model is built with random weights, saved, and loaded into Flax through
``spider_jax.convert.diffusers_models.load_unet`` so both sides compute the same function. Flax is jitted (compile
excluded); PyTorch runs under ``torch.inference_mode``. The two sides are timed in alternation after a warm-up;
medians are reported with the ratio torch_time / flax_time (> 1: Flax is faster).

    python benchmarks/sd_unet.py                       # small config, CPU
    python benchmarks/sd_unet.py --sd15 --device gpu   # SD1.5 shapes (860M params, 64x64 latents), GPU
    python benchmarks/sd_unet.py --sd15 --device gpu --dtype bfloat16 --flax_only

Without torch/diffusers (or with ``--flax_only``) only the Flax side is timed, on randomly initialised parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

SMALL = dict(
    block_out_channels=(64, 128, 256),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    sample_size=32,
)
SD15 = dict(
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    sample_size=64,
)


def interleaved_median(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Medians of two functions timed in alternation (each warmed up first), so load drifts hit both equally."""
    fn_a()
    if fn_b is not None:
        fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            if fn is None:
                continue
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    median = lambda ts: sorted(ts)[len(ts) // 2] if ts else float("nan")
    return median(times_a), median(times_b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sd15", action="store_true", help="real SD1.5 UNet shapes (random weights), 64x64 latents")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=77)
    p.add_argument("--latent", type=int, default=0, help="latent side (default: 32 small, 64 with --sd15)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--flax_only", action="store_true", help="skip PyTorch (e.g. no CUDA torch on the machine)")
    p.add_argument("--attention_impl", default=None, help="jax.nn.dot_product_attention implementation (cudnn)")
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["JAX_PLATFORMS"] = "cuda" if args.device == "gpu" else "cpu"
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from spider_jax.convert.diffusers_models import load_unet
    from spider_jax.diffusion import unet2d

    hf_config = dict(SD15 if args.sd15 else SMALL)
    side = args.latent or hf_config["sample_size"]
    torch = diffusers = None
    if not args.flax_only:
        try:
            import diffusers
            import torch
        except ImportError as e:
            print(f"PyTorch side skipped ({e}); timing Flax only")
    torch_model = None
    exec_overrides = dict(dtype=args.dtype, attention_impl=args.attention_impl)
    if torch is not None:
        torch.manual_seed(0)
        torch_device = "cuda" if args.device == "gpu" else "cpu"
        torch_model = diffusers.UNet2DConditionModel(**hf_config).eval()
        with tempfile.TemporaryDirectory() as folder:
            torch_model.save_pretrained(folder)
            config, params = load_unet(folder, **exec_overrides)
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
        if torch_device != "cpu" or torch_dtype != torch.float32:
            torch_model = torch_model.to(device=torch_device, dtype=torch_dtype)
    else:
        config = unet2d.UNet2DConfig.from_hf_config(hf_config, **exec_overrides)
        params = jax.tree_util.tree_map(np.asarray, unet2d.init_params(config, jax.random.PRNGKey(0)))
        import flax.linen as nn

        params = nn.unbox(params)
    param_count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    params = jax.device_put(params)

    rng = np.random.RandomState(0)
    sample = rng.randn(args.batch, side, side, config.in_channels).astype(np.float32)
    context = rng.randn(args.batch, args.tokens, config.cross_dims[0]).astype(np.float32)
    timesteps = np.array([999 - 37 * i for i in range(args.batch)], np.float32)

    model = unet2d.UNet2DConditionModel(config)
    forward = jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c))
    x_j, t_j, c_j = (jax.device_put(jnp.asarray(a)) for a in (sample, timesteps, context))
    t0 = time.perf_counter()
    forward(params, x_j, t_j, c_j).block_until_ready()
    compile_s = time.perf_counter() - t0
    run_flax = lambda: forward(params, x_j, t_j, c_j).block_until_ready()

    run_torch = None
    if torch_model is not None:
        dev, tdt = next(torch_model.parameters()).device, next(torch_model.parameters()).dtype
        x_t = torch.tensor(sample.transpose(0, 3, 1, 2), device=dev, dtype=tdt)
        c_t = torch.tensor(context, device=dev, dtype=tdt)
        t_t = torch.tensor(timesteps, device=dev)

        def run_torch():
            with torch.inference_mode():
                out = torch_model(x_t, t_t, encoder_hidden_states=c_t).sample
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return out

        with torch.inference_mode():
            ref = run_torch().float().cpu().numpy()
        diff = float(np.abs(np.asarray(forward(params, x_j, t_j, c_j), np.float32).transpose(0, 3, 1, 2) - ref).max())
    flax_s, torch_s = interleaved_median(run_flax, run_torch, args.repeats)

    result = {
        "config": "sd15" if args.sd15 else "small",
        "params_M": round(param_count / 1e6, 1),
        "latents": [args.batch, config.in_channels, side, side],
        "tokens": args.tokens,
        "dtype": args.dtype,
        "device": str(jax.devices()[0]),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "jax": jax.__version__,
        "flax_compile_s": round(compile_s, 2),
        "flax_s": round(flax_s, 4),
    }
    if run_torch is not None:
        result.update(
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            torch_s=round(torch_s, 4),
            torch_over_flax=round(torch_s / flax_s, 3),
            max_abs_diff=diff,
        )
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
