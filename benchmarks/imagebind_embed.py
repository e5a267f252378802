"""ImageBind embeddings per second: our Flax encoders (``spider_jax.models.imagebind.embed``) vs the PyTorch reference
(``tests/imagebind_reference.py``, the public architecture with the official state-dict names), same weights.

Each modality's PyTorch tower is built with random weights (``randomize_``), its state dict goes through our
converter (``spider_jax.convert.imagebind.load_imagebind``), and the two outputs must agree to ``--tol`` (1e-4,
max |difference| of the embeddings) before anything is timed. Flax is jitted (compile excluded, ``block_until_ready``);
PyTorch runs under ``torch.inference_mode``; the two sides are timed in alternation after a warm-up and medians are
reported as embeddings/s (one embedding per batch item; audio items are 3 clips, videos ``--video_clips`` clips of
2 frames, averaged as ImageBind does) with the ratio flax/torch throughput (> 1: Flax is faster).

    python benchmarks/imagebind_embed.py                          # small ViTs (vision 384x6, audio 256x4), CPU
    python benchmarks/imagebind_embed.py --video --json out.json  # + videos, JSON written to out.json too
    python benchmarks/imagebind_embed.py --huge --device gpu      # imagebind_huge shapes (random weights)
    python benchmarks/imagebind_embed.py --huge --device gpu --tf32   # both sides allowed TF32 while timed

Inputs are ImageBind's own layouts at its sizes: images 3x224x224 (patch 14, 2-frame Conv3d), log-mel audio
1x128x204 (Conv2d kernel 16, stride 10), videos (clips, 3, 2, 224, 224). fp32 throughout; matmuls run at full fp32
precision on both sides (JAX ``highest``, no TF32 in torch) unless ``--tf32``, which keeps the parity check at fp32
and times both sides with TF32 allowed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import _common as bench

SMALL_VISION = dict(embed_dim=384, num_blocks=6, num_heads=6)  # image 224, kernel (2, 14, 14): 256 patches + cls
SMALL_AUDIO = dict(embed_dim=256, num_blocks=4, num_heads=4)  # 128 mel x 204 frames, kernel 16 stride 10: 12x19
SMALL_OUT = 512
DEFAULT_BATCH = {"small": (8, 4, 2), "huge": (32, 16, 4)}  # images, audio items, videos


def build_config(ib, huge: bool):
    if huge:
        return ib.imagebind_huge()
    return ib.ImageBindConfig(
        vision=ib.VisionConfig(**SMALL_VISION), audio=ib.AudioConfig(**SMALL_AUDIO), out_embed_dim=SMALL_OUT
    )


def reference_tower(ref, ib, config, modality: str, seed: int):
    """The PyTorch ``ReferenceImageBind`` holding only ``modality``'s tower at that modality's width/depth (the
    reference shares one width across towers, so each modality gets its own model; the others are dropped
    before any large tensor is allocated), with random weights."""
    cfg = config.modality(modality)
    v, a = config.vision or ib.VisionConfig(), config.audio or ib.AudioConfig()
    if v.kernel_size[0] != 2 or v.video_frames != 2 or v.kernel_size[1] != v.kernel_size[2]:
        raise SystemExit("the reference vision stem is a (2, p, p) Conv3d over 2-frame clips")
    if cfg.layer_scale_type is not None or cfg.mlp_ratio != 4.0:
        raise SystemExit("the reference blocks have MLP ratio 4 and no layer scale")
    model = ref.ReferenceImageBind(
        d=cfg.embed_dim, blocks=0, heads=cfg.num_heads, out=config.out_embed_dim, image=v.image_size,
        patch=v.kernel_size[1], mel=a.num_mel_bins, frames=a.target_len, audio_k=a.kernel_size, audio_s=a.stride,
        vocab=2, context=2,
    )  # fmt: skip
    model.modality_trunks[modality] = ref.Trunk(
        cfg.embed_dim, cfg.num_blocks, cfg.num_heads, cfg.pre_transformer_ln, cfg.add_bias_kv
    )
    for part in ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors"):
        towers = getattr(model, part)
        for other in [m for m in towers if m != modality]:
            del towers[other]
    ref.randomize_(model, seed)
    return model.eval()


@contextlib.contextmanager
def torch_tf32(torch, allow: bool):
    """TF32 in torch matmuls and cuDNN convolutions on or off (cuDNN allows it by default), restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--huge", action="store_true", help="imagebind_huge shapes (vision 1280x32, audio 768x12)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--batch", type=int, default=0, help="images per batch (default 8 small, 32 huge)")
    p.add_argument("--audio_batch", type=int, default=0, help="audio items per batch (default 4 small, 16 huge)")
    p.add_argument("--audio_clips", type=int, default=3, help="clips per audio item (ImageBind: 3)")
    p.add_argument("--video", action="store_true", help="also time videos")
    p.add_argument("--video_batch", type=int, default=0, help="videos per batch (default 2 small, 4 huge)")
    p.add_argument("--video_clips", type=int, default=5, help="2-frame clips per video (ImageBind: 5)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tol", type=float, default=1e-4, help="max |flax - torch| allowed before timing")
    p.add_argument("--tf32", action="store_true", help="time both sides with TF32 allowed (parity still at fp32)")
    p.add_argument("--torch_threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--flax_only", action="store_true", help="skip PyTorch: Flax on random init, no parity check")
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args()

    if args.device == "gpu" and not args.flax_only:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory for torch
    bench.select_platform(args.device)
    bench.use_checkout()
    import jax
    import numpy as np

    from spider_jax.convert.imagebind import load_imagebind
    from spider_jax.models import imagebind as ib

    if not args.tf32:
        jax.config.update("jax_default_matmul_precision", "highest")
    size = "huge" if args.huge else "small"
    config = build_config(ib, args.huge)
    modalities = ["vision", "audio"]

    modules = bench.import_torch(args.flax_only)
    torch, towers, dev = None, {}, None
    if modules is None:
        params = bench.random_params(ib.init_params, config)
    else:
        (torch,) = modules
        sys.path.insert(0, os.path.join(bench.REPO, "tests"))
        import imagebind_reference as ref

        if args.torch_threads > 0:
            torch.set_num_threads(args.torch_threads)
        if args.device == "gpu" and not torch.cuda.is_available():
            raise SystemExit(f"--device gpu: torch {torch.__version__} has no CUDA; pass --flax_only")
        dev = torch.device("cuda" if args.device == "gpu" else "cpu")
        state = {}
        for seed, m in enumerate(modalities):
            towers[m] = reference_tower(ref, ib, config, m, seed)
            state.update({k: t.detach().numpy() for k, t in towers[m].state_dict().items()})
        params = load_imagebind(state, config)  # every tensor checked by name and shape
        del state
        towers = {m: t.to(dev) for m, t in towers.items()}
    param_counts = {m: round(bench.param_count(params[m]) / 1e6, 2) for m in modalities}
    params = jax.device_put(params)

    n_img, n_aud, n_vid = DEFAULT_BATCH[size]
    v, a = config.vision, config.audio
    rng = np.random.default_rng(0)
    cases = [  # (name, modality, input shape in ImageBind's layout; ndim >= 5: a clip axis in position 1)
        ("image", "vision", (args.batch or n_img, 3, v.image_size, v.image_size)),
        ("audio", "audio", (args.audio_batch or n_aud, args.audio_clips, 1, a.num_mel_bins, a.target_len)),
    ]
    if args.video:
        frames = v.video_frames
        shape = (args.video_batch or n_vid, args.video_clips, 3, frames, v.image_size, v.image_size)
        cases.append(("video", "vision", shape))

    rows = []
    for name, modality, shape in cases:
        x = rng.standard_normal(shape, np.float32)
        items, clips = shape[0], (shape[1] if len(shape) >= 5 else 1)
        x_jax = jax.device_put(x)
        run_flax = lambda m=modality, xj=x_jax: ib.embed(params, config, m, xj).block_until_ready()
        run_torch, diff = None, None
        if torch is not None:
            x_torch = torch.from_numpy(x).to(dev)
            tower = towers[modality]
            run_torch = bench.torch_runner(torch, lambda t=tower, m=modality, xt=x_torch: t({m: xt})[m], dev)
        with jax.default_matmul_precision("highest"):  # the parity check always at fp32
            got, compile_s = bench.timed(run_flax)
            if run_torch is not None:
                with torch_tf32(torch, False):
                    want = run_torch().float().cpu().numpy()
                diff = float(np.abs(np.asarray(got, np.float32) - want).max())
                if not diff <= args.tol:
                    raise SystemExit(f"{name}: max |flax - torch| = {diff:.3g} > tol {args.tol:g}; not timing")
        if args.tf32:  # the timed (default-precision) variant is a second compile
            _, compile_s = bench.timed(run_flax)
        tf32 = torch_tf32(torch, args.tf32) if torch is not None else contextlib.nullcontext()
        with tf32:
            flax_s, torch_s = bench.interleaved_median(run_flax, run_torch, args.repeats)
        row = {
            "case": name,
            "modality": modality,
            "input": list(shape),
            "items": items,
            "clips_per_item": clips,
            "compile_s": round(compile_s, 2),
            "flax_s": round(flax_s, 4),
            "flax_emb_per_s": round(items / flax_s, 2),
            "flax_clips_per_s": round(items * clips / flax_s, 2),
        }
        if run_torch is not None:
            row.update(
                torch_s=round(torch_s, 4),
                torch_emb_per_s=round(items / torch_s, 2),
                torch_clips_per_s=round(items * clips / torch_s, 2),
                flax_over_torch=round(torch_s / flax_s, 3),
                max_abs_diff=diff,
            )
        rows.append(row)
        line = f"{name:6s} {str(tuple(shape)):32s} flax {row['flax_emb_per_s']:9.2f} emb/s"
        if run_torch is not None:
            line += f" | torch {row['torch_emb_per_s']:9.2f} emb/s | flax/torch {row['flax_over_torch']:.3f}x"
            line += f" | max|diff| {diff:.2e}"
        print(line, flush=True)

    result = {
        "config": size,
        "vision": {k: getattr(v, k) for k in ("embed_dim", "num_blocks", "num_heads", "image_size", "kernel_size")},
        "audio": {
            k: getattr(a, k) for k in ("embed_dim", "num_blocks", "num_heads", "num_mel_bins", "target_len", "stride")
        }
        | {"kernel_size": a.kernel_size},
        "out_embed_dim": config.out_embed_dim,
        "params_M": param_counts,
        "dtype": "float32",
        "matmul_precision": "tf32 allowed" if args.tf32 else "fp32 (highest)",
        "repeats": args.repeats,
        **bench.machine_info(),
        "cpu": cpu_model(),
        "loadavg": list(os.getloadavg()),
        **(bench.torch_info(torch) if torch is not None else {"torch": None}),
        "results": rows,
    }
    bench.report(result, args.json)


if __name__ == "__main__":
    main()
