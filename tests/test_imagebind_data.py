"""ImageBind preprocessing from real files (image / audio / video) and the E^X embedding cache built from them."""

import json
import math
import os

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from spider_jax import embed_cache as ec
from spider_jax import embedding_store as es
from spider_jax import imagebind_data as ibd
from spider_jax.input_pipeline import media_key

MEAN, STD = np.asarray(ibd.CLIP_MEAN, np.float32), np.asarray(ibd.CLIP_STD, np.float32)
PAD = (0.0 - ibd.AUDIO_MEAN) / ibd.AUDIO_STD  # a zero-padded fbank frame after normalisation


def _denorm(x: np.ndarray) -> np.ndarray:
    return (x * STD + MEAN) * 255.0


def _write_png(path, size=(320, 240), color=(200, 30, 90), mode="RGB"):
    img = Image.new("RGB", size, color)
    img.paste((10, 250, 10), (0, 0, 8, 8))  # a corner block the centre crop must drop
    img.convert(mode).save(path)
    return str(path)


def _write_wav(path, rate, seconds, freq=1000.0, channels=1, subtype="PCM_16"):
    t = np.arange(int(rate * seconds)) / rate
    data = 0.5 * np.sin(2 * np.pi * freq * t)
    if channels == 2:
        data = np.stack([data, np.random.default_rng(0).uniform(-0.5, 0.5, len(t))], 1)
    sf.write(path, data, rate, subtype=subtype)
    return str(path)


def _write_mp4(path, frames=30, fps=10, size=(64, 48)):
    """Uniform grey frames, level 8 * index, so the decoded level tells which frame a clip used."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            img = np.full((size[1], size[0], 3), 8 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode(None))
    return str(path)


# ----------------------------------------------------------------------------------------------------- images


def test_image_resize_crop_normalise(tmp_path):
    wide = ibd.load_image(_write_png(tmp_path / "wide.png"))
    assert wide.shape == (224, 224, 3) and wide.dtype == np.float32
    # 320x240 -> 298x224 bicubic, centre crop from x = round(37) = 37: a uniform colour stays exact
    np.testing.assert_allclose(_denorm(wide), np.broadcast_to([200, 30, 90], wide.shape), atol=1e-3)
    np.testing.assert_allclose(wide[0, 0], (np.array([200, 30, 90], np.float32) / 255 - MEAN) / STD, rtol=1e-6)

    tall = ibd.load_image(_write_png(tmp_path / "tall.jpg", size=(100, 150), mode="RGB"))
    assert tall.shape == (224, 224, 3)
    palette = ibd.load_image(_write_png(tmp_path / "palette.png", size=(224, 300), mode="P"))
    assert palette.shape == (224, 224, 3)

    # the same steps spelled out with PIL: resize (298, 224) bicubic, crop left 37, top 0
    with Image.open(tmp_path / "wide.png") as img:
        ref = np.asarray(img.convert("RGB").resize((298, 224), Image.Resampling.BICUBIC), np.float32)[:, 37:261]
    np.testing.assert_allclose(wide, (ref / 255 - MEAN) / STD, atol=1e-6)
    assert ibd.resize_short_side_size(320, 240, 224) == (298, 224)
    assert ibd.resize_short_side_size(100, 150, 224) == (224, 336)


# ------------------------------------------------------------------------------------------------------ audio


def test_resample_keeps_frequency_and_length():
    rate = 44100
    x = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(rate) / rate)).astype(np.float32)
    y = ibd.resample(x, rate, 16000)
    assert y.shape == (16000,) and y.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(y))
    assert np.argmax(spectrum) * 16000 / len(y) == 1000.0
    ref = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(len(y)) / 16000)
    assert np.abs(y - ref)[100:-100].max() < 1e-3  # band-limited: the sine is reproduced, not just its pitch
    assert ibd.resample(np.zeros((2, 12345), np.float32), 22050, 16000).shape == (2, math.ceil(12345 * 320 / 441))
    np.testing.assert_array_equal(ibd.resample(x, 16000, 16000), x)
    # a 10 kHz tone is above the new 8 kHz Nyquist: the anti-aliasing filter removes it
    hi = np.sin(2 * np.pi * 10000 * np.arange(rate) / rate).astype(np.float32)
    assert np.abs(ibd.resample(hi, rate, 16000))[200:-200].max() < 0.02


def _reference_fbank(x: np.ndarray, window: str, dtype=torch.float64) -> np.ndarray:
    """Kaldi's compute-fbank-feats written independently in torch: loops for the mel triangles (kaldi's C++
    MelBanks form), unfold for framing, ``torch.hann_window`` for the window."""
    sr, size, shift, nfft, bins = 16000, 400, 160, 512, 128
    w = torch.tensor(x, dtype=dtype)
    frames = w.unfold(0, size, shift)
    frames = frames - frames.mean(1, keepdim=True)
    frames = torch.cat([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], 1)
    win = torch.hann_window(size, periodic=False, dtype=dtype)
    frames = frames * (win if window == "hanning" else win**0.85)
    power = torch.fft.rfft(frames, n=nfft).abs() ** 2

    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    lo, hi = mel(20.0), mel(8000.0)
    delta = (hi - lo) / (bins + 1)
    banks = torch.zeros(bins, nfft // 2 + 1, dtype=dtype)
    for b in range(bins):
        left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        for i in range(nfft // 2):
            m = mel(i * sr / nfft)
            if left < m < right:
                banks[b, i] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    eps = torch.finfo(torch.float32).eps
    return torch.log(torch.clamp(power @ banks.T, min=eps)).numpy()


@pytest.mark.parametrize("window", ["hanning", "povey"])
def test_fbank_matches_independent_reference(window):
    x = np.random.default_rng(1).normal(0, 0.1, 8000)
    x[3000:3400] = 0.0  # a silent frame hits the log floor identically
    ours = ibd.kaldi_fbank(x, num_mel_bins=128, window_type=window)
    assert ours.shape == (1 + (8000 - 400) // 160, 128)
    np.testing.assert_allclose(ours, _reference_fbank(x, window), atol=1e-8)
    # torch in float32 (as torchaudio computes) is within ~1e-4 of our float64
    np.testing.assert_allclose(ours, _reference_fbank(x.astype(np.float32), window, torch.float32), atol=2e-3)


def test_pure_tone_lands_in_its_mel_bin():
    x = np.sin(2 * np.pi * 2000 * np.arange(16000) / 16000)
    fbank = ibd.kaldi_fbank(x, num_mel_bins=128, window_type="hanning")
    peak = np.bincount(fbank.argmax(1)).argmax()
    mel = lambda f: 1127.0 * math.log(1 + f / 700)  # noqa: E731
    lo, delta = mel(20), (mel(8000) - mel(20)) / 129
    center_hz = 700 * (math.exp((lo + (peak + 1) * delta) / 1127) - 1)
    assert abs(center_hz - 2000) < 40  # one mel bin is ~40 Hz wide here
    banks = ibd.mel_banks(128, 512, 16000.0, 20.0, 0.0)
    assert banks.shape == (128, 257) and not banks[:, -1].any() and (banks >= 0).all()


def test_audio_files_to_clips(tmp_path):
    # 3 s stereo 44.1 kHz: 500 Hz in the first second, 3 kHz after; channel 1 is noise ImageBind never reads
    rate, t = 44100, np.arange(3 * 44100) / 44100
    left = np.where(t < 1.0, np.sin(2 * np.pi * 500 * t), np.sin(2 * np.pi * 3000 * t)) * 0.5
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, len(t))
    sf.write(tmp_path / "stereo.wav", np.stack([left, noise], 1), rate, subtype="PCM_16")
    clips = ibd.load_audio(str(tmp_path / "stereo.wav"))
    assert clips.shape == (3, 128, 204) and clips.dtype == np.float32
    np.testing.assert_allclose(clips[:, :, 198:], PAD, rtol=1e-6)  # 2 s = 198 frames, padded to 204
    assert np.abs(clips[:, :, :198] - PAD).max() > 1
    mono, _ = ibd.read_audio(str(tmp_path / "stereo.wav"))
    np.testing.assert_array_equal(clips, ibd.audio_clips(mono[:1], rate))  # channel 0 only
    bin_500 = int(np.argmax(ibd.kaldi_fbank(np.sin(2 * np.pi * 500 * np.arange(8000) / 16000), 16000, 128).mean(0)))
    # clips start at 0, 0.5, 1.0 s: the 500 Hz second fills half of clip 0, a quarter of clip 1, none of clip 2
    energy = clips[:, bin_500, :198].mean(1)
    assert energy[0] > energy[1] > energy[2]

    short = ibd.load_audio(_write_wav(tmp_path / "short.flac", 16000, 1.0))  # 1 s < clip: 3 identical clips
    assert short.shape == (3, 128, 204)
    np.testing.assert_array_equal(short[0], short[2])
    np.testing.assert_allclose(short[:, :, 98:], PAD, rtol=1e-6)  # 1 + (16000 - 400) // 160 = 98 frames


def test_clip_sampling():
    assert [(float(a), float(b)) for a, b in ibd.clip_timepoints(10.0, 2, 3)] == [(0, 2), (4, 6), (8, 10)]
    assert [float(a) for a, _ in ibd.clip_timepoints(1.5, 2, 5)] == [0.0] * 5
    assert len(ibd.clip_timepoints(100.0, 2, 5)) == 5
    got = ibd.video_clip_frames(30, 10.0, 2, 5, 2)  # starts 0, .25, .5, .75, 1 s -> frames ceil(10 * t)
    assert [g.tolist() for g in got] == [[0, 19], [3, 22], [5, 24], [8, 27], [10, 29]]
    assert ibd.temporal_subsample(5, 3).tolist() == [0, 2, 4]
    assert ibd.temporal_subsample(1, 2).tolist() == [0, 0]


# ------------------------------------------------------------------------------------------------------ video


def test_bilinear_matches_torch_and_crops():
    x = np.random.default_rng(0).random((2, 37, 53, 3), dtype=np.float32)
    for h, w in [(224, 320), (20, 30), (100, 7)]:
        ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(h, w), mode="bilinear")
        np.testing.assert_allclose(ibd.bilinear_resize(x, h, w), ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    wide = np.arange(10)[None, :, None] * np.ones((4, 1, 1))  # (H=4, W=10, 1): crops move along x
    assert [ibd.uniform_crop(wide, 4, i)[0, 0, 0] for i in range(3)] == [0, 3, 6]
    tall = np.arange(10)[:, None, None] * np.ones((1, 4, 1))
    assert [ibd.uniform_crop(tall, 4, i)[0, 0, 0] for i in range(3)] == [0, 3, 6]
    assert ibd.short_side_scale_size(48, 64, 224) == (224, 298) and ibd.short_side_scale_size(64, 48, 224) == (298, 224)


def test_video_clips_frames_and_crops(tmp_path):
    video = ibd.load_video(_write_mp4(tmp_path / "v.mp4"))
    assert video.shape == (15, 2, 224, 224, 3) and video.dtype == np.float32
    levels = _denorm(video).mean(axis=(2, 3, 4))  # (15, 2) grey level of each frame used
    expected = np.repeat([[0, 19], [3, 22], [5, 24], [8, 27], [10, 29]], 3, axis=0) * 8
    np.testing.assert_allclose(levels, expected, atol=4)  # lossy codec: within a few grey levels
    np.testing.assert_allclose(video[0], video[1], atol=1e-5)  # a uniform frame: all 3 crops equal
    assert ibd.load_media(str(tmp_path / "v.mp4")).shape == (15, 2, 224, 224, 3)


# ------------------------------------------------------------------------------------------------------ errors


def test_clear_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(os.urandom(64))
    (tmp_path / "bad.wav").write_bytes(b"RIFF" + os.urandom(64))
    (tmp_path / "bad.mp4").write_bytes(os.urandom(512))
    (tmp_path / "zero.jpg").write_bytes(b"")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    with av.open(str(tmp_path / "novideo.mp4"), mode="w") as c:  # an audio-only MP4
        s = c.add_stream("aac", rate=16000)
        for i in range(3):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    cases = {
        "missing.png": "file not found",
        "bad.png": "cannot decode image",
        "bad.wav": "cannot decode audio",
        "bad.mp4": "cannot decode video",
        "zero.jpg": "file is empty",
        "empty.wav": "no samples",
        "novideo.mp4": "no video stream",
        "notes.txt": "unsupported media type",
    }
    (tmp_path / "notes.txt").write_text("hi")
    for name, reason in cases.items():
        path = str(tmp_path / name)
        with pytest.raises(ibd.MediaReadError, match=reason) as info:
            ibd.load_media(path)
        assert isinstance(info.value, ValueError) and info.value.path == path and path in str(info.value)
    tiny = tmp_path / "tiny.wav"
    sf.write(tiny, np.zeros(100, np.float32), 16000)
    with pytest.raises(ibd.MediaReadError, match="too short"):
        ibd.load_audio(str(tiny))


# ------------------------------------------------------------------------------------------------ embed cache


def _tiny_apply(params, kind, x):
    """Deterministic (B, 8) features: statistics of the input plus a one-hot of its kind."""
    flat = x.reshape(x.shape[0], -1)
    onehot = jnp.broadcast_to(jnp.asarray([kind == k for k in ibd.KINDS], jnp.float32), (x.shape[0], 3))
    stats = jnp.stack([flat.mean(1), flat.std(1), flat.min(1), flat.max(1), flat[:, 0] * params["w"]], 1)
    return jnp.concatenate([stats, onehot], 1)


def _tiny_encoder(calls=None, crash_after=None, **meta):
    def load(path):
        if calls is not None:
            calls.append(path)
            if crash_after is not None and len(calls) > crash_after:
                raise KeyboardInterrupt  # not an Exception: a crash, not a per-file failure
        return ibd.load_media(path)

    return ec.MediaEncoder(_tiny_apply, {"w": jnp.float32(2.0)}, {"encoder": "tiny", **meta}, load)


@pytest.fixture()
def media(tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    paths = [
        _write_png(root / "a.png"),
        _write_png(root / "sub" / "b.jpg", size=(240, 320), color=(5, 6, 7)),
        _write_png(root / "c.png", size=(224, 224), color=(250, 250, 250)),
        _write_wav(root / "sub" / "s.wav", 44100, 2.5),
        _write_mp4(root / "v.mp4", frames=12),
    ]
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    return str(root), paths


def test_embed_cache_round_trip_and_resume(tmp_path, media):
    root, paths = media
    out = str(tmp_path / "store")
    all_paths = ec.list_media(root)
    assert sorted(all_paths) == sorted([*paths, os.path.join(root, "broken.png")])
    calls: list[str] = []
    report = ec.build_media_store(
        out, all_paths, _tiny_encoder(calls), media_root=root, batch_size=3, dtype="float32", progress=False
    )
    assert (report.written, report.skipped, report.total) == (5, 0, 5)
    assert [p for p, _ in report.failed] == [os.path.join(root, "broken.png")]
    assert "broken.png" in report.failed[0][1] and "cannot decode image" in report.failed[0][1]
    assert json.loads(open(os.path.join(out, ec.FAILURES_FILE)).readline())["path"].endswith("broken.png")
    store = es.load_store(out)
    assert sorted(store.keys.tolist()) == sorted(media_key(p, root) for p in paths)
    assert store.meta["keys"] == ec.KEY_SCHEME and store.meta["media_root"] == root and store.shape == (8,)
    for p in paths:  # each embedding is the encoder applied to that file's preprocessed input
        kind = ibd.kind_of(p)
        want = np.asarray(_tiny_apply({"w": 2.0}, kind, ibd.load_media(p)[None]))[0]
        np.testing.assert_allclose(store.lookup(np.array([media_key(p, root)]))[0][0], want, rtol=1e-5, atol=1e-5)
    assert not os.path.exists(os.path.join(out, ec.PARTS_DIR))

    # resume: a new file is embedded, the others are skipped (the broken one is retried)
    extra = _write_png(os.path.join(root, "sub", "d.png"), color=(1, 2, 3))
    calls.clear()
    report = ec.build_media_store(
        out, ec.list_media(root), _tiny_encoder(calls), media_root=root, batch_size=3, dtype="float32", progress=False
    )
    assert sorted(calls) == sorted([extra, os.path.join(root, "broken.png")])
    assert (report.written, report.skipped, report.total) == (1, 5, 6) and len(es.load_store(out)) == 6

    with pytest.raises(ValueError, match="encoder='tiny'"):  # a different encoder must not add to this store
        ec.build_media_store(
            out,
            paths,
            ec.MediaEncoder(_tiny_apply, {"w": 1.0}, {"encoder": "other"}),
            media_root=root,
            dtype="float32",
            progress=False,
        )
    with pytest.raises(ibd.MediaReadError, match="broken.png"):
        ec.build_media_store(
            out, ec.list_media(root), _tiny_encoder(), media_root=root, dtype="float32", strict=True, progress=False
        )


def test_embed_cache_survives_a_crash(tmp_path, media):
    root, paths = media
    out = str(tmp_path / "store")
    calls: list[str] = []
    encoder = _tiny_encoder(calls, crash_after=4)
    one_device = ec.ShardedRunner(encoder, batch_size=1, devices=jax.devices()[:1])  # batches of 1
    with pytest.raises(KeyboardInterrupt):  # dies on the 5th file, after a part of 2 was committed
        ec.build_media_store(
            out,
            paths,
            encoder,
            media_root=root,
            part_size=2,
            workers=1,
            dtype="float16",
            progress=False,
            runner=one_device,
        )
    parts = os.listdir(os.path.join(out, ec.PARTS_DIR))
    committed = {k for part in parts for k in es.load_store(os.path.join(out, ec.PARTS_DIR, part)).keys.tolist()}
    assert len(committed) >= 2 and not os.path.exists(os.path.join(out, es.META_FILE))
    calls.clear()
    report = ec.build_media_store(
        out, paths, _tiny_encoder(calls), media_root=root, batch_size=1, part_size=2, dtype="float16", progress=False
    )
    assert not {media_key(p, root) for p in calls} & committed  # committed work is not redone
    assert report.total == 5 and report.skipped == len(committed)
    assert sorted(es.load_store(out).keys.tolist()) == sorted(media_key(p, root) for p in paths)


def test_cli_with_pluggable_encoder_and_pipeline_lookup(tmp_path, media, sp_model_path):
    from spider_jax import input_pipeline as ip
    from spider_jax import spider_inputs, tmm
    from spider_jax.tokenizer import load_tokenizer

    root, paths = media
    out = str(tmp_path / "cli_store")
    listing = tmp_path / "files.txt"
    listing.write_text("a.png\nsub/b.jpg\n# comment\nsub/s.wav\nv.mp4\n")
    argv = ["--media_root", root, "--list", str(listing), "--out", out, "--batch_size", "2", "--no_progress"]
    assert ec.main(argv, encoder=_tiny_encoder()) == 0
    store = es.load_store(out)
    assert store.dtype == np.float16 and len(store) == 4
    assert (
        ec.main(["--media_root", root, "--glob", "**/*.png", "--out", out, "--no_progress"], encoder=_tiny_encoder())
        == 0
    )
    assert len(es.load_store(out)) == 5  # c.png added (broken.png failed, reported)

    # what the training step sees: an I2T instance over a.png -> input_key -> its E^X row from the store
    tok = load_tokenizer(sp_model_path)
    sources = {"i2t": [tmm.Sample("a red square", (("IMAGE", paths[0]),), sample_id="0")]}
    instance = ip.instance_dataset({"i2t": 1.0}, tmm.load_pools(), sources, seed=0)[0]
    config = ip.PipelineConfig(max_length=128, max_inputs=2, media_root=root)
    example = ip.encode_instance(instance, tok, ip.TemplateIds.build(tok), config)
    assert example["input_key"].tolist() == [media_key(paths[0], root), 0]
    spec = spider_inputs.SpiderInputSpec(outputs={}, encoder_width=8)
    got = spider_inputs.attach_embeddings(example, spec, {}, es.load_store(out))["input_embeddings"]
    want = np.asarray(_tiny_apply({"w": 2.0}, ibd.IMAGE, ibd.load_media(paths[0])[None]))[0]
    np.testing.assert_allclose(got[0], want, rtol=2e-3, atol=2e-3)  # stored as float16
    assert got.shape == (2, 8) and not got[1].any()


def test_real_imagebind_wiring_with_tiny_config(tmp_path, media):
    """The CLI's ImageBind path end to end: tiny checkpoint file -> config sizes -> layout adapter -> embed."""
    from safetensors.numpy import save_file

    from spider_jax.convert import imagebind as cib
    from spider_jax.models import imagebind as ib

    root, paths = media
    config = ib.imagebind_tiny(text=False)
    rng = np.random.default_rng(0)  # a random official-layout state dict (faster than a Flax init on CPU)
    state = {t.name: rng.normal(0, 0.2, t.torch_shape).astype(np.float32) for t in cib.imagebind_tensors(config)}
    ckpt = str(tmp_path / "tiny.safetensors")
    save_file(state, ckpt)
    params = cib.load_imagebind(ckpt, config)
    out = str(tmp_path / "ib_store")
    argv = [
        "--checkpoint",
        ckpt,
        "--config",
        "imagebind_tiny",
        "--media_root",
        root,
        "--out",
        out,
        "--dtype",
        "float32",
        "--batch_size",
        "8",
        "--no_progress",
    ]
    assert ec.main(argv) == 0
    store = es.load_store(out)
    assert store.shape == (16,) and len(store) == 5 and store.meta["config"] == "imagebind_tiny"
    sizes = dict(image_size=28, num_mel_bins=16, target_length=24)
    for p in (paths[0], paths[3], paths[4]):  # image, audio, video
        x = ibd.load_media(p, **sizes)
        assert x.shape == {"image": (28, 28, 3), "audio": (3, 16, 24), "video": (15, 2, 28, 28, 3)}[ibd.kind_of(p)]
        modality, inputs = ibd.to_model_inputs(ibd.kind_of(p), x[None])
        want = np.asarray(ib.embed(params, config, modality, inputs))[0]
        np.testing.assert_allclose(store.lookup(np.array([media_key(p, root)]))[0][0], want, atol=1e-5)
