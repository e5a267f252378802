"""What the Flax-vs-PyTorch decoder benchmarks (``sd_unet.py``, ``unet3d_step.py``, ``audioldm_step.py``) share:
platform selection, the PyTorch reference built and loaded into Flax, interleaved timing, and the JSON report.

The benchmarks run as scripts (``python benchmarks/sd_unet.py``), so this folder is on ``sys.path`` and they import
this module as ``_common``; :func:`use_checkout` puts the repository root first so ``spider_jax`` is this checkout.
JAX is imported lazily: :func:`select_platform` must run before it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = ("float32", "bfloat16", "float16")


def use_checkout() -> None:
    """Imports of ``spider_jax`` resolve to this repository (not an installed copy)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)


def select_platform(device: str | None = None) -> None:
    """Quiet XLA logs and pin JAX to ``device`` ('cpu' / 'gpu'; None: CPU unless JAX_PLATFORMS is set). Call
    before importing jax."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if device is None:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    else:
        os.environ["JAX_PLATFORMS"] = "cuda" if device == "gpu" else "cpu"


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The options the UNet benchmarks share (device, dtype, timing, PyTorch side, output)."""
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--tokens", type=int, default=77)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--flax_only", action="store_true", help="skip PyTorch (e.g. no CUDA torch on the machine)")
    p.add_argument("--attention_impl", default=None, help="jax.nn.dot_product_attention implementation (cudnn)")
    p.add_argument("--json", default="", help="also write the results to this file")


def interleaved_median(fn_a: Callable[[], Any], fn_b: Callable[[], Any] | None, repeats: int) -> tuple[float, float]:
    """Medians of two functions timed in alternation (each warmed up first), so load drifts hit both equally.
    ``fn_b`` may be None (its median is then NaN)."""
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


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)``: the first call of a jitted function, i.e. its compile time."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def import_torch(flax_only: bool, *modules: str) -> tuple[Any, ...] | None:
    """``(torch, *modules)`` imported, or None (with a note) when ``flax_only`` or one is missing."""
    if flax_only:
        return None
    import importlib

    try:
        torch = importlib.import_module("torch")
        return (torch, *(importlib.import_module(m) for m in modules))
    except ImportError as e:
        print(f"PyTorch side skipped ({e}); timing Flax only")
        return None


def unet_models(
    args: argparse.Namespace,
    diffusers_class: str,
    load: Callable[..., Any],
    config_class: Any,
    init: Callable,
    hf: dict,
) -> tuple[Any, Any, Any, Any]:
    """``(torch, torch_model, config, params)`` for a UNet benchmark. With PyTorch: the diffusers class built from
    ``hf`` with torch seed 0 (random weights), saved and read back into Flax by ``load(folder, **execution
    options)``, then moved to ``args.device`` / ``args.dtype``. Without (``--flax_only`` or not installed):
    ``torch`` and ``torch_model`` are None and the Flax parameters come from ``init`` (random)."""
    overrides = dict(dtype=args.dtype, attention_impl=args.attention_impl)
    modules = import_torch(args.flax_only, "diffusers")
    if modules is None:
        config = config_class.from_hf_config(hf, **overrides)
        return None, None, config, random_params(init, config)
    torch, diffusers = modules
    torch.manual_seed(0)
    model = getattr(diffusers, diffusers_class)(**hf).eval()
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        config, params = load(folder, **overrides)
    torch_dtype = getattr(torch, args.dtype)
    if args.device == "gpu" or torch_dtype != torch.float32:
        model = model.to(device="cuda" if args.device == "gpu" else "cpu", dtype=torch_dtype)
    return torch, model, config, params


def random_params(init: Callable[[Any, Any], Any], config: Any) -> Any:
    """Host parameters from ``init(config, PRNGKey(0))``, unboxed (the Flax-only path)."""
    import flax.linen as nn
    import jax
    import numpy as np

    return nn.unbox(jax.tree_util.tree_map(np.asarray, init(config, jax.random.PRNGKey(0))))


def param_count(params: Any) -> int:
    import jax
    import numpy as np

    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


def torch_runner(torch: Any, fn: Callable[[], Any], device: Any = None) -> Callable[[], Any]:
    """``fn`` under ``torch.inference_mode``; on a CUDA ``device`` synchronised so the timing covers the work."""

    def run():
        with torch.inference_mode():
            out = fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def compare(
    run_flax: Callable[[], Any],
    run_torch: Callable[[], Any] | None,
    repeats: int,
    to_torch_layout: Callable[[Any], Any] = lambda x: x,
) -> dict[str, float | None]:
    """Times a jitted Flax function (its first call: the compile) and, when ``run_torch`` is given, the PyTorch
    reference, interleaved; ``max_abs_diff`` compares their outputs (ours through ``to_torch_layout``). Keys:
    ``compile_s``, ``flax_s``, ``torch_s``, ``max_abs_diff`` (the last two None without ``run_torch``)."""
    import numpy as np

    out, compile_s = timed(lambda: run_flax().block_until_ready())
    diff = None
    if run_torch is not None:
        ref = run_torch().float().cpu().numpy()
        diff = float(np.abs(to_torch_layout(np.asarray(out, np.float32)) - ref).max())
    flax_s, torch_s = interleaved_median(lambda: run_flax().block_until_ready(), run_torch, repeats)
    return {"compile_s": compile_s, "flax_s": flax_s, "torch_s": torch_s if run_torch else None, "max_abs_diff": diff}


def columns(prefix: str, timing: dict[str, Any]) -> dict[str, Any]:
    """A :func:`compare` result as report entries named ``{prefix}compile_s``, ``{prefix}flax_s``, ..."""
    flax_s, torch_s = timing["flax_s"], timing["torch_s"]
    return {
        f"{prefix}compile_s": round(timing["compile_s"], 2),
        f"{prefix}flax_s": round(flax_s, 4),
        f"{prefix}torch_s": round(torch_s, 4),
        f"{prefix}torch_over_flax": round(torch_s / flax_s, 3),
        f"{prefix}max_abs_diff": timing["max_abs_diff"],
    }


def time_unet_forward(
    apply: Callable[..., Any],
    params: Any,
    sample: Any,
    timesteps: Any,
    context: Any,
    repeats: int,
    torch: Any = None,
    torch_model: Any = None,
) -> dict[str, float | None]:
    """:func:`compare` for one UNet forward: Flax ``apply(params, sample, timesteps, context)`` (jitted here;
    ``sample`` channels-last) against the diffusers ``torch_model`` (channels second) when given."""
    import jax
    import jax.numpy as jnp

    forward = jax.jit(apply)
    inputs = [jax.device_put(jnp.asarray(a)) for a in (sample, timesteps, context)]
    channels_second = (0, sample.ndim - 1, *range(1, sample.ndim - 1))
    run_torch = None
    if torch_model is not None:
        first = next(torch_model.parameters())
        dev, tdt = first.device, first.dtype
        x_t = torch.tensor(sample.transpose(channels_second), device=dev, dtype=tdt)
        c_t = torch.tensor(context, device=dev, dtype=tdt)
        t_t = torch.tensor(timesteps, device=dev)
        run_torch = torch_runner(torch, lambda: torch_model(x_t, t_t, encoder_hidden_states=c_t).sample, dev)
    return compare(lambda: forward(params, *inputs), run_torch, repeats, lambda x: x.transpose(channels_second))


def unet_report(head: dict[str, Any], timing: dict[str, Any], torch: Any = None) -> dict[str, Any]:
    """The report of :func:`time_unet_forward`: ``head`` (config, shapes), machine, Flax times, PyTorch columns."""
    result = {**head, **machine_info()}
    result.update(flax_compile_s=round(timing["compile_s"], 2), flax_s=round(timing["flax_s"], 4))
    if timing["torch_s"] is not None:
        result.update(comparison(torch, timing["flax_s"], timing["torch_s"], timing["max_abs_diff"]))
    return result


def machine_info() -> dict[str, Any]:
    import jax

    return {
        "device": str(jax.devices()[0]),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "jax": jax.__version__,
    }


def torch_info(torch: Any) -> dict[str, Any]:
    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def comparison(torch: Any, flax_s: float, torch_s: float, max_abs_diff: float) -> dict[str, Any]:
    """The PyTorch columns of a one-model report: versions, time, torch/flax ratio, max |output difference|."""
    return dict(
        torch_info(torch),
        torch_s=round(torch_s, 4),
        torch_over_flax=round(torch_s / flax_s, 3),
        max_abs_diff=max_abs_diff,
    )


def report(result: dict[str, Any], path: str = "") -> None:
    """Prints the result as JSON and, with ``path``, writes it there too."""
    print(json.dumps(result, indent=2))
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
