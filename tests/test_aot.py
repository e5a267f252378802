"""AOT compilation for a described TPU topology (spider_jax.aot).

The compile tests need libtpu (``pip install 'jax[tpu]==<jax version>'``) and are skipped without it; they run on a
CPU-only host, since libtpu compiles for a topology description without any TPU attached.
"""

import importlib.util

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from spider_jax import aot
from spider_jax.models.llama import LlamaConfig
from spider_jax.models.lora import LoraConfig

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason=f"libtpu not installed (pip install 'jax[tpu]=={jax.__version__}'): cannot describe a TPU topology",
)


def test_missing_libtpu_gives_install_hint(monkeypatch):
    monkeypatch.setattr(aot, "_libtpu_available", lambda: False)
    with pytest.raises(aot.LibTpuMissingError, match=r"pip install 'jax\[tpu\]=="):
        aot.topology_mesh("v5p:2x2x1", {"data": -1})


@pytest.mark.parametrize("name", ["v5p-128", "foo", "v5p:4x4x4x4", ""])
def test_bad_topology_string_is_rejected_before_libtpu(monkeypatch, name):
    monkeypatch.setattr(aot, "_libtpu_available", lambda: False)
    with pytest.raises(ValueError, match="bad TPU topology"):
        aot.topology_devices(name)


def test_resolve_shape():
    axes = ("data", "fsdp", "tensor")
    assert aot._resolve_shape({"fsdp": 16, "data": -1}, axes, 64) == [4, 16, 1]
    assert aot._resolve_shape((-1, 2, 2), axes, 8) == [2, 2, 2]
    with pytest.raises(ValueError, match="does not fit 64 devices"):
        aot._resolve_shape({"fsdp": 3, "data": -1}, axes, 64)
    with pytest.raises(ValueError, match="not in"):
        aot._resolve_shape({"model": 2}, axes, 8)


def test_format_report_percent_of_hbm():
    gib = aot.GIB
    report = {"argument_bytes": 2 * gib, "output_bytes": gib, "temp_bytes": 7 * gib, "alias_bytes": gib}
    report["peak_estimate_bytes"] = 9 * gib
    text = aot.format_report({**report, "device_kind": "TPU v5", "num_devices": 64})
    assert "HBM 95.0 GiB" in text and "9.00 GiB" in text and "9.5% HBM" in text
    assert "90.0% HBM" in aot.format_report(report, hbm_bytes=10 * gib)
    assert "% HBM" not in aot.format_report(report)  # unknown chip, no HBM given


@needs_libtpu
def test_topology_mesh_v5p():
    mesh = aot.topology_mesh("v5p:4x4x4", {"data": -1, "fsdp": 16})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 16, "tensor": 1}
    assert mesh.devices.flat[0].platform == "tpu" and mesh.devices.flat[0].device_kind == "TPU v5"
    assert len({d.id for d in mesh.devices.flat}) == 64
    other = aot.topology_mesh("v5p:2x2x2", (2, 4), axis_names=("x", "y"))
    assert dict(other.shape) == {"x": 2, "y": 4}
    with pytest.raises(ValueError, match="bad TPU topology"):
        aot.topology_mesh("v5p:3x3x3", {"data": -1})  # libtpu: not divisible by the chips per host


@needs_libtpu
def test_compile_for_topology_matmul():
    mesh = aot.topology_mesh("v5p:2x2x1", {"data": 2, "fsdp": 2})
    x_sh, w_sh = NamedSharding(mesh, P(("data", "fsdp"), None)), NamedSharding(mesh, P(None, "fsdp"))
    args = (jax.ShapeDtypeStruct((64, 256), jnp.bfloat16), jax.ShapeDtypeStruct((256, 512), jnp.bfloat16))
    compiled = aot.compile_for_topology(lambda x, w: x @ w, args, (x_sh, w_sh), x_sh)
    report = aot.memory_report(compiled)
    assert report["argument_bytes"] == (64 * 256 // 4 + 256 * 512 // 2) * 2  # per chip
    assert report["output_bytes"] == 64 * 512 // 4 * 2
    assert report["num_devices"] == 4 and report["device_kind"] == "TPU v5"


@needs_libtpu
def test_compile_tiny_lora_step_for_v5p():
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        scan_layers=True,
        remat_policy="full",
        dtype="bfloat16",
        param_dtype="bfloat16",
    )
    result = aot.compile_lm_step_for_topology(
        cfg, LoraConfig(rank=4), batch_size=8, seq_len=32, topology="v5p:2x2x1", mesh_shape={"data": -1, "fsdp": 2}
    )
    report = result.report
    for key in ("argument_bytes", "output_bytes", "temp_bytes", "generated_code_bytes", "peak_estimate_bytes"):
        assert report[key] > 0, key
    assert 0 < report["alias_bytes"] <= report["output_bytes"]  # the donated train state
    assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1} and report["num_devices"] == 4
    args = jax.tree_util.tree_leaves(result.abstract_args)
    compiled_in = jax.tree_util.tree_leaves(result.compiled.input_shardings[0])
    assert len(args) == len(compiled_in)
    for arg, sharding in zip(args, compiled_in, strict=True):
        assert sharding.is_equivalent_to(arg.sharding, arg.ndim), (arg, sharding)
    batch_specs = {a.sharding.spec for a in jax.tree_util.tree_leaves(result.abstract_args[2])}
    assert batch_specs == {P(("data", "fsdp"), None)}  # the batch really is split over data and fsdp
    assert "TPU v5" in aot.format_report(report)


@needs_libtpu
def test_train_py_compile_only_compiles_the_spider_step(tmp_path):
    """``train.py --compile_only`` AOT-compiles the tiny Spider stage-1 step for an 8-chip v5p slice."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "train.py", "--config=configs/tiny.py", "--compile_only", "--topology=v5p:2x2x2",
         f"--config.output_dir={tmp_path}"],
        cwd=root, env=dict(os.environ, PYTHONPATH=root), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{") :])
    assert report["num_devices"] == 8 and report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert report["argument_bytes"] > 0 and report["temp_bytes"] > 0 and report["stage"] == "stage1"
    assert "% HBM" in done.stdout
    assert not os.listdir(tmp_path)  # compile only: nothing trained, nothing written
