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

import _common as bench

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sd15", action="store_true", help="real SD1.5 UNet shapes (random weights), 64x64 latents")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--latent", type=int, default=0, help="latent side (default: 32 small, 64 with --sd15)")
    bench.add_common_args(p)
    args = p.parse_args()

    bench.select_platform(args.device)
    bench.use_checkout()
    import jax
    import numpy as np

    from spider_jax.convert.diffusers_models import load_unet
    from spider_jax.diffusion import unet2d

    hf_config = dict(SD15 if args.sd15 else SMALL)
    side = args.latent or hf_config["sample_size"]
    torch, torch_model, config, params = bench.unet_models(
        args, "UNet2DConditionModel", load_unet, unet2d.UNet2DConfig, unet2d.init_params, hf_config
    )
    param_count = bench.param_count(params)
    params = jax.device_put(params)

    rng = np.random.RandomState(0)
    sample = rng.randn(args.batch, side, side, config.in_channels).astype(np.float32)
    context = rng.randn(args.batch, args.tokens, config.cross_dims[0]).astype(np.float32)
    timesteps = np.array([999 - 37 * i for i in range(args.batch)], np.float32)

    model = unet2d.UNet2DConditionModel(config)
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
        "config": "sd15" if args.sd15 else "small",
        "params_M": round(param_count / 1e6, 1),
        "latents": [args.batch, config.in_channels, side, side],
        "tokens": args.tokens,
        "dtype": args.dtype,
    }
    bench.report(bench.unet_report(head, timing, torch), args.json)


if __name__ == "__main__":
    main()
