"""Flax AudioLDM decoder vs the PyTorch references: HiFi-GAN vs transformers' SpeechT5HifiGan, the whole pipeline vs
diffusers' AudioLDMPipeline, WAV output, conversion both ways and errors.

Tiny random models are built with the reference classes, their weights perturbed (so zero-initialised layers cannot
hide a mismatch), written with ``save_pretrained`` and read through our converters. Our latents are NHWC (time rows,
mel-bin columns); diffusers' are NCHW.
"""

import json
import os

import diffusers
import flax.linen as nn
import jax
import numpy as np
import pytest
import soundfile
import torch
import transformers

from spider_jax.convert.folders import CheckpointMismatchError
from spider_jax.convert.safetensors_io import SafetensorsFile
from spider_jax.convert.vocoder import expected_tensors, load_vocoder, save_vocoder
from spider_jax.demo_decoders import audioldm_unet
from spider_jax.diffusion import vocoder
from spider_jax.diffusion.audio_pipeline import AudioPipeline, write_wav
from spider_jax.diffusion.vocoder import HifiGan, HifiGanConfig
from spider_jax.sharding import LOGICAL_RULES
from tests.diffusion_fixtures import (
    TRANSFORMERS_WEIGHTS,
    perturb,
    read_state,
    scaled_linear_scheduler,
    text_components,
    tiny_vae,
    torch_pipeline,
    write_checkpoint,
)

TOL = 1e-3
VOCODER_TOL = 1e-4
PROJ = 24  # CLAP projection dim = the UNet's projection_class_embeddings_input_dim (512 for AudioLDM)
TOKENS = 16  # tokenizer model_max_length (differs from PROJ on purpose: diffusers pads "" to PROJ tokens)
MEL = 8  # vocoder model_in_dim = VAE output width
SECONDS = 0.0039  # 15.6 frames of 4 samples: rounded up to 16 frames (VAE factor 2), cropped to 62 samples
STEPS = 3

# odd (kernel - stride) in the first stage: ConvTranspose1d then gives 3L + 1 samples, not 3L
VOCODER_ODD = dict(
    model_in_dim=MEL,
    upsample_initial_channel=16,
    upsample_rates=[3, 2],
    upsample_kernel_sizes=[6, 4],
    resblock_kernel_sizes=[3, 5],
    resblock_dilation_sizes=[[1, 3], [1, 2]],
)
VOCODER_PIPE = dict(VOCODER_ODD, upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4])


def _tiny_vocoder(kwargs: dict, seed: int) -> transformers.SpeechT5HifiGan:
    torch.manual_seed(seed)
    model = perturb(transformers.SpeechT5HifiGan(transformers.SpeechT5HifiGanConfig(**kwargs)), seed, scale=0.2)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # non-trivial normalize_before buffers
        model.mean.copy_(torch.randn(MEL, generator=gen))
        model.scale.copy_(torch.rand(MEL, generator=gen) + 0.5)
    return model


@pytest.fixture(scope="module")
def vocoder_folder(tmp_path_factory):
    model = _tiny_vocoder(VOCODER_ODD, seed=0)
    folder = tmp_path_factory.mktemp("vocoder")
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def audioldm_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("tiny_audioldm"))
    text = text_components(root, "clap", PROJ, TOKENS)
    torch.manual_seed(0)
    unet = audioldm_unet(PROJ, sample_size=8)  # AudioLDM layout: CLAP vector as concatenated class embedding
    vae = tiny_vae(in_channels=1, out_channels=1, scaling_factor=0.9227914)
    pipe = diffusers.AudioLDMPipeline(
        vae=perturb(vae, 1),
        unet=perturb(unet, 2),
        # cvssp/audioldm's scheduler_config
        scheduler=scaled_linear_scheduler("DDIMScheduler", beta_start=0.0015, beta_end=0.0195, clip_sample=False),
        vocoder=_tiny_vocoder(VOCODER_PIPE, seed=4),
        **text,
    )
    pipe.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def ours(audioldm_root) -> AudioPipeline:
    return AudioPipeline.from_pretrained(audioldm_root)


@pytest.fixture(scope="module")
def torch_pipe(audioldm_root) -> diffusers.AudioLDMPipeline:
    return torch_pipeline(diffusers.AudioLDMPipeline, audioldm_root)


def _cond(batch: int = 2, seed: int = 0) -> np.ndarray:
    s = np.random.default_rng(seed).normal(size=(batch, PROJ)).astype(np.float32)
    return s / np.linalg.norm(s, axis=-1, keepdims=True)  # a controller's S, not a prompt


# ---------------------------------------------------------------------------------------------- vocoder


def test_vocoder_matches_transformers(vocoder_folder):
    folder, model = vocoder_folder
    config, params = load_vocoder(folder)
    assert config.upsample_rates == (3, 2) and config.resblock_dilation_sizes == ((1, 3), (1, 2))
    mel = np.random.RandomState(0).randn(2, 11, MEL).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(mel)).numpy()
        want_single = model(torch.from_numpy(mel[0])).numpy()
    apply = jax.jit(lambda p, x: HifiGan(config).apply({"params": p}, x))
    got, got_single = np.asarray(apply(params, mel)), np.asarray(apply(params, mel[0]))
    assert got.shape == want.shape == (2, config.num_samples(11)) == (2, 2 * (3 * 11 + 1))
    assert np.abs(want).max() > 0.1
    diff = max(np.abs(got - want).max(), np.abs(got_single - want_single).max())
    print(f"vocoder: max |waveform diff| = {diff:.2e}")
    assert diff <= VOCODER_TOL


def test_vocoder_export_round_trip_and_weight_norm(vocoder_folder, tmp_path):
    folder, model = vocoder_folder
    config, params = load_vocoder(folder)
    save_vocoder(config, params, tmp_path / "export")
    reloaded = transformers.SpeechT5HifiGan.from_pretrained(tmp_path / "export").eval()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)
    assert reloaded.config.upsample_kernel_sizes == [6, 4]
    config2, params2 = load_vocoder(tmp_path / "export")
    assert config2 == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)

    # a checkpoint saved with weight norm still applied (parametrizations.weight.original0/1) is folded on load
    normed = transformers.SpeechT5HifiGan.from_pretrained(folder).eval()
    normed.apply_weight_norm()
    normed.save_pretrained(tmp_path / "weight_norm")
    assert "conv_pre.parametrizations.weight.original0" in SafetensorsFile(tmp_path / "weight_norm/model.safetensors")
    _, params_wn = load_vocoder(tmp_path / "weight_norm")
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params_wn, params)

    boxed = vocoder.abstract_params(config)
    known = {name for name, _ in LOGICAL_RULES}
    for leaf in jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)):
        assert isinstance(leaf, nn.LogicallyPartitioned) and set(leaf.names) <= known
        assert len(leaf.names) == leaf.value.ndim


def test_vocoder_mismatch_errors(vocoder_folder, tmp_path):
    folder, _ = vocoder_folder
    state = read_state(folder, TRANSFORMERS_WEIGHTS)
    write = lambda name, edited: write_checkpoint(tmp_path / name, edited, like=folder, weights=TRANSFORMERS_WEIGHTS)

    bad = dict(state, **{"upsampler.0.weight": np.zeros((16, 8, 5), np.float32)})
    with pytest.raises(CheckpointMismatchError, match=r"'upsampler\.0\.weight' has shape \(16, 8, 5\).*\(16, 8, 6\)"):
        load_vocoder(write("shape", bad))
    missing = {k: v for k, v in state.items() if k != "scale"}
    with pytest.raises(CheckpointMismatchError, match=r"missing 1: \['scale'\]"):
        load_vocoder(write("missing", missing))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "model_index.json").write_text(json.dumps({"_class_name": "AudioLDMPipeline"}))
    with pytest.raises(FileNotFoundError, match="without a 'vocoder' folder"):
        load_vocoder(tmp_path / "root")


def test_released_vocoder_name_and_shape_map():
    """cvssp/audioldm's vocoder shape (meta device: no memory): our tree maps onto every tensor; lengths."""
    released = dict(
        model_in_dim=64,
        upsample_initial_channel=1024,
        upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[16, 16, 8, 4, 4],
        resblock_kernel_sizes=[3, 7, 11],
        resblock_dilation_sizes=[[1, 3, 5]] * 3,
        normalize_before=False,
    )
    with torch.device("meta"):
        model = transformers.SpeechT5HifiGan(transformers.SpeechT5HifiGanConfig(**released))
    config = HifiGanConfig.from_hf_config(model.config.to_dict())
    ours = {n: shape for n, (_, shape) in expected_tensors(vocoder.abstract_params(config)).items()}
    assert ours == {n: tuple(t.shape) for n, t in model.state_dict().items()}
    assert config.hop_length == 160 and config.num_samples(512) == 81952  # 5.12 s, cropped to 81920 samples


# ---------------------------------------------------------------------------------------------- pipeline


def _torch_run(pipe, cond, noise, guidance_scale: float, negative=None):
    """diffusers' AudioLDMPipeline on S = ``cond`` from the NHWC ``noise``: (its final latents, NHWC; waveforms)."""
    seen = []
    extra = {} if negative is None else {"negative_prompt_embeds": torch.from_numpy(negative)}
    with torch.no_grad():
        out = pipe(
            prompt_embeds=torch.from_numpy(cond),
            latents=torch.from_numpy(noise).permute(0, 3, 1, 2),
            audio_length_in_s=SECONDS,
            num_inference_steps=STEPS,
            guidance_scale=guidance_scale,
            callback=lambda step, t, x: seen.append(x.permute(0, 2, 3, 1).numpy().copy()),
            output_type="np",
            **extra,
        )
    return seen[-1], out.audios


def test_guided_pipeline_matches_diffusers(ours, torch_pipe):
    shape = ours.audio_shape(SECONDS)
    assert (shape.frames, shape.samples, shape.latent_shape) == (16, 62, (8, 4, 4))
    cond = _cond()
    noise = np.random.default_rng(1).normal(size=(2, *shape.latent_shape)).astype(np.float32)
    latents = ours.sample_latents(cond, latents=noise, num_inference_steps=STEPS, guidance_scale=2.5)
    waves = ours.decode(latents, SECONDS)

    want, want_waves = _torch_run(torch_pipe, cond, noise, 2.5)  # negative: the pipeline encodes "", as ours does
    assert np.abs(want).max() > 0.1 and np.abs(want_waves).max() > 0.05
    lat_diff = np.abs(np.asarray(latents) - want).max()
    wave_diff = np.abs(waves - want_waves).max()
    print(f"pipeline: max |latent diff| = {lat_diff:.2e}, max |waveform diff| = {wave_diff:.2e}")
    assert waves.shape == want_waves.shape == (2, 62)
    assert lat_diff <= TOL and wave_diff <= TOL

    # the T_e path: our CLAP embedding of strings (and of "") is what the torch pipeline computes
    with torch.no_grad():
        ref = torch_pipe._encode_prompt(["a dog barks", "rain"], "cpu", 1, True).numpy()
    np.testing.assert_allclose(ours.encode_prompt(["a dog barks", "rain"]), ref[2:], atol=1e-5)
    np.testing.assert_allclose(ours.encode_prompt(["", ""]), ref[:2], atol=1e-5)


def test_explicit_negative_without_text_encoder(audioldm_root, ours, torch_pipe):
    bare = AudioPipeline.from_pretrained(audioldm_root, text_encoder=False)
    cond, negative = _cond(seed=2), _cond(seed=3)
    noise = np.array(bare.initial_noise(2, SECONDS, seed=5))
    got = bare.sample_latents(cond, negative=negative, latents=noise, num_inference_steps=STEPS, guidance_scale=4.0)
    want, _ = _torch_run(torch_pipe, cond, noise, 4.0, negative=negative)
    np.testing.assert_allclose(np.asarray(got), want, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="without a text encoder"):
        bare.sample_latents(cond, num_inference_steps=STEPS)


def test_seeded_wav_output_is_deterministic(ours, tmp_path):
    cond = _cond(seed=4)
    kwargs = dict(audio_length_in_s=SECONDS, num_inference_steps=STEPS)
    first, again, other = ours(cond, seed=3, **kwargs), ours(cond, seed=3, **kwargs), ours(cond, seed=4, **kwargs)
    assert first.dtype == np.float32 and first.shape == (2, 62)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other) and not np.array_equal(first[0], first[1])

    paths = write_wav(first, tmp_path / "pcm")
    assert [os.path.basename(p) for p in paths] == ["audio_0.wav", "audio_1.wav"]
    hop = ours.vocoder_config.hop_length
    for i, path in enumerate(paths):
        data, rate = soundfile.read(path, dtype="float32")
        info = soundfile.info(path)
        assert rate == 16000 and info.subtype == "PCM_16"
        assert abs(len(data) / rate - SECONDS) <= hop / rate
        np.testing.assert_allclose(data, first[i], atol=1.5 / 32768)
    exact = write_wav(first[0], tmp_path / "float", subtype="FLOAT", prefix="s")
    np.testing.assert_array_equal(soundfile.read(exact[0], dtype="float32")[0], first[0])

    # default length: the UNet's sample_size (8 rows) x VAE factor 2 x 4 samples per frame
    assert ours.default_audio_length_in_s() == pytest.approx(64 / 16000)
    with pytest.raises(ValueError, match=r"\(B, samples\) or \(samples,\)"):
        write_wav(np.zeros((1, 2, 3)), tmp_path / "bad")
    with pytest.raises(ValueError, match="unknown WAV subtype"):
        write_wav(first, tmp_path / "bad", subtype="MP3")


def test_errors(ours, tmp_path):
    with pytest.raises(ValueError, match=rf"must be \(batch, {PROJ}\).*projection_class_embeddings_input_dim.*7"):
        ours.sample_latents(np.zeros((1, 7), np.float32))
    with pytest.raises(ValueError, match=rf"must be \(batch, {PROJ}\)"):
        ours.sample_latents(np.zeros((1, 3, PROJ), np.float32))
    with pytest.raises(ValueError, match="audio_length_in_s must be at least 0.0005"):
        ours.audio_shape(0.0001)
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        AudioPipeline.from_pretrained(tmp_path)


def test_save_pretrained_round_trip(ours, tmp_path):
    ours.save_pretrained(tmp_path / "export")
    pipe = diffusers.AudioLDMPipeline.from_pretrained(str(tmp_path / "export"))  # diffusers reads it back
    assert isinstance(pipe.vocoder, transformers.SpeechT5HifiGan) and pipe.vocoder.config.upsample_rates == [2, 2]
    back = AudioPipeline.from_pretrained(tmp_path / "export")
    cond = _cond(seed=6)
    kwargs = dict(audio_length_in_s=SECONDS, num_inference_steps=STEPS, seed=1)
    np.testing.assert_array_equal(ours(cond, **kwargs), back(cond, **kwargs))
