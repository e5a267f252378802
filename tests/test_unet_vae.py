"""Flax UNet2DConditionModel / AutoencoderKL vs diffusers (PyTorch reference): parity, conversion both ways, errors.

Tiny random configs are built with diffusers' own classes, their weights perturbed (so zero-initialised layers such
as ``proj_out`` or ``conv_out`` cannot hide a bug), saved with ``save_pretrained`` and read through our converter.
Our models are NHWC; the tests transpose to diffusers' NCHW.
"""

import functools
import json
import os

import diffusers
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from spider_jax.convert.diffusers_models import (
    CheckpointMismatchError,
    component_folder,
    expected_tensors,
    load_unet,
    load_vae,
    save_unet,
    save_vae,
)
from spider_jax.diffusion import unet2d, vae
from spider_jax.diffusion.unet2d import UNet2DConditionModel, UNet2DConfig
from spider_jax.diffusion.vae import AutoencoderKL, AutoencoderKLConfig, sample_latent
from spider_jax.sharding import LOGICAL_RULES
from tests.diffusion_fixtures import (
    SD_UNET_TINY,
    VAE_TINY,
    channels_last,
    channels_second,
    read_state,
    saved_model,
    write_checkpoint,
)

TOL = 1e-3

UNET_CASES = {
    "sd_conv_proj": dict(SD_UNET_TINY),
    # linear projections, per-block head counts, two transformer layers, both blocks with attention
    "sd_linear_proj": dict(
        SD_UNET_TINY,
        use_linear_projection=True,
        attention_head_dim=(2, 4),
        transformer_layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        flip_sin_to_cos=False,
        freq_shift=1,
    ),
    # AudioLDM: CLAP vector as a simple_projection class embedding concatenated to the time embedding, and no
    # encoder states (cross_attention_dim = the block widths, so attn2 self-attends).
    "audioldm_style": dict(
        SD_UNET_TINY,
        in_channels=8,
        out_channels=8,
        cross_attention_dim=(32, 64),
        attention_head_dim=(2, 4),
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=24,
        class_embeddings_concat=True,
    ),
}


def _unet_inputs(case: str, config: dict, batch: int = 2, hw: tuple[int, int] = (16, 16)):
    rng = np.random.RandomState(3)
    x = rng.randn(batch, config.get("in_channels", 4), *hw).astype(np.float32)
    t = np.array([3, 901][:batch], dtype=np.int64)
    ctx = labels = None
    if case == "audioldm_style":
        labels = rng.randn(batch, config["projection_class_embeddings_input_dim"]).astype(np.float32)
    else:
        ctx = rng.randn(batch, 7, config["cross_attention_dim"]).astype(np.float32)
    return x, t, ctx, labels


def _torch_unet(model, x, t, ctx, labels) -> np.ndarray:
    as_t = lambda a: None if a is None else torch.tensor(a)
    with torch.no_grad():
        return model(as_t(x), as_t(t), encoder_hidden_states=as_t(ctx), class_labels=as_t(labels)).sample.numpy()


@functools.partial(jax.jit, static_argnums=0)
def _unet_apply(config, params, x, t, ctx, labels):
    return UNet2DConditionModel(config).apply({"params": params}, x, t, ctx, labels)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _vae_apply(config, method, params, x):
    module = AutoencoderKL(config)
    return module.apply({"params": params}, x, method=getattr(module, method))


def _flax_unet(config, params, x, t, ctx, labels) -> np.ndarray:
    return channels_second(_unet_apply(config, params, channels_last(x), t, ctx, labels))


@pytest.fixture(scope="module")
def unet_folders(tmp_path_factory):
    """case -> (folder, diffusers model), built once for the module."""
    out = {}
    for i, (case, kwargs) in enumerate(sorted(UNET_CASES.items())):
        build = functools.partial(diffusers.UNet2DConditionModel, **kwargs)
        out[case] = saved_model(tmp_path_factory.mktemp(f"unet_{case}"), build, seed=i)
    return out


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    return saved_model(tmp_path_factory.mktemp("vae"), lambda: diffusers.AutoencoderKL(**VAE_TINY), seed=7)


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("case", sorted(UNET_CASES))
def test_unet_matches_diffusers(unet_folders, case):
    folder, model = unet_folders[case]
    config, params = load_unet(folder)
    inputs = _unet_inputs(case, UNET_CASES[case])
    diff = np.abs(_flax_unet(config, params, *inputs) - _torch_unet(model, *inputs)).max()
    print(f"{case}: max |eps diff| = {diff:.2e}")
    assert diff <= TOL


def test_unet_odd_size_scalar_timestep(unet_folders):
    """A 15x13 latent takes diffusers' ``upsample_size`` path; a scalar timestep is broadcast over the batch."""
    folder, model = unet_folders["sd_conv_proj"]
    config, params = load_unet(folder)
    x, _, ctx, _ = _unet_inputs("sd_conv_proj", UNET_CASES["sd_conv_proj"], hw=(15, 13))
    ref = _torch_unet(model, x, np.array(500), ctx, None)
    diff = np.abs(_flax_unet(config, params, x, 500, ctx, None) - ref).max()
    print(f"odd size: max |eps diff| = {diff:.2e}")
    assert ref.shape == x.shape and diff <= TOL


def test_unet_bfloat16_compute(unet_folders):
    """bf16 activations and weights (norm statistics and softmax stay fp32) track the fp32 result."""
    folder, _ = unet_folders["sd_conv_proj"]
    x, t, ctx, _ = _unet_inputs("sd_conv_proj", UNET_CASES["sd_conv_proj"])
    config, params = load_unet(folder)
    ref = _flax_unet(config, params, x, t, ctx, None)
    config16, params16 = load_unet(folder, dtype="bfloat16", param_dtype="bfloat16")
    assert jax.tree_util.tree_leaves(params16)[0].dtype == jnp.bfloat16
    out = _flax_unet(config16, params16, x, t, ctx, None)
    assert out.dtype == jnp.bfloat16
    assert np.abs(out.astype(np.float32) - ref).max() <= 0.05 * np.abs(ref).max()


def test_vae_matches_diffusers(vae_folder):
    folder, model = vae_folder
    config, params = load_vae(folder)
    assert config.scaling_factor == pytest.approx(0.18215)
    img = np.random.RandomState(4).randn(2, 3, 16, 16).astype(np.float32)
    with torch.no_grad():
        posterior = model.encode(torch.tensor(img)).latent_dist
        ref_mean, ref_logvar = posterior.mean.numpy(), posterior.logvar.numpy()
        ref_dec = model.decode(posterior.mean).sample.numpy()
    mean, logvar = _vae_apply(config, "encode", params, channels_last(img))
    dec = _vae_apply(config, "decode", params, channels_last(ref_mean))
    diffs = {
        "mean": np.abs(channels_second(mean) - ref_mean).max(),
        "logvar": np.abs(channels_second(logvar) - ref_logvar).max(),
        "decode": np.abs(channels_second(dec) - ref_dec).max(),
    }
    print("vae max diffs", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) <= TOL

    z = sample_latent(mean, logvar, jax.random.PRNGKey(0))
    assert z.shape == mean.shape and not np.allclose(z, mean)
    assert np.allclose(config.unscale_latents(config.scale_latents(z)), z, atol=1e-5)


def test_vae_legacy_attention_names(vae_folder, tmp_path):
    """Pre-0.14 VAE checkpoints name the mid-block attention query/key/value/proj_attn (1x1-conv weights)."""
    folder, _ = vae_folder
    _, params = load_vae(folder)
    state = read_state(folder)
    legacy = {}
    for name, arr in state.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if ".attentions." in name and f".{new}." in name:
                name = name.replace(f".{new}.", f".{old}.")
                arr = arr[:, :, None, None] if arr.ndim == 2 else arr
        legacy[name] = np.asarray(arr)
    assert any(".proj_attn." in n for n in legacy)
    write_checkpoint(tmp_path, legacy, like=folder)
    _, legacy_params = load_vae(tmp_path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, legacy_params, params)


# ---------------------------------------------------------------------------------------------- export


def test_unet_export_round_trip(unet_folders, tmp_path):
    folder, model = unet_folders["audioldm_style"]
    config, params = load_unet(folder)
    save_unet(config, params, tmp_path / "unet")
    reloaded = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)
    assert dict(reloaded.config)["class_embeddings_concat"] is True
    config2, params2 = load_unet(tmp_path / "unet")
    assert config2 == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)


def test_vae_export_round_trip(vae_folder, tmp_path):
    folder, model = vae_folder
    config, params = load_vae(folder)
    save_vae(config, params, tmp_path)
    reloaded = diffusers.AutoencoderKL.from_pretrained(tmp_path).eval()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)
    assert load_vae(tmp_path)[0] == config


def test_pipeline_root(unet_folders, vae_folder, tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    os.symlink(unet_folders["sd_conv_proj"][0], tmp_path / "unet")
    os.symlink(vae_folder[0], tmp_path / "vae")
    assert component_folder(tmp_path, "unet") == str(tmp_path / "unet")
    assert load_unet(tmp_path)[0] == load_unet(unet_folders["sd_conv_proj"][0])[0]
    assert load_vae(tmp_path)[0].latent_channels == 4
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        component_folder(tmp_path, "text_encoder")


# ---------------------------------------------------------------------------------------------- errors


def _rewrite(src, dst, edit) -> None:
    state = read_state(src)
    edit(state)
    write_checkpoint(dst, state, like=src)


def test_checkpoint_mismatch_errors(unet_folders, tmp_path):
    src = unet_folders["sd_conv_proj"][0]
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"

    def wrong_shape(state):
        state[name] = np.zeros((state[name].shape[0], 5), np.float32)

    _rewrite(src, tmp_path / "shape", wrong_shape)
    with pytest.raises(CheckpointMismatchError, match=r"to_k\.weight.*\(32, 5\).*\(32, 32\)"):
        load_unet(tmp_path / "shape")

    _rewrite(src, tmp_path / "missing", lambda s: s.pop("conv_out.bias"))
    with pytest.raises(CheckpointMismatchError, match=r"missing 1: \['conv_out\.bias'\]"):
        load_unet(tmp_path / "missing")

    _rewrite(src, tmp_path / "extra", lambda s: s.update({"extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected 1: \['extra\.weight'\]"):
        load_unet(tmp_path / "extra")


def test_config_errors(unet_folders):
    hf = json.loads((unet_folders["sd_conv_proj"][0] / "config.json").read_text())
    with pytest.raises(ValueError, match="addition_embed_type"):
        UNet2DConfig.from_hf_config({**hf, "addition_embed_type": "text_time"})
    config = UNet2DConfig.from_hf_config(hf)
    x = np.zeros((1, 8, 8, 4), np.float32)
    with pytest.raises(ValueError, match="cross_attention_dim=32"):  # 64-channel block cannot self-attend in attn2
        UNet2DConditionModel(config).init(jax.random.PRNGKey(0), x, 1, None)


FULL_SIZE = {
    "sd15_unet": (diffusers.UNet2DConditionModel, dict(cross_attention_dim=768, attention_head_dim=8, sample_size=64)),
    "audioldm_unet": (
        diffusers.UNet2DConditionModel,
        dict(  # cvssp/audioldm-s-full-v2 as converted by diffusers' script (per-block cross dims = widths)
            sample_size=128,
            in_channels=8,
            out_channels=8,
            block_out_channels=(128, 256, 384, 640),
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
            up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
            cross_attention_dim=(128, 256, 384, 640),
            attention_head_dim=(4, 8, 12, 20),
            class_embed_type="simple_projection",
            projection_class_embeddings_input_dim=512,
            class_embeddings_concat=True,
        ),
    ),
    "sd_vae": (
        diffusers.AutoencoderKL,
        dict(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_name_and_shape_maps(name):
    """Real SD1.5 / AudioLDM / SD-VAE shapes: our tree maps onto every diffusers tensor (meta device: no memory)."""
    cls, kwargs = FULL_SIZE[name]
    with torch.device("meta"):
        model = cls(**kwargs)
    if cls is diffusers.AutoencoderKL:
        abstract = vae.abstract_params(AutoencoderKLConfig.from_hf_config(dict(model.config)))
    else:
        abstract = unet2d.abstract_params(UNet2DConfig.from_hf_config(dict(model.config)))
    ours = {n: shape for n, (_, shape) in expected_tensors(abstract).items()}
    assert ours == {n: tuple(t.shape) for n, t in model.state_dict().items()}


def test_params_carry_logical_axes():
    for abstract in (
        unet2d.abstract_params(UNet2DConfig.from_hf_config(UNET_CASES["audioldm_style"])),
        vae.abstract_params(AutoencoderKLConfig(**VAE_TINY)),
    ):
        leaves = jax.tree_util.tree_leaves(abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        known = {name for name, _ in LOGICAL_RULES}
        for leaf in leaves:
            assert isinstance(leaf, nn.LogicallyPartitioned)
            assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= known
