"""One video-UNet forward (ε prediction): Flax ``UNet3DConditionModel`` vs diffusers PyTorch, same weights.

The diffusers model is built with random weights, saved, and loaded into Flax through
``spider_jax.convert.unet3d.load_unet3d`` so both sides compute the same function. Flax is jitted (compile excluded);
PyTorch runs under ``torch.inference_mode``. Timed in alternation after a warm-up (``_common.interleaved_median``);
the ratio torch_time / flax_time is reported (> 1: Flax is faster).

    python benchmarks/unet3d_step.py                            # small config, CPU
    python benchmarks/unet3d_step.py --zeroscope --device gpu   # Zeroscope 576w shapes: 24 frames of 40x72 latents

Without torch/diffusers (or with ``--flax_only``) only the Flax side is timed, on randomly initialised parameters.
"""

from __future__ import annotations

import argparse

import _common as bench

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
    p.add_argument("--batch", type=int, default=2, help="2 = one guided video (uncond + cond)")
    p.add_argument("--frames", type=int, default=0, help="default: 8 small, 24 with --zeroscope")
    p.add_argument("--latent", default="", help="HxW latent size (default: 16x16 small, 40x72 with --zeroscope)")
    bench.add_common_args(p)
    args = p.parse_args()

    bench.select_platform(args.device)
    bench.use_checkout()
    import jax
    import numpy as np

    from spider_jax.convert.unet3d import load_unet3d
    from spider_jax.diffusion import unet3d

    hf_config = dict(ZEROSCOPE if args.zeroscope else SMALL)
    frames = args.frames or (24 if args.zeroscope else 8)
    h, w = map(int, args.latent.split("x")) if args.latent else ((40, 72) if args.zeroscope else (16, 16))
    torch, torch_model, config, params = bench.unet_models(
        args, "UNet3DConditionModel", load_unet3d, unet3d.UNet3DConfig, unet3d.init_params, hf_config
    )
    param_count = bench.param_count(params)
    params = jax.device_put(params)

    rng = np.random.RandomState(0)
    sample = rng.randn(args.batch, frames, h, w, config.in_channels).astype(np.float32)
    context = rng.randn(args.batch, args.tokens, config.cross_attention_dim).astype(np.float32)
    timesteps = np.array([999 - 37 * i for i in range(args.batch)], np.float32)

    model = unet3d.UNet3DConditionModel(config)
    timing = bench.time_unet_forward(
        lambda p, x, t, c: model.apply({"params": p}, x, t, c),
        params,
        sample,
        timesteps,
        context,
        args.repeats,
        torch,
        torch_model,
    )
    head = {
        "config": "zeroscope" if args.zeroscope else "small",
        "params_M": round(param_count / 1e6, 1),
        "latents_BFHWC": [args.batch, frames, h, w, config.in_channels],
        "tokens": args.tokens,
        "dtype": args.dtype,
    }
    bench.report(bench.unet_report(head, timing, torch), args.json)


if __name__ == "__main__":
    main()
