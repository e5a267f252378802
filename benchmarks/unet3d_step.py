"""One video-UNet forward (ε prediction): Flax ``UNet3DConditionModel`` vs diffusers PyTorch, same weights.

The diffusers model is built with random weights, saved, and loaded into Flax through
``spider_jax.convert.unet3d.load_unet3d`` so both sides compute the same function. Flax is jitted (compile excluded);
PyTorch runs under ``torch.inference_mode``. Timed in alternation after a warm-up (``sd_unet.interleaved_median``);
the ratio torch_time / flax_time is reported (> 1: Flax is faster).

    python benchmarks/unet3d_step.py                            # small config, CPU
    python benchmarks/unet3d_step.py --zeroscope --device gpu   # Zeroscope 576w shapes: 24 frames of 40x72 latents

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
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    cross_attention_dim=1024,
    attention_head_dim=32,
    norm_num_groups=32,
    sample_size=16,
)
ZEROSCOPE = dict(  # cerspense/zeroscope_v2_576w unet/config.json
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    cross_attention_dim=1024,
    attention_head_dim=64,
    norm_num_groups=32,
    sample_size=32,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zeroscope", action="store_true", help="Zeroscope 576w UNet shapes (random weights)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--batch", type=int, default=2, help="2 = one guided video (uncond + cond)")
    p.add_argument("--frames", type=int, default=0, help="default: 8 small, 24 with --zeroscope")
    p.add_argument("--latent", default="", help="HxW latent size (default: 16x16 small, 40x72 with --zeroscope)")
    p.add_argument("--tokens", type=int, default=77)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--flax_only", action="store_true")
    p.add_argument("--attention_impl", default=None, help="jax.nn.dot_product_attention implementation (cudnn)")
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["JAX_PLATFORMS"] = "cuda" if args.device == "gpu" else "cpu"
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.join(here, "..")]
    from sd_unet import interleaved_median

    from spider_jax.convert.unet3d import load_unet3d
    from spider_jax.diffusion import unet3d

    hf_config = dict(ZEROSCOPE if args.zeroscope else SMALL)
    frames = args.frames or (24 if args.zeroscope else 8)
    h, w = map(int, args.latent.split("x")) if args.latent else ((40, 72) if args.zeroscope else (16, 16))
    exec_overrides = dict(dtype=args.dtype, attention_impl=args.attention_impl)
    torch = torch_model = None
    if not args.flax_only:
        try:
            import diffusers
            import torch
        except ImportError as e:
            print(f"PyTorch side skipped ({e}); timing Flax only")
    if torch is not None:
        torch.manual_seed(0)
        torch_model = diffusers.UNet3DConditionModel(**hf_config).eval()
        with tempfile.TemporaryDirectory() as folder:
            torch_model.save_pretrained(folder)
            config, params = load_unet3d(folder, **exec_overrides)
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
        if args.device == "gpu" or torch_dtype != torch.float32:
            torch_model = torch_model.to(device="cuda" if args.device == "gpu" else "cpu", dtype=torch_dtype)
    else:
        config = unet3d.UNet3DConfig.from_hf_config(hf_config, **exec_overrides)
        params = nn.unbox(jax.tree_util.tree_map(np.asarray, unet3d.init_params(config, jax.random.PRNGKey(0))))
    param_count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    params = jax.device_put(params)

    rng = np.random.RandomState(0)
    sample = rng.randn(args.batch, frames, h, w, config.in_channels).astype(np.float32)
    context = rng.randn(args.batch, args.tokens, config.cross_attention_dim).astype(np.float32)
    timesteps = np.array([999 - 37 * i for i in range(args.batch)], np.float32)

    model = unet3d.UNet3DConditionModel(config)
    forward = jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c))
    x_j, t_j, c_j = (jax.device_put(jnp.asarray(a)) for a in (sample, timesteps, context))
    t0 = time.perf_counter()
    forward(params, x_j, t_j, c_j).block_until_ready()
    compile_s = time.perf_counter() - t0
    run_flax = lambda: forward(params, x_j, t_j, c_j).block_until_ready()

    run_torch = None
    if torch_model is not None:
        dev, tdt = next(torch_model.parameters()).device, next(torch_model.parameters()).dtype
        x_t = torch.tensor(sample.transpose(0, 4, 1, 2, 3), device=dev, dtype=tdt)
        c_t = torch.tensor(context, device=dev, dtype=tdt)
        t_t = torch.tensor(timesteps, device=dev)

        def run_torch():
            with torch.inference_mode():
                out = torch_model(x_t, t_t, encoder_hidden_states=c_t).sample
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return out

        ref = run_torch().float().cpu().numpy()
        got = np.asarray(forward(params, x_j, t_j, c_j), np.float32).transpose(0, 4, 1, 2, 3)
        diff = float(np.abs(got - ref).max())
    flax_s, torch_s = interleaved_median(run_flax, run_torch, args.repeats)

    result = {
        "config": "zeroscope" if args.zeroscope else "small",
        "params_M": round(param_count / 1e6, 1),
        "latents_BFHWC": [args.batch, frames, h, w, config.in_channels],
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
