"""Flax ImageBind vs a PyTorch re-implementation of the public architecture (tests/imagebind_reference.py, same
state-dict names as the official model): images, videos (clips of 2 frames), audio clips, text; the converter both
ways (.pth and .safetensors), shape errors naming the tensor, and the full-size name/shape map without allocating."""

from __future__ import annotations

import dataclasses
import logging

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from imagebind_reference import ReferenceImageBind, randomize_  # noqa: E402

from spider_jax.convert import imagebind as cib  # noqa: E402
from spider_jax.convert.folders import CheckpointMismatchError  # noqa: E402
from spider_jax.models import imagebind as ib  # noqa: E402

TOL = 1e-4
MAX_DIFFS: dict[str, float] = {}
CFG = ib.imagebind_tiny()  # width 32, 2 blocks, 4 heads, out 16; image 28 / patch 14; audio 16 × 24, k 8 s 4


def _reference(layer_scale: bool = False) -> ReferenceImageBind:
    v, a, t = CFG.vision, CFG.audio, CFG.text
    model = ReferenceImageBind(
        d=v.embed_dim, blocks=v.num_blocks, heads=v.num_heads, out=CFG.out_embed_dim, image=v.image_size,
        patch=v.kernel_size[1], mel=a.num_mel_bins, frames=a.target_len, audio_k=a.kernel_size, audio_s=a.stride,
        vocab=t.vocab_size, context=t.context_length, layer_scale=layer_scale,
    )  # fmt: skip
    randomize_(model)
    return model.eval()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagebind")
    model = _reference()
    path = root / "imagebind_tiny.pth"
    torch.save(model.state_dict(), path)
    return model, path, cib.load_imagebind(path, CFG)


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    v, a, t = CFG.vision, CFG.audio, CFG.text
    ids = rng.integers(1, t.vocab_size - 1, (3, t.context_length))
    ids[0, 5], ids[1, -1], ids[2, 0] = t.vocab_size - 1, t.vocab_size - 1, t.vocab_size - 1  # EOS = largest id
    return {
        "image": rng.standard_normal((3, 3, v.image_size, v.image_size), np.float32),
        "video": rng.standard_normal((2, 2, 3, 2, v.image_size, v.image_size), np.float32),  # 2 clips × 2 frames
        "images": rng.standard_normal((2, 3, 3, v.image_size, v.image_size), np.float32),  # 3 stills averaged
        "audio": rng.standard_normal((2, 2, 1, a.num_mel_bins, a.target_len), np.float32),  # 2 clips
        "audio1": rng.standard_normal((3, 1, a.num_mel_bins, a.target_len), np.float32),
        "text": ids.astype(np.int64),
    }


MODALITY = {"image": "vision", "video": "vision", "images": "vision", "audio": "audio", "audio1": "audio"}


def _compare(tag: str, model, params, modality: str, x: np.ndarray, config=CFG) -> float:
    with torch.no_grad():
        ref = model({modality: torch.from_numpy(x)})[modality].numpy()
    ours = np.asarray(ib.embed(params, config, modality, x))
    assert ours.shape == ref.shape == (x.shape[0], config.out_embed_dim) and ours.dtype == np.float32
    diff = float(np.max(np.abs(ours - ref)))
    MAX_DIFFS[tag] = diff
    return diff


def test_embeddings_match_reference(case):
    model, _, params = case
    for tag, x in _inputs().items():
        diff = _compare(tag, model, params, MODALITY.get(tag, "text"), x)
        assert diff <= TOL, f"{tag}: max |diff| {diff}"
    print("max |diff| vs torch:", {k: f"{v:.2e}" for k, v in MAX_DIFFS.items()})


def test_clip_mean_and_scales(case):
    """Clips are averaged after the postprocessor: video = mean of unit vectors; audio = mean of 20 × unit."""
    _, _, params = case
    x = _inputs()
    video = np.asarray(ib.embed(params, CFG, "vision", x["video"]))
    per_clip = [np.asarray(ib.embed(params, CFG, "vision", x["video"][:, s : s + 1])) for s in range(2)]
    np.testing.assert_allclose(video, np.mean(per_clip, axis=0), atol=1e-6)
    image = np.asarray(ib.embed(params, CFG, "vision", x["image"]))
    np.testing.assert_allclose(np.linalg.norm(image, axis=-1), 1.0, atol=1e-5)
    audio = np.asarray(ib.embed(params, CFG, "audio", x["audio1"]))
    np.testing.assert_allclose(np.linalg.norm(audio, axis=-1), 20.0, atol=1e-4)
    # a still image is the 2-frame clip of itself repeated
    still = np.repeat(x["image"][:, None, :, None], 2, axis=3)  # (B, 1 clip, 3, 2, H, W)
    np.testing.assert_allclose(np.asarray(ib.embed(params, CFG, "vision", still)), image, atol=1e-5)


def test_layer_scale_matches_reference(tmp_path):
    model = _reference(layer_scale=True)
    config = CFG.replace(vision=dataclasses.replace(CFG.vision, layer_scale_type="per_channel"), audio=None, text=None)
    sd = {k: v for k, v in model.state_dict().items() if ".vision." in k}
    params = cib.load_imagebind(sd, config)
    diff = _compare("image (layer scale)", model, params, "vision", _inputs()["image"], config)
    assert diff <= TOL


def test_export_round_trip(case, tmp_path):
    model, _, params = case
    ref_state = model.state_dict()
    for name in ("out.safetensors", "out.pth"):
        cib.save_imagebind(CFG, params, tmp_path / name)
        state = cib.read_state(tmp_path / name)
        assert set(state) == set(ref_state)
        for k, v in ref_state.items():
            got = np.asarray(state[k])  # 0-d scalars (log_logit_scale) stay 0-d in both formats
            np.testing.assert_array_equal(got, v.numpy(), err_msg=k)
            assert got.shape == v.shape and got.dtype == v.numpy().dtype, k
        fresh = _reference()
        if name.endswith(".pth"):  # torch's own strict load of our export
            fresh.load_state_dict(torch.load(tmp_path / name, weights_only=True), strict=True)
        else:
            from safetensors.torch import load_file

            fresh.load_state_dict(load_file(tmp_path / name), strict=True)
        reloaded = cib.load_imagebind(tmp_path / name, CFG)
        assert jax.tree.all(jax.tree.map(np.array_equal, reloaded, params))


def test_wrong_shape_and_missing(case, tmp_path):
    model, _, _ = case
    sd = dict(model.state_dict())
    bad = "modality_trunks.audio.blocks.1.attn.in_proj_weight"
    sd[bad] = torch.zeros(3 * 32, 16)
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.1\.attn\.in_proj_weight.*\(96, 16\).*\(96, 32\)"):
        cib.load_imagebind({k: v.numpy() for k, v in sd.items()}, CFG)
    sd = {k: v.numpy() for k, v in model.state_dict().items() if k != "modality_heads.vision.2.weight"}
    with pytest.raises(CheckpointMismatchError, match=r"missing 1: \['modality_heads\.vision\.2\.weight'\]"):
        cib.load_imagebind(sd, CFG)
    with pytest.raises(ValueError, match="patches"):
        params = cib.load_imagebind({k: v.numpy() for k, v in model.state_dict().items()}, CFG)
        ib.embed(params, CFG, "vision", np.zeros((1, 3, 42, 42), np.float32))


def test_subset_of_modalities(case, caplog):
    """A vision-only config reads a file holding every tower, and logs what it skipped."""
    model, path, params = case
    config = CFG.replace(audio=None, text=None)
    with caplog.at_level(logging.DEBUG, logger=cib.__name__):
        vision_only = cib.load_imagebind(path, config)
    assert set(vision_only) == {"vision"} and "['audio', 'text']" in caplog.text
    x = _inputs()["image"]
    np.testing.assert_array_equal(
        np.asarray(ib.embed(vision_only, config, "vision", x)), np.asarray(ib.embed(params, CFG, "vision", x))
    )
    with pytest.raises(ValueError, match="not in this ImageBind config"):
        ib.embed(vision_only, config, "audio", _inputs()["audio1"])


def test_huge_name_shape_map():
    """imagebind_huge: the converter's names/shapes equal the Flax init's tree (jax.eval_shape, nothing allocated);
    per-modality tensor counts as in the official checkpoint."""
    config = ib.imagebind_huge(text=True)
    tensors = cib.imagebind_tensors(config)
    counts = cib.count_by_modality(config)
    # vision: cls, conv, pos + ln_pre (2) + 32 × 12 + head 3; audio: cls, conv, norm (2), pos + 12 × 14 (bias_k/v)
    # + head 3 + log_logit_scale; text: token emb, pos, mask + 24 × 12 + head 3 + log_logit_scale
    assert counts == {"vision": 3 + 2 + 32 * 12 + 3, "audio": 5 + 12 * 14 + 4, "text": 3 + 24 * 12 + 4}
    by_name = {t.name: t for t in tensors}
    assert by_name["modality_preprocessors.vision.rgbt_stem.proj.1.weight"].torch_shape == (1280, 3, 2, 14, 14)
    assert by_name["modality_preprocessors.vision.pos_embedding_helper.pos_embed"].torch_shape == (1, 257, 1280)
    assert by_name["modality_preprocessors.audio.rgbt_stem.proj.weight"].torch_shape == (768, 1, 16, 16)
    assert by_name["modality_preprocessors.audio.pos_embedding_helper.pos_embed"].torch_shape == (1, 229, 768)
    assert by_name["modality_trunks.vision.blocks.31.attn.in_proj_weight"].torch_shape == (3840, 1280)
    assert by_name["modality_trunks.audio.blocks.11.attn.bias_k"].torch_shape == (1, 1, 768)
    assert by_name["modality_heads.vision.2.weight"].torch_shape == (1024, 1280)
    assert by_name["modality_heads.text.proj.1.weight"].torch_shape == (1024, 1024)
    assert by_name["modality_postprocessors.audio.1.log_logit_scale"].torch_shape == ()

    shapes = jax.eval_shape(lambda: nn.meta.unbox(ib.init_params(config)))
    flat = {tuple(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    mapped = {t.flax_path: t.flax_shape for t in tensors if t.kind != "buffer"}
    assert mapped == flat
