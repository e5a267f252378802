"""Flax Zeroscope video decoder vs diffusers (PyTorch reference): UNet3D parity, conversion both ways, checkpoint
errors, the guided sampling loop vs ``TextToVideoSDPipeline``, seeded output and the MP4 / GIF writers.

Tiny random models are built with diffusers' / transformers' own classes, their weights perturbed (so zero-initialised
layers such as the temporal convs' last stage or ``proj_out`` cannot hide a bug) and saved with ``save_pretrained``.
Our layout is ``(B, F, H, W, C)``; diffusers' is ``(B, C, F, H, W)``.
"""

import functools
import json
import sys

import diffusers
import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

from spider_jax.convert.unet3d import CheckpointMismatchError, load_unet3d, save_unet3d
from spider_jax.diffusion import unet3d
from spider_jax.diffusion.unet3d import UNet3DConditionModel, UNet3DConfig
from spider_jax.diffusion.video_pipeline import VideoPipeline, write_gif, write_mp4
from spider_jax.sharding import LOGICAL_RULES
from tests.diffusion_fixtures import (
    SD_UNET_TINY,
    channels_last,
    channels_second,
    perturb,
    read_state,
    saved_model,
    scaled_linear_scheduler,
    text_components,
    tiny_vae,
    torch_pipeline,
    write_checkpoint,
)

TOL = 1e-3
WIDTH = 32  # text encoder width = cross_attention_dim
TOKENS = 16  # tokenizer model_max_length
FRAMES = 3
UNET_TINY = dict(  # the tiny SD UNet's layout with 3-D blocks
    SD_UNET_TINY,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    cross_attention_dim=WIDTH,
    sample_size=8,
)


@functools.partial(jax.jit, static_argnums=0)
def _unet_apply(config, params, x, t, ctx):
    return UNet3DConditionModel(config).apply({"params": params}, x, t, ctx)


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    build = lambda: diffusers.UNet3DConditionModel(**UNET_TINY)
    return saved_model(tmp_path_factory.mktemp("unet3d"), build, seed=0, perturb_seed=1)


# ---------------------------------------------------------------------------------------------- UNet3D


def test_unet3d_matches_diffusers(unet_folder):
    folder, model = unet_folder
    config, params = load_unet3d(folder)
    assert config.attention_head_dim == 8 and config.block_out_channels == (32, 64)
    rng = np.random.RandomState(3)
    cases = [  # (B, F, h, w, timestep): two videos with their own timesteps; an odd size takes the upsample_size path
        (2, FRAMES, 8, 8, np.array([3, 901])),
        (1, 2, 5, 7, np.array(500)),
    ]
    for b, f, h, w, t in cases:
        x = rng.randn(b, 4, f, h, w).astype(np.float32)
        ctx = rng.randn(b, 7, WIDTH).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.tensor(x), torch.tensor(t), encoder_hidden_states=torch.tensor(ctx)).sample.numpy()
        out = channels_second(_unet_apply(config, params, channels_last(x), t, ctx))
        diff = np.abs(out - ref).max()
        print(f"UNet3D B={b} F={f} {h}x{w}: max |eps diff| = {diff:.2e}")
        assert out.shape == ref.shape and np.abs(ref).max() > 0.1 and diff <= TOL


def test_unet3d_export_round_trip_and_logical_names(unet_folder, tmp_path):
    folder, model = unet_folder
    config, params = load_unet3d(folder)
    save_unet3d(config, params, tmp_path / "unet")
    reloaded = diffusers.UNet3DConditionModel.from_pretrained(tmp_path / "unet").eval()
    want = model.state_dict()
    assert set(reloaded.state_dict()) == set(want)
    for key, value in want.items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)
    assert want["mid_block.temp_convs.0.conv1.2.weight"].shape == (64, 64, 3, 1, 1)
    config2, params2 = load_unet3d(tmp_path / "unet")
    assert config2 == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)

    abstract = unet3d.abstract_params(config)
    known = {name for name, _ in LOGICAL_RULES}
    for leaf in jax.tree_util.tree_leaves(abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)):
        assert isinstance(leaf, nn.LogicallyPartitioned)
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= known


def test_unet3d_checkpoint_errors(unet_folder, tmp_path):
    folder, _ = unet_folder
    state = read_state(folder)
    write = lambda sd, sub: write_checkpoint(tmp_path / sub, sd, like=folder)
    name = "down_blocks.0.temp_convs.0.conv2.3.weight"
    bad = dict(state, **{name: np.zeros((32, 32, 3, 1), np.float32)})  # a 2-D-style kernel instead of Conv3d's
    with pytest.raises(
        CheckpointMismatchError,
        match=r"'down_blocks\.0\.temp_convs\.0\.conv2\.3\.weight' has shape "
        r"\(32, 32, 3, 1\), the config expects \(32, 32, 3, 1, 1\)",
    ):
        load_unet3d(write(bad, "bad_shape"))
    missing = {k: v for k, v in state.items() if k != "transformer_in.proj_in.weight"}
    with pytest.raises(CheckpointMismatchError, match=r"missing 1: \['transformer_in\.proj_in\.weight'\]"):
        load_unet3d(write(missing, "missing"))

    hf = UNet3DConfig(**UNET_TINY).to_hf_config()
    with pytest.raises(ValueError, match="time_cond_proj_dim=8 is not supported"):
        UNet3DConfig.from_hf_config(dict(hf, time_cond_proj_dim=8))
    with pytest.raises(ValueError, match="needs a single int"):
        UNet3DConfig.from_hf_config(dict(hf, attention_head_dim=[8, 8]))
    with pytest.raises(ValueError, match="down block type 'CrossAttnDownBlock2D'"):
        UNet3DConfig.from_hf_config(dict(hf, down_block_types=["CrossAttnDownBlock2D", "DownBlock3D"]))


# ---------------------------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def t2v_root(tmp_path_factory, unet_folder) -> str:
    root = str(tmp_path_factory.mktemp("tiny_t2v"))
    text = text_components(root, "clip", WIDTH, TOKENS)
    torch.manual_seed(4)
    pipe = diffusers.TextToVideoSDPipeline(
        vae=perturb(tiny_vae(), 5, 0.02),
        unet=unet_folder[1],
        scheduler=scaled_linear_scheduler("DDIMScheduler", clip_sample=False),  # Zeroscope's scheduler_config
        **text,
    )
    pipe.save_pretrained(root)
    return root


def _inputs(batch: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cond = rng.normal(size=(batch, TOKENS, WIDTH)).astype(np.float32)  # a controller's S, not a prompt
    noise = rng.normal(size=(batch, FRAMES, 8, 8, 4)).astype(np.float32)  # (B, F, h, w, C), 16x16 pixels
    return cond, noise


def test_guided_video_matches_diffusers(t2v_root):
    cond, noise = _inputs()
    ours = VideoPipeline.from_pretrained(t2v_root)
    latents = ours.sample_latents(cond, latents=noise, num_inference_steps=3, guidance_scale=9.0)
    frames = ours.decode(latents)

    pipe = torch_pipeline(diffusers.TextToVideoSDPipeline, t2v_root)
    kwargs = dict(
        prompt_embeds=torch.from_numpy(cond),  # negative: the pipeline encodes "" itself, as ours does
        latents=torch.from_numpy(channels_second(noise)),
        num_inference_steps=3,
        guidance_scale=9.0,
    )
    with torch.no_grad():
        want = pipe(**kwargs, output_type="latent").frames.numpy()
        want_frames = pipe(**kwargs, output_type="np").frames  # (B, F, H, W, 3) in [0, 1]
    lat_diff = np.abs(channels_second(latents) - want).max()
    frame_diff = np.abs(frames - want_frames).max()
    print(f"DDIM: max |latent diff| = {lat_diff:.2e}, max |frame diff| = {frame_diff:.2e}")
    assert np.abs(want).max() > 0.1 and lat_diff <= TOL
    assert frames.shape == want_frames.shape == (2, FRAMES, 16, 16, 3)
    assert 0.0 <= frames.min() and frames.max() <= 1.0 and frames.std() > 0.01
    assert frame_diff <= TOL


def test_seeded_video_writers_and_errors(t2v_root, tmp_path):
    av = pytest.importorskip("av")
    from PIL import Image

    ours = VideoPipeline.from_pretrained(t2v_root)
    assert ours.default_size() == (16, 16)
    cond, _ = _inputs(batch=2, seed=1)
    # Same shapes and step count as the parity test, so the jitted loop compiled there is reused.
    first = ours(cond, num_frames=FRAMES, num_inference_steps=3, seed=3)
    again = ours(cond, num_frames=FRAMES, num_inference_steps=3, seed=3, frames_per_decode=2)  # chunked decode
    other = ours(cond, num_frames=FRAMES, num_inference_steps=3, seed=4)
    assert first.dtype == np.uint8 and first.shape == (2, FRAMES, 16, 16, 3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[0, 0], first[0, 1])

    mp4 = write_mp4(first[0], tmp_path / "v.mp4", fps=8)
    with av.open(mp4) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.average_rate == 8 and (stream.width, stream.height) == (16, 16)
    assert len(decoded) == FRAMES and decoded[0].shape == (16, 16, 3)
    assert np.abs(np.stack(decoded).astype(int) - first[0]).mean() < 40  # lossy, but the same picture

    gif = write_gif(first[0].astype(np.float32) / 255, tmp_path / "v.gif", fps=10)  # floats in [0, 1] accepted
    with Image.open(gif) as im:
        assert (im.n_frames, im.size, im.info["duration"], im.info["loop"]) == (FRAMES, (16, 16), 100, 0)

    with pytest.raises(ValueError, match="even frame size"):
        write_mp4(np.zeros((2, 15, 16, 3), np.uint8), tmp_path / "odd.mp4")
    with pytest.raises(ValueError, match=r"a video must be \(frames, H, W, 3\)"):
        write_gif(first, tmp_path / "batch.gif")  # two videos at once
    with pytest.MonkeyPatch.context() as mp:  # neither PyAV nor imageio importable
        mp.setitem(sys.modules, "av", None)
        mp.setitem(sys.modules, "imageio", None)
        mp.setitem(sys.modules, "imageio.v2", None)
        with pytest.raises(ImportError, match="pip install av"):
            write_mp4(first[0], tmp_path / "none.mp4")
    with pytest.raises(ValueError, match="conditioning width 7 != the UNet's cross_attention_dim 32"):
        ours.sample_latents(np.zeros((1, TOKENS, 7), np.float32), guidance_scale=1.0)
    with pytest.raises(ValueError, match="without a text encoder"):
        VideoPipeline.from_pretrained(t2v_root, text_encoder=False).sample_latents(cond, num_inference_steps=1)


def test_save_pretrained_round_trip(t2v_root, unet_folder, tmp_path):
    ours = VideoPipeline.from_pretrained(t2v_root)
    ours.save_pretrained(tmp_path / "export")
    index = json.loads((tmp_path / "export" / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline" and index["unet"] == ["diffusers", "UNet3DConditionModel"]
    back = VideoPipeline.from_pretrained(tmp_path / "export")
    assert back.unet_config == ours.unet_config and type(back.scheduler).__name__ == "DDIMScheduler"
    cond, noise = _inputs(batch=1, seed=2)
    kwargs = dict(latents=noise, num_inference_steps=2, guidance_scale=3.0)
    np.testing.assert_array_equal(np.asarray(ours.sample_latents(cond, **kwargs)), back.sample_latents(cond, **kwargs))

    pipe = diffusers.TextToVideoSDPipeline.from_pretrained(str(tmp_path / "export"))  # diffusers reads it too
    assert isinstance(pipe.scheduler, diffusers.DDIMScheduler)
    assert pipe.tokenizer.model_max_length == TOKENS and pipe.text_encoder.config.hidden_size == WIDTH
    exported = pipe.unet.state_dict()
    for key, value in unet_folder[1].state_dict().items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0)

    # without a text encoder: no text_encoder/ or tokenizer/, and our loader reads the folder back
    VideoPipeline.from_pretrained(t2v_root, text_encoder=False).save_pretrained(tmp_path / "bare")
    assert "text_encoder" not in json.loads((tmp_path / "bare" / "model_index.json").read_text())
    assert VideoPipeline.from_pretrained(tmp_path / "bare", text_encoder=False).text_encoder is None
