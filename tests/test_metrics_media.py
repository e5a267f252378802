"""Media metrics: Fréchet distance / FID / FD, Inception Score, the FID Inception, CLIP scores, MCD.

All networks are tiny or random and built offline; the point is that our code computes the same thing as the
libraries / a direct torch computation, and that missing weights are a skip with a reason, never a number.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
import torch

from spider_jax.metrics.feature_models import MissingMetricWeights, try_metric
from spider_jax.metrics.frechet import (
    FeatureStats,
    compute_statistics,
    fd,
    feature_statistics,
    fid,
    frechet_distance,
    inception_score,
)

# ----------------------------------------------------------------------------------------- Fréchet distance


def test_frechet_1d_gaussians_closed_form():
    # d = (mu1 - mu2)^2 + s1^2 + s2^2 - 2 s1 s2 = 4 + 4 + 9 - 12 = 5
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == \
        pytest.approx(5.0, abs=1e-10)
    assert frechet_distance(1.0, 4.0, 3.0, 9.0) == pytest.approx(5.0, abs=1e-10)  # scalars are 1-D too


def test_frechet_diagonal_closed_form_and_identical_sets():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.5, 3, size=6), rng.uniform(0.5, 3, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-9)

    stats = feature_statistics(rng.normal(size=(200, 8)))
    assert abs(frechet_distance(stats.mu, stats.sigma, stats.mu, stats.sigma)) < 1e-8


def test_frechet_matches_pytorch_fid_reference_value():
    # Value printed by pytorch_fid 0.3.0's calculate_frechet_distance for exactly these statistics.
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(1, 2, size=(50, 8))
    sa, sb = feature_statistics(a), feature_statistics(b)
    assert frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma) == pytest.approx(18.277028778656398, rel=1e-9)


def test_frechet_singular_product_stays_finite():
    rng = np.random.default_rng(1)
    s = feature_statistics(rng.normal(size=(5, 20)))  # rank 4 covariance in 20-D
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert abs(frechet_distance(s.mu, s.sigma, s.mu, s.sigma)) < 1e-4
        t = feature_statistics(rng.normal(size=(5, 20)))
        assert np.isfinite(frechet_distance(s.mu, s.sigma, t.mu, t.sigma))


def test_frechet_against_library_when_installed():
    fid_score = pytest.importorskip("pytorch_fid.fid_score", reason="pytorch-fid (needs torchvision) not installed")
    rng = np.random.default_rng(2)
    for n, d in [(40, 6), (6, 12)]:
        sa, sb = feature_statistics(rng.normal(size=(n, d))), feature_statistics(rng.normal(0.5, 1.5, size=(n, d)))
        ours = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
        assert ours == pytest.approx(fid_score.calculate_frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma), rel=1e-9)


class MeanColour:
    """Cheap extractor for the wrapper tests: per-channel mean and std of each image."""

    name = "mean-colour"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch):
        from spider_jax.metrics.feature_models import image_to_unit_float, load_image

        self.calls += 1
        imgs = [image_to_unit_float(load_image(x)) for x in batch]
        return np.stack([np.concatenate([im.mean((0, 1)), im.std((0, 1))]) for im in imgs])


def _images(rng, n, brightness):
    return [np.clip(rng.normal(brightness, 40, size=(12 + i, 10, 3)), 0, 255).astype(np.uint8) for i in range(n)]


def test_fid_wrapper_paths_batches_and_cache(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    a, b = _images(rng, 9, 100), _images(rng, 7, 160)
    paths = []
    for i, im in enumerate(b):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(paths[-1])

    ext = MeanColour()
    direct = feature_statistics(ext(a)), feature_statistics(ext(b))
    expected = frechet_distance(direct[0].mu, direct[0].sigma, direct[1].mu, direct[1].sigma)

    cache = tmp_path / "ref_stats.npz"
    ext.calls = 0
    value = fid(a, [str(p) for p in paths], ext, batch_size=4, cache_b=cache, progress=False)
    assert value == pytest.approx(expected, rel=1e-9)
    assert ext.calls == 3 + 2  # ceil(9/4) + ceil(7/4)
    assert cache.is_file()

    ext.calls = 0  # second run reads the cache for side B, and a .npz path works as a side by itself
    assert fid(a, paths, ext, batch_size=4, cache_b=cache, progress=False) == pytest.approx(expected, rel=1e-9)
    assert ext.calls == 3
    assert fid(iter(a), str(cache), ext, progress=False) == pytest.approx(expected, rel=1e-9)  # generators too
    loaded = FeatureStats.load(cache)
    assert loaded.n == 7 and loaded.extractor == "mean-colour"

    other = MeanColour()
    other.name = "other"
    with pytest.raises(ValueError, match="mean-colour"):
        compute_statistics(paths, other, cache=cache, progress=False)


# ----------------------------------------------------------------------------------------- Inception Score


def test_inception_score_uniform_and_confident():
    mean, std = inception_score(np.zeros((50, 10)))
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)

    classes = np.arange(50) % 5  # every split of 5 holds the 5 classes once
    logits = np.full((50, 1008), -1e4)
    logits[np.arange(50), classes] = 1e4
    for splits in (10, 1):
        mean, std = inception_score(logits, splits=splits)
        assert mean == pytest.approx(5.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    assert inception_score(np.eye(5)[classes], splits=10, probabilities=True)[0] == pytest.approx(5.0)
    with pytest.raises(ValueError):
        inception_score(np.zeros((3, 4)), splits=10)


# ----------------------------------------------------------------------------------------- FID Inception

# pytorch_fid 0.3.0's fid_inception_v3() module: sha256 over sorted "name:shape" of its state dict (566 tensors,
# 23,885,392 values). Recorded with the library itself so that a drift from its layout fails here even without it.
PYTORCH_FID_LAYOUT = ("95b1da8ef64fdb83", 566, 23_885_392)


def _layout(sd):
    digest = hashlib.sha256(";".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(sd.items())).encode()).hexdigest()
    return digest[:16], len(sd), sum(v.numel() for k, v in sd.items() if "num_batches" not in k)


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """Random FID-Inception weights (BN statistics randomised too) saved as a pytorch-fid style .pth."""
    from spider_jax.metrics.inception import FIDInceptionV3

    torch.manual_seed(0)
    model = FIDInceptionV3().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buf in model.state_dict().items():
            if name.endswith(("running_var", "bn.weight")):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bn.bias")):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_inception_extractor_loads_local_weights(random_inception):
    from spider_jax.metrics.inception import InceptionV3Extractor

    model, path = random_inception
    assert _layout(model.state_dict()) == PYTORCH_FID_LAYOUT
    ext = InceptionV3Extractor(weights_path=path)
    rng = np.random.default_rng(4)
    # Two sizes in one batch (each is resized on its own), one uint8 [0, 255] and one float [0, 1].
    imgs = [rng.integers(0, 256, size=(40, 52, 3), dtype=np.uint8), rng.random((33, 30, 3), dtype=np.float32)]
    feats, logits = ext.features_and_logits(imgs)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    # Direct: the library's pipeline (bilinear resize to 299, 2x-1, blocks, global pool) on the in-memory model.
    unit = [imgs[0].astype(np.float32) / 255.0, imgs[1]]
    with torch.no_grad():
        direct = [model(torch.from_numpy(im).permute(2, 0, 1)[None]) for im in unit]
    np.testing.assert_allclose(feats, torch.cat([d[0] for d in direct]).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, torch.cat([d[1] for d in direct]).numpy(), rtol=1e-5, atol=1e-5)
    # IS logits are bias-free (original TF IS code / torch-fidelity "logits_unbiased").
    np.testing.assert_allclose(logits, feats @ model.fc.weight.detach().double().numpy().T, rtol=1e-5, atol=1e-5)


def test_inception_score_images_batches_logits():
    from spider_jax.metrics.inception import inception_score_images

    class FakeInception:  # duck-typed extractor: class index = image brightness bucket
        name = "fake"

        def logits(self, batch):
            return np.stack([np.eye(4)[int(np.mean(x)) // 64] * 50.0 for x in batch])

    images = [np.full((4, 4, 3), 64 * (i % 4) + 10, np.uint8) for i in range(20)]
    assert inception_score_images(images, FakeInception(), splits=5, batch_size=3, progress=False)[0] == \
        pytest.approx(4.0, rel=1e-6)


def test_inception_matches_pytorch_fid_when_installed(random_inception, monkeypatch):
    pi = pytest.importorskip("pytorch_fid.inception", reason="pytorch-fid (needs torchvision) not installed")
    model, path = random_inception
    from spider_jax.metrics.inception import InceptionV3Extractor

    monkeypatch.setattr(pi, "load_state_dict_from_url", lambda *a, **k: torch.load(path, weights_only=True))
    lib = pi.InceptionV3([3]).eval()
    x = torch.rand(2, 3, 37, 45)
    with torch.no_grad():
        expected = lib(x)[0].flatten(1).numpy()
    ours = InceptionV3Extractor(weights_path=path)(list(x.permute(0, 2, 3, 1).numpy()))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- CLIP


def _bytes_to_unicode():
    """GPT-2 / CLIP byte → printable-unicode table, to write a byte-level BPE vocabulary by hand."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    d = tmp_path_factory.mktemp("clip")
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    merges = ["a t</w>", "c at</w>", "d o", "do g</w>"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    bos, eos = len(vocab), len(vocab) + 1
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = bos, eos
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer.from_pretrained(str(d), model_max_length=16)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}), tokenizer=tok)
    torch.manual_seed(0)
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, bos_token_id=bos, eos_token_id=eos,
                pad_token_id=eos)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(str(d))
    proc.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def clip_scorer(tiny_clip_dir):
    from spider_jax.metrics.clip_score import ClipScorer

    return ClipScorer(tiny_clip_dir, batch_size=2)


def _direct_clip(model_dir, images, texts):
    """Reference: CLIPModel forward on the processor's joint output; rows = images, cols = texts (cosines)."""
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(str(model_dir)).eval(), CLIPProcessor.from_pretrained(str(model_dir))
    inputs = proc(text=texts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    return (out.image_embeds.double() @ out.text_embeds.double().T).numpy()


def _frames(rng, n, size=(24, 30)):
    return [rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(n)]


def test_clip_score_matches_direct_torch(tiny_clip_dir, clip_scorer):
    from spider_jax.metrics.clip_score import clip_i, clip_score

    rng = np.random.default_rng(5)
    images, texts = _frames(rng, 3), ["a cat", "a dog", "cat and dog at a cat"]
    sims = _direct_clip(tiny_clip_dir, images, texts)
    assert clip_score(clip_scorer, images, texts) == pytest.approx(100 * np.mean(np.diag(sims)), rel=1e-5)
    assert clip_score(clip_scorer, [im.astype(np.float32) / 255 for im in images], texts, scale=1.0) == \
        pytest.approx(np.mean(np.diag(sims)), rel=1e-4)
    assert clip_i(clip_scorer, images, images) == pytest.approx(1.0, abs=1e-9)
    other = _frames(rng, 3)
    emb = clip_scorer.embed_images(images + other)
    assert clip_i(clip_scorer, images, other) == pytest.approx(np.mean(np.sum(emb[:3] * emb[3:], 1)), rel=1e-6)


def test_clipsim_is_mean_over_frames(tiny_clip_dir, clip_scorer, tmp_path):
    import av

    from spider_jax.metrics.clip_score import clip_frame_consistency, clip_score, clip_t, clipsim

    rng = np.random.default_rng(6)
    video = _frames(rng, 3)
    per_frame = [clip_score(clip_scorer, [f], ["a dog"], scale=1.0) for f in video]
    assert clipsim(clip_scorer, [video], ["a dog"]) == pytest.approx(np.mean(per_frame), rel=1e-6)
    assert clipsim(clip_scorer, [np.stack(video)], ["a dog"]) == pytest.approx(np.mean(per_frame), rel=1e-6)
    sims = _direct_clip(tiny_clip_dir, video, ["a dog"])[:, 0]
    assert clip_t(clip_scorer, [video, video[0]], ["a dog", "a dog"]) == \
        pytest.approx((sims.mean() + sims[0]) / 2, rel=1e-5)  # a single image is a one-frame video
    assert clip_frame_consistency(clip_scorer, [[video[0]] * 3]) == pytest.approx(1.0, abs=1e-9)

    path = tmp_path / "clip.mp4"  # the PyAV decoding path: 3 frames in, 3 frames scored
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for f in [np.full((24, 32, 3), v, np.uint8) for v in (20, 120, 220)]:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    from spider_jax.metrics.feature_models import load_video_frames

    decoded = load_video_frames(path)
    assert len(decoded) == 3 and decoded[0].shape == (24, 32, 3)
    assert clipsim(clip_scorer, [path], ["a cat"]) == pytest.approx(
        np.mean([clip_score(clip_scorer, [f], ["a cat"], scale=1.0) for f in decoded]), rel=1e-6)


# ----------------------------------------------------------------------------------------- FD (CLAP)


@pytest.fixture(scope="module")
def tiny_clap_dir(tmp_path_factory):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    d = tmp_path_factory.mktemp("clap")
    torch.manual_seed(0)
    cfg = ClapConfig(
        text_config=dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=40),
        audio_config=dict(spec_size=64, num_mel_bins=16, window_size=4, patch_size=4, patch_stride=(4, 4),
                          hidden_size=16, patch_embeds_hidden_size=8, depths=[1, 1], num_attention_heads=[1, 2],
                          num_hidden_layers=2),
        projection_dim=8,
    )
    ClapModel(cfg).save_pretrained(str(d))
    ClapFeatureExtractor(feature_size=16, sampling_rate=8000, hop_length=80, max_length_s=2, fft_window_size=256,
                         frequency_max=4000, truncation="rand_trunc", padding="repeatpad").save_pretrained(str(d))
    return d


def test_fd_with_clap_extractor(tiny_clap_dir, tmp_path):
    import soundfile as sf
    from transformers import ClapFeatureExtractor, ClapModel

    from spider_jax.metrics.audio_features import ClapAudioExtractor
    from spider_jax.metrics.feature_models import resample

    ext = ClapAudioExtractor(tiny_clap_dir)
    assert ext.sampling_rate == 8000 and ext.max_samples == 16000
    rng = np.random.default_rng(7)
    a = [rng.normal(0, 0.1, size=int(8000 * s)).astype(np.float32) for s in (0.5, 1.0, 1.5, 3.0)]  # last > 2 s
    feats = ext(a)
    assert feats.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-6)

    model, fe = ClapModel.from_pretrained(str(tiny_clap_dir)).eval(), ClapFeatureExtractor.from_pretrained(
        str(tiny_clap_dir))
    with torch.no_grad():  # direct: the 3 s clip cut to its first 2 s, as the extractor documents
        direct = model.get_audio_features(**fe([w[:16000] for w in a], sampling_rate=8000, return_tensors="pt"))
    np.testing.assert_allclose(feats, direct.pooler_output.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(ext(a[3:]), ext(a[3:]))  # long clips are deterministic

    path = tmp_path / "x.wav"  # a 16 kHz stereo file is mixed down and resampled to the model's 8 kHz
    sf.write(path, np.stack([a[1], a[1]], 1).repeat(2, 0), 16000)
    np.testing.assert_allclose(ext([path]), ext([resample(a[1].repeat(2), 16000, 8000)]), rtol=1e-5, atol=1e-6)

    assert abs(fd(a, a, ext, batch_size=3, progress=False)) < 1e-6
    b = [np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32) * k for k in (0.2, 0.5, 0.9)]
    sa, sb = feature_statistics(feats), feature_statistics(ext(b))
    assert fd(a, [(w, 8000) for w in b], ext, progress=False) == pytest.approx(
        frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma), rel=1e-6)


# ----------------------------------------------------------------------------------------- MCD


def _voice(sr=16000, seconds=0.6, f0=120.0):
    """A vowel-like harmonic signal with a wobbling pitch and amplitude envelope."""
    t = np.arange(int(sr * seconds)) / sr
    phase = 2 * np.pi * np.cumsum(f0 + 30 * np.sin(2 * np.pi * 2 * t)) / sr
    return (sum(np.sin(k * phase) / k for k in range(1, 15)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)).astype(
        np.float32)


def test_mcd_identity_perturbation_symmetry():
    from spider_jax.metrics.mcd import MCD_DB_SCALE, mcd, mcd_with_penalty, mean_mcd

    a = _voice()
    b = a + np.random.default_rng(8).normal(0, 0.05, size=a.shape).astype(np.float32)
    assert mcd(a, a, sample_rate=16000) == 0.0
    ab, ba = mcd(a, b, sample_rate=16000), mcd((b, 16000), (a, 16000))
    assert ab > 1.0 and ba == pytest.approx(ab, rel=0.05)
    assert mcd(a, b, sample_rate=16000, alpha=1.0) == pytest.approx(ab / MCD_DB_SCALE, rel=1e-9)
    c = _voice(f0=150.0)
    assert mcd(a, c, sample_rate=16000) > mcd(a, a * 0.3, sample_rate=16000)  # gain-invariant (peak normalised)
    value, penalty = mcd_with_penalty(a, c, sample_rate=16000)
    assert value > 0 and 0 <= penalty < 1
    assert mean_mcd([(a, b), (a, a)], sample_rate=16000, progress=False) == pytest.approx(ab / 2, rel=1e-9)
    with pytest.raises(ValueError, match="sample_rate"):
        mcd(a, b)


def test_mcd_agrees_with_package_api(tmp_path):
    import soundfile as sf
    from mel_cepstral_distance import compare_audio_files

    from spider_jax.metrics.mcd import MCD_DB_SCALE, mcd

    a, c = _voice(), _voice(f0=140.0, seconds=0.55)
    pa, pc = tmp_path / "a.wav", tmp_path / "c.wav"
    sf.write(pa, a, 16000, subtype="PCM_16")
    sf.write(pc, c, 16000, subtype="PCM_16")
    raw, _ = compare_audio_files(str(pa), str(pc))  # package defaults: DTW, 20 mel bands, MFCC 1..15
    assert mcd(pa, pc) == pytest.approx(MCD_DB_SCALE * raw, rel=1e-4)
    raw_pad, _ = compare_audio_files(str(pa), str(pc), aligning="pad", M=30, D=13)
    assert mcd(pa, pc, aligning="pad", M=30, D=13, alpha=1.0) == pytest.approx(raw_pad, rel=1e-4)


# ----------------------------------------------------------------------------------------- missing weights


def test_missing_weights_raise_helpful_error(tmp_path, monkeypatch):
    from spider_jax.metrics.audio_features import ClapAudioExtractor
    from spider_jax.metrics.clip_score import ClipScorer
    from spider_jax.metrics.inception import InceptionV3Extractor, load_fid_inception

    with pytest.raises(MissingMetricWeights, match="pt_inception-2015-12-05-6726825d.pth") as e:
        load_fid_inception(tmp_path / "nope.pth")
    assert str(tmp_path / "nope.pth") in str(e.value) and "pytorch-fid" in str(e.value)

    monkeypatch.setenv("SPIDER_METRIC_WEIGHTS", str(tmp_path))
    with pytest.raises(MissingMetricWeights, match="SPIDER_METRIC_WEIGHTS"):
        InceptionV3Extractor()
    (tmp_path / "clip-vit-large-patch14").mkdir()  # a folder without config.json is still missing
    with pytest.raises(MissingMetricWeights, match="config.json") as e:
        ClipScorer()
    assert "openai/clip-vit-large-patch14" in str(e.value)
    value, reason = try_metric(ClapAudioExtractor)
    assert value is None and "laion/clap-htsat-unfused" in reason and "FD" in reason

    assert try_metric(lambda x: x + 1, 1) == (2, None)
    with pytest.raises(ZeroDivisionError):  # only missing weights become a skip
        try_metric(lambda: 1 / 0)
