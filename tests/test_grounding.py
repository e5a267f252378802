"""Grounding heads (issue 8): JAX⇄torch bridge, GroundingDINO boxes, SAM masks, JSON/RLE/PNG outputs, errors.

The model folders are tiny *random* GroundingDINO / SAM checkpoints built offline once per module, so scores are
meaningless: tests use box_threshold=0 to get boxes out and check shapes, parity with transformers called directly,
and the output formats.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from pycocotools import mask as mask_utils

from spider_jax.grounding import bridge
from spider_jax.grounding.heads import (
    Detections,
    GroundingConfig,
    GroundingHeads,
    GroundingWeightsError,
    Masks,
    as_rgb_uint8,
    check_weights_folder,
    normalize_query,
)
from spider_jax.grounding.outputs import (
    detections_to_json,
    masks_to_json,
    masks_to_rle,
    rle_to_masks,
    save_json,
    save_overlay,
    write_overlay,
)
from spider_jax.grounding.tiny import make_tiny_grounding_folders, tiny_vocab

# ------------------------------------------------------------------------------------------ bridge


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.int32, jnp.uint8, jnp.bool_])
def test_bridge_round_trip_exact_and_zero_copy(dtype):
    x = (jnp.arange(24, dtype=jnp.float32).reshape(2, 3, 4) * 0.37 - 3).astype(dtype)
    t = bridge.to_torch(x)
    assert t.dtype == bridge.torch_dtype_of(x.dtype) and tuple(t.shape) == x.shape
    assert t.data_ptr() == x.unsafe_buffer_pointer()  # DLPack on CPU: same buffer
    np.testing.assert_array_equal(bridge.to_numpy(t), np.asarray(x))
    y = bridge.to_jax(t)
    assert y.dtype == x.dtype and y.unsafe_buffer_pointer() == t.data_ptr()
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


def test_bridge_copy_flag_and_device():
    x = jnp.ones((3,), jnp.float32)
    t = bridge.to_torch(x, copy=True)
    assert t.data_ptr() != x.unsafe_buffer_pointer()
    t += 1  # writable without touching the JAX buffer
    np.testing.assert_array_equal(np.asarray(x), 1.0)
    assert bridge.to_torch(x, device="cpu").device.type == "cpu"
    y = bridge.to_jax(torch.arange(4, dtype=torch.int32), device=jax.devices()[1])
    assert y.devices() == {jax.devices()[1]}


def test_bridge_numpy_inputs():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = bridge.to_torch(a)
    assert t.data_ptr() == a.ctypes.data  # from_numpy shares memory
    b = a.astype(ml_dtypes.bfloat16)
    tb = bridge.to_torch(b)
    assert tb.dtype == torch.bfloat16
    np.testing.assert_array_equal(tb.float().numpy(), a)
    np.testing.assert_array_equal(bridge.to_numpy(tb), b)
    assert bridge.to_jax(b).dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(bridge.to_jax(np.array([True, False]))), [True, False])
    assert bridge.to_torch(np.float32(2.5)).shape == ()


def test_bridge_non_contiguous():
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    for t in (base.t(), base[:, ::3], base[1:5, 2:7].t()):
        assert not t.is_contiguous()
        np.testing.assert_array_equal(np.asarray(bridge.to_jax(t)), t.numpy())
    a = np.arange(48, dtype=np.int32).reshape(6, 8)[::-2, 1::3]
    np.testing.assert_array_equal(bridge.to_torch(a).numpy(), a)
    grad = torch.ones(3, requires_grad=True) * 2
    np.testing.assert_array_equal(np.asarray(bridge.to_jax(grad)), 2.0)


@pytest.mark.filterwarnings("ignore:ComplexHalf")
def test_bridge_unsupported_dtypes():
    with pytest.raises(bridge.UnsupportedDtypeError, match="supported dtypes"):
        bridge.to_jax(torch.zeros(2, dtype=torch.complex32))
    with pytest.raises(bridge.UnsupportedDtypeError):
        bridge.to_torch(np.array(["a", "b"]))
    with pytest.raises(bridge.UnsupportedDtypeError):
        bridge.to_torch(np.array([object()]))
    with pytest.raises(TypeError):
        bridge.to_torch([1, 2, 3])
    with pytest.raises(TypeError, match="traced"):
        jax.jit(lambda v: bridge.to_torch(v).sum())(jnp.ones(2))


def test_bridge_sharded_and_tree():
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("d",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    sharded = jax.device_put(jnp.arange(32.0).reshape(8, 4), spec)
    assert len(sharded.sharding.device_set) == len(jax.devices())
    np.testing.assert_array_equal(bridge.to_torch(sharded).numpy(), np.arange(32.0).reshape(8, 4))
    tree = {
        "pixels": jnp.ones((2, 4, 4, 3), jnp.bfloat16),
        "ids": [np.arange(6, dtype=np.int32).reshape(2, 3), jnp.zeros((2,), bool)],
        "name": "batch",
        "n": 2,
    }
    as_torch = bridge.tree_to_torch(tree)
    assert isinstance(as_torch["pixels"], torch.Tensor) and as_torch["pixels"].dtype == torch.bfloat16
    assert as_torch["name"] == "batch" and as_torch["n"] == 2
    back = bridge.tree_to_jax(as_torch)
    assert back["pixels"].dtype == jnp.bfloat16 and back["ids"][0].dtype == jnp.int32
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(back), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return tuple(Path(f) for f in make_tiny_grounding_folders(tmp_path_factory.mktemp("grounding")))


@pytest.fixture(scope="module")
def heads(folders):
    import ml_collections  # the generation config hands a ConfigDict

    cfg = dict(dino=str(folders[0]), sam=str(folders[1]), box_threshold=0.0, text_threshold=0.0)
    return GroundingHeads.from_config(ml_collections.ConfigDict(cfg))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    second = PIL.Image.fromarray(rng.integers(0, 256, (90, 40, 3), dtype=np.uint8))  # PIL input too
    return [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), second]


QUERIES = ["A cat on the left", "a small red ball. a dog"]


def _clean(label: str) -> str:
    return " ".join(w for w in label.split() if w not in ("[CLS]", "[SEP]", "[PAD]")).strip(" .")


# ------------------------------------------------------------------------------------------ heads


def test_tiny_folders_idempotent_and_bert_ids(folders, tmp_path_factory):
    weights = folders[0] / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert make_tiny_grounding_folders(folders[0].parent) == tuple(str(f) for f in folders)
    assert weights.stat().st_mtime_ns == stamp
    vocab = tiny_vocab()  # GroundingDINO hard-codes bert-base-uncased delimiter ids
    assert [vocab[i] for i in (0, 101, 102, 1012, 1029)] == ["[PAD]", "[CLS]", "[SEP]", ".", "?"]
    for f in folders:
        assert check_weights_folder(f, "dino" if f == folders[0] else "sam") == f


def test_normalize_query_and_images():
    assert normalize_query("  A Cat  sitting on [0.1, 0.2, 0.5, 0.6] the MAT. ") == "a cat sitting on the mat."
    assert normalize_query(["Cat", "a dog."]) == "cat. a dog."
    with pytest.raises(ValueError):
        normalize_query(" . ")
    grey = np.zeros((5, 6), np.uint8)
    assert as_rgb_uint8(grey).shape == (5, 6, 3)
    assert as_rgb_uint8(np.ones((5, 6, 4), np.uint8)).shape == (5, 6, 3)
    assert as_rgb_uint8(np.full((2, 2, 3), 1.0, np.float32)).max() == 255
    assert as_rgb_uint8(jnp.full((2, 2, 3), 0.5, jnp.bfloat16)).tolist() == [[[128] * 3] * 2] * 2


def test_config_from_dict():
    import ml_collections

    cfg = GroundingConfig.from_dict(ml_collections.ConfigDict(dict(dino="d", box_threshold=1, max_boxes=3)))
    assert cfg.box_threshold == 1.0 and isinstance(cfg.box_threshold, float) and cfg.max_boxes == 3
    assert (cfg.text_threshold, cfg.multimask_output, cfg.mask_threshold) == (0.25, False, 0.0)
    with pytest.raises(ValueError, match="unknown"):
        GroundingConfig.from_dict({"box_treshold": 0.3})
    with pytest.raises(ValueError):
        GroundingConfig(dtype="int8")


def test_ground_shapes(heads, images):
    dets = heads.ground(images, QUERIES)
    assert len(dets) == 2
    for det, size, query in zip(dets, [(50, 70), (90, 40)], QUERIES, strict=True):
        assert isinstance(det, Detections) and det.image_size == size and det.query == normalize_query(query)
        n = len(det)
        assert 0 < n <= heads.config.max_boxes
        assert det.boxes_xyxy.shape == det.boxes_norm.shape == (n, 4) and det.boxes_xyxy.dtype == np.float32
        assert det.scores.shape == (n,) and np.all(np.diff(det.scores) <= 0)
        assert len(det.labels) == n and all(isinstance(lab, str) for lab in det.labels)
        h, w = size
        np.testing.assert_allclose(det.boxes_norm, det.boxes_xyxy / np.array([w, h, w, h]), rtol=1e-6)
        assert det.boxes_norm.min() >= 0 and det.boxes_norm.max() <= 1
    assert len(heads.ground(images, "cat", max_boxes=3)[0]) == 3


def test_ground_thresholds_filter(heads, images):
    scores = np.unique(heads.ground(images, QUERIES)[0].scores)
    assert len(scores) > 1
    mid = float(scores[0] + scores[-1]) / 2  # strictly between the lowest and highest score
    kept = heads.ground(images, QUERIES, box_threshold=mid)[0]
    assert 0 < len(kept) < len(scores) and np.all(kept.scores > mid)
    assert len(kept) == int((scores > np.float32(mid)).sum())
    empty = heads.ground(images, QUERIES, box_threshold=1.01)
    assert [len(d) for d in empty] == [0, 0]
    assert empty[0].boxes_xyxy.shape == (0, 4) and empty[1].image_size == (90, 40)
    masks = heads.segment(images, empty)
    assert masks[0].masks.shape == (0, 50, 70) and masks[1].masks.shape == (0, 90, 40)
    assert detections_to_json(empty[0], 0, masks[0])["annotations"] == []


def test_ground_matches_transformers(folders, heads, images):
    processor = transformers.AutoProcessor.from_pretrained(folders[0], local_files_only=True)
    model = transformers.GroundingDinoForObjectDetection.from_pretrained(folders[0], local_files_only=True).eval()
    pils = [im if isinstance(im, PIL.Image.Image) else PIL.Image.fromarray(im) for im in images]
    texts = [q.lower() + "." for q in QUERIES]
    inputs = processor(images=pils, text=texts, return_tensors="pt", padding="longest")
    with torch.no_grad():
        outputs = model(**inputs)
    sizes = [(p.height, p.width) for p in pils]
    ref = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=0.3, text_threshold=0.2, target_sizes=sizes
    )
    ours = heads.ground(images, QUERIES, box_threshold=0.3, text_threshold=0.2, max_boxes=0)
    for r, det, (h, w) in zip(ref, ours, sizes, strict=True):
        order = torch.argsort(r["scores"], descending=True, stable=True)
        boxes = np.clip(r["boxes"][order].numpy(), 0, [w, h, w, h]).astype(np.float32)
        np.testing.assert_array_equal(det.boxes_xyxy, boxes)
        np.testing.assert_array_equal(det.scores, r["scores"][order].numpy())
        assert det.labels == tuple(_clean(r["text_labels"][i]) for i in order.tolist())


def test_segment_given_boxes(folders, heads, images):
    boxes = [np.array([[2, 3, 40, 30], [10, 5, 69, 49]], np.float32), np.array([[0, 0, 39, 89]], np.float32)]
    out = heads.segment(images, boxes)
    for m, b, size in zip(out, boxes, [(50, 70), (90, 40)], strict=True):
        assert isinstance(m, Masks) and m.image_size == size
        assert m.masks.shape == (len(b), *size) and m.masks.dtype == bool
        assert m.scores.shape == (len(b),) and np.array_equal(m.boxes_xyxy, b)
    norm = [b / np.array([w, h, w, h], np.float32) for b, (h, w) in zip(boxes, [(50, 70), (90, 40)], strict=True)]
    again = heads.segment(images, norm, normalized=True)
    for a, m in zip(again, out, strict=True):
        np.testing.assert_array_equal(a.masks, m.masks)
    # Same masks as SamModel + SamProcessor called directly.
    processor = transformers.AutoProcessor.from_pretrained(folders[1], local_files_only=True)
    model = transformers.SamModel.from_pretrained(folders[1], local_files_only=True).eval()
    inputs = processor(images=PIL.Image.fromarray(images[0]), input_boxes=[boxes[0].tolist()], return_tensors="pt")
    with torch.no_grad():
        pred = model(**inputs, multimask_output=False)
    ref = processor.post_process_masks(pred.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    np.testing.assert_array_equal(out[0].masks, ref[0][:, 0].numpy())
    # The processor emits float64 box prompts; the head hands the model float32 (its dtype), hence atol.
    np.testing.assert_allclose(out[0].scores, pred.iou_scores[0, :, 0].numpy(), rtol=0, atol=1e-6)


def test_ground_and_segment_multimask_and_bf16(folders, images):
    cfg = GroundingConfig.from_dict(
        dict(dino=str(folders[0]), sam=str(folders[1]), box_threshold=0.0, max_boxes=4, multimask_output=True)
    )
    for dtype in ("float32", "bfloat16"):
        heads = GroundingHeads(GroundingConfig.from_dict(dataclasses.asdict(cfg), dtype=dtype))
        results = heads.ground_and_segment(images, QUERIES)
        for det, m in results:
            assert len(det) == len(m) == 4
            assert m.masks.shape == (4, *det.image_size) and m.masks.dtype == bool
            np.testing.assert_array_equal(m.boxes_xyxy, det.boxes_xyxy)


# ------------------------------------------------------------------------------------------ outputs


def test_json_rle_and_overlay(heads, images, tmp_path):
    (det, masks), _ = heads.ground_and_segment(images, QUERIES, max_boxes=3)
    doc = detections_to_json(det, image_id=7, masks=masks)
    path = save_json({"results": [doc]}, tmp_path / "out" / "boxes.json")
    loaded = json.loads(path.read_text())["results"][0]
    assert loaded == json.loads(json.dumps(doc))
    h, w = det.image_size
    assert loaded["image"] == {"id": 7, "height": h, "width": w} and loaded["dino_text"] == det.query
    assert len(loaded["annotations"]) == len(det) == 3
    for i, ann in enumerate(loaded["annotations"]):
        x1, y1, x2, y2 = ann["bbox_xyxy"]
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        np.testing.assert_allclose(ann["bbox_xyxy_norm"], [x1 / w, y1 / h, x2 / w, y2 / h], rtol=1e-6)
        np.testing.assert_allclose(ann["bbox"], [x1, y1, x2 - x1, y2 - y1], rtol=1e-6)
        assert ann["label"] == det.labels[i] and ann["score"] == pytest.approx(float(det.scores[i]))
        decoded = mask_utils.decode({"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"]})
        np.testing.assert_array_equal(decoded.astype(bool), masks.masks[i])
        assert ann["mask_area"] == int(masks.masks[i].sum())
    segm = json.loads(json.dumps(masks_to_json(masks, image_id=7, labels=det.labels)))
    np.testing.assert_array_equal(rle_to_masks([a["segmentation"] for a in segm["annotations"]]), masks.masks)

    png = save_overlay(tmp_path / "overlay.png", images[0], det, masks)
    with PIL.Image.open(png) as im:
        assert im.format == "PNG" and im.size == (w, h) and im.mode == "RGB"
        assert not np.array_equal(np.asarray(im), images[0])
    with PIL.Image.open(write_overlay(images[1], tmp_path / "plain.png")) as im:
        assert im.size == (40, 90)


def test_rle_round_trip():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 17, 23)) > 0.6
    masks[1] = False
    rles = masks_to_rle(masks)
    assert all(isinstance(r["counts"], str) and r["size"] == [17, 23] for r in rles)
    json.dumps(rles)
    np.testing.assert_array_equal(rle_to_masks(rles), masks)
    areas = mask_utils.area([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    np.testing.assert_array_equal(areas, masks.sum(axis=(1, 2)))
    assert masks_to_rle(np.zeros((0, 4, 5), bool)) == []
    assert rle_to_masks([], image_size=(4, 5)).shape == (0, 4, 5)


# ------------------------------------------------------------------------------------------ errors


def test_missing_weights_errors(folders, tmp_path, images):
    missing = tmp_path / "nowhere"
    with pytest.raises(GroundingWeightsError) as err:
        GroundingHeads(GroundingConfig(dino=str(missing))).ground(images, "cat")
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(missing) in msg and "IDEA-Research/grounding-dino-tiny" in msg and "does not exist" in msg

    no_weights = tmp_path / "config-only"
    no_weights.mkdir()
    shutil.copy(folders[1] / "config.json", no_weights / "config.json")
    with pytest.raises(GroundingWeightsError, match="model.safetensors") as err:
        GroundingHeads(GroundingConfig(sam=str(no_weights))).segment(images, [[[0, 0, 5, 5]], [[0, 0, 5, 5]]])
    assert str(no_weights) in str(err.value) and "facebook/sam-vit-base" in str(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GroundingWeightsError, match="config.json") as err:
        GroundingHeads(GroundingConfig(dino=str(empty))).ground_and_segment(images, "cat")
    msg = str(err.value)  # one error naming both missing folders
    assert str(empty) in msg and "grounding.sam" in msg and "facebook/sam-vit-base" in msg
