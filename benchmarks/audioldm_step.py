"""AudioLDM decoder pieces: one guided UNet step (class-label conditioning, no encoder states) and one HiFi-GAN
vocoder pass, Flax vs PyTorch on the same weights and machine.

The PyTorch models (diffusers ``UNet2DConditionModel``, transformers ``SpeechT5HifiGan``) are built with random
weights, saved, and loaded into Flax through our converters, so both sides compute the same function. Flax is jitted
(compile excluded); PyTorch runs under ``torch.inference_mode``; the sides are timed in alternation after a warm-up
and medians are reported with the ratio torch_time / flax_time (> 1: Flax is faster).

    python benchmarks/audioldm_step.py                  # small UNet, AudioLDM's vocoder strides at width 256
    python benchmarks/audioldm_step.py --full_vocoder   # the released vocoder shape (width 1024, 3 MRF kernels)
    python benchmarks/audioldm_step.py --torch_threads 1   # fairer on a loaded 2-core VM (see RESULTS.md)
"""

from __future__ import annotations

import argparse
import os
import tempfile

import _common as bench

SMALL_UNET = dict(  # AudioLDM's block layout at reduced width
    sample_size=32,
    in_channels=8,
    out_channels=8,
    block_out_channels=(64, 128, 256),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=(64, 128, 256),
    attention_head_dim=(2, 4, 8),
    norm_num_groups=32,
    class_embed_type="simple_projection",
    projection_class_embeddings_input_dim=512,
    class_embeddings_concat=True,
)
VOCODER = dict(  # cvssp/audioldm vocoder strides (hop 160 at 16 kHz)
    model_in_dim=64,
    sampling_rate=16000,
    upsample_initial_channel=256,
    upsample_rates=[5, 4, 2, 2, 2],
    upsample_kernel_sizes=[16, 16, 8, 4, 4],
    resblock_kernel_sizes=[3, 7, 11],
    resblock_dilation_sizes=[[1, 3, 5]] * 3,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1, help="waveforms; the guided UNet step runs 2x this")
    p.add_argument("--frames", type=int, default=128, help="mel frames (x160 samples: 128 -> 1.28 s)")
    p.add_argument("--full_vocoder", action="store_true", help="upsample_initial_channel 1024 as released")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--torch_threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--json", default="")
    args = p.parse_args()

    bench.select_platform()
    bench.use_checkout()
    import diffusers
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers

    from spider_jax.convert.diffusers_models import load_unet
    from spider_jax.convert.vocoder import load_vocoder
    from spider_jax.diffusion.unet2d import UNet2DConditionModel
    from spider_jax.diffusion.vocoder import HifiGan

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    rng = np.random.RandomState(0)
    voc_kwargs = dict(VOCODER, upsample_initial_channel=1024) if args.full_vocoder else VOCODER
    torch_unet = diffusers.UNet2DConditionModel(**SMALL_UNET).eval()
    torch_voc = transformers.SpeechT5HifiGan(transformers.SpeechT5HifiGanConfig(**voc_kwargs)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the vocoder's 0.01-std init makes a near-silent waveform: perturb so diffs mean something
        for prm in torch_voc.parameters():
            prm.add_(torch.randn(prm.shape, generator=gen) * 0.05)
    with tempfile.TemporaryDirectory() as folder:
        torch_unet.save_pretrained(os.path.join(folder, "unet"))
        torch_voc.save_pretrained(os.path.join(folder, "vocoder"))
        unet_config, unet_params = load_unet(os.path.join(folder, "unet"))
        voc_config, voc_params = load_vocoder(os.path.join(folder, "vocoder"))

    # UNet step: guided batch (uncond + cond), latent = frames / 4 rows x 64 / 4 mel columns (VAE factor 4)
    rows, cols = args.frames // 4, voc_config.model_in_dim // 4
    x = rng.randn(2 * args.batch, rows, cols, unet_config.in_channels).astype(np.float32)
    labels = rng.randn(2 * args.batch, 512).astype(np.float32)
    t = np.full((2 * args.batch,), 501, np.int32)
    unet = UNet2DConditionModel(unet_config)
    unet_fn = jax.jit(lambda p, x, t, c: unet.apply({"params": p}, x, t, None, c))
    ju = [jax.device_put(jnp.asarray(a)) for a in (x, t, labels)]
    tx, tt, tc = torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(t), torch.tensor(labels)
    unet_timing = bench.compare(
        lambda: unet_fn(unet_params, *ju),
        bench.torch_runner(torch, lambda: torch_unet(tx, tt, encoder_hidden_states=None, class_labels=tc).sample),
        args.repeats,
        lambda eps: eps.transpose(0, 3, 1, 2),
    )

    mel = rng.randn(args.batch, args.frames, voc_config.model_in_dim).astype(np.float32)
    voc = HifiGan(voc_config)
    voc_fn = jax.jit(lambda p, m: voc.apply({"params": p}, m))
    jm = jax.device_put(jnp.asarray(mel))
    tm = torch.tensor(mel)
    voc_timing = bench.compare(
        lambda: voc_fn(voc_params, jm), bench.torch_runner(torch, lambda: torch_voc(tm)), args.repeats
    )

    result = {
        **bench.machine_info(),
        **bench.torch_info(torch),
        "unet_latents_nhwc": list(x.shape),
        "unet_params_M": round(bench.param_count(unet_params) / 1e6, 2),
        **bench.columns("unet_", unet_timing),
        "vocoder_mel": list(mel.shape),
        "vocoder_samples": int(voc.config.num_samples(args.frames)),
        "vocoder_params_M": round(bench.param_count(voc_params) / 1e6, 2),
        **bench.columns("vocoder_", voc_timing),
    }
    bench.report(result, args.json)


if __name__ == "__main__":
    main()
