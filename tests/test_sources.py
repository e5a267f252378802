"""Dataset readers (spider_jax/sources.py) over the committed offline sample set data/samples/.

The sample set is real files in the real formats (PNG, MPEG-4, WAV, COCO JSON); corrupt copies in tmp_path check
that bad rows are reported with their file and row, or skipped and counted.
"""

import dataclasses
import importlib.util
import json
import os
import shutil
import wave
from collections.abc import Callable

import av
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from spider_jax import sources, tmm
from spider_jax import template as tpl

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SAMPLES = os.path.join(ROOT, "data", "samples")
COUNT = 12  # the script's default --count, used for the committed set
ANNOTATIONS = (
    "cc3m/captions.tsv",
    "webvid/results.csv",
    "audiocaps/train.csv",
    "coco/annotations/captions.json",
    "coco/annotations/instances.json",
    "travel_guides.json",
)


def _load_script():
    spec = importlib.util.spec_from_file_location("make_samples", os.path.join(ROOT, "data", "make_samples.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_samples = _load_script()


def _s(*parts: str) -> str:
    return os.path.join(SAMPLES, *parts)


def _instances_json() -> dict:
    with open(_s("coco", "annotations", "instances.json")) as f:
        return json.load(f)


def _decode(mask: dict) -> np.ndarray:
    return mask_utils.decode({"size": mask["size"], "counts": mask["counts"].encode("ascii")})


# ------------------------------------------------------------------------------------ clean sample set


def test_cc3m_tsv_reads_every_caption_and_image():
    result = sources.read_caption_table(_s("cc3m", "captions.tsv"), "IMAGE")
    assert result.bad_records == []
    assert [s.text for s in result.samples] == make_samples.make_captions(COUNT, make_samples.SEEDS["cc3m"])
    first = result.samples[0]
    assert first.media == (("IMAGE", _s("cc3m", "images", "00000.png")),)
    assert first.sample_id == "captions:2"  # line 1 is the header
    assert all(os.path.isfile(p) for s in result.samples for _, p in s.media)


def test_caption_table_jsonl(tmp_path):
    lines = [
        json.dumps({"caption": "a red square", "image": "images/00000.png"}),
        "",
        json.dumps({"caption": "a blue square", "path": "images/00001.png"}),
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = sources.read_caption_table(path, "IMAGE", media_root=_s("cc3m"))
    assert [(s.text, s.sample_id) for s in result.samples] == [
        ("a red square", "pairs:1"),
        ("a blue square", "pairs:3"),
    ]
    assert result.samples[1].media == (("IMAGE", _s("cc3m", "images", "00001.png")),)


def test_webvid_csv_resolves_page_dir_clips():
    result = sources.read_webvid_csv(_s("webvid", "results.csv"), _s("webvid", "videos"))
    assert len(result.samples) == COUNT and result.bad_records == []
    assert [s.text for s in result.samples] == make_samples.make_captions(COUNT, make_samples.SEEDS["webvid"])
    first = result.samples[0]
    assert first.sample_id == "webvid:1000000"
    assert first.media == (("VIDEO", _s("webvid", "videos", "001_050", "1000000.mp4")),)
    with av.open(first.media[0][1]) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (32, 32, 3)


def test_audiocaps_csv_finds_wavs_with_the_row_pitch():
    result = sources.read_audiocaps_csv(_s("audiocaps", "train.csv"), _s("audiocaps", "audio"))
    assert len(result.samples) == COUNT and result.bad_records == []
    assert [s.text for s in result.samples] == make_samples.make_captions(COUNT, make_samples.SEEDS["audiocaps"])
    assert result.samples[0].sample_id == "audiocaps:100"
    for row in (0, 5):
        with wave.open(result.samples[row].media[0][1], "rb") as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 16000)
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
        peak_hz = int(np.argmax(np.abs(np.fft.rfft(pcm))))  # 1 s of audio: bin k is k Hz
        assert abs(peak_hz - 220.0 * 2 ** (row / 12)) <= 1


def test_coco_captions_one_sample_per_caption():
    result = sources.read_coco_captions(_s("coco", "annotations", "captions.json"), _s("coco", "images"))
    assert [s.text for s in result.samples] == make_samples.make_captions(COUNT, make_samples.SEEDS["coco"])
    assert result.samples[0].media == (("IMAGE", _s("coco", "images", "000000000001.png")),)
    assert result.samples[0].sample_id == "coco-cap:1"
    assert len({p for s in result.samples for _, p in s.media}) == max(2, COUNT // 3)


def test_coco_instances_boxes_and_masks():
    data = _instances_json()
    segs = [a["segmentation"] for a in data["annotations"]]
    assert any(isinstance(s, list) for s in segs)
    assert any(isinstance(s, dict) and isinstance(s["counts"], list) for s in segs)
    assert any(isinstance(s, dict) and isinstance(s["counts"], str) for s in segs)

    result = sources.read_coco_instances(_s("coco", "annotations", "instances.json"), _s("coco", "images"))
    assert len(result.samples) == len(data["annotations"]) and result.bad_records == []
    first = result.samples[0]
    assert (first.sample_id, first.text) == ("coco:1", "the person")
    assert first.box == pytest.approx((0.125, 0.125, 0.5, 0.5))  # bbox [8, 6, 24, 18] on a 64x48 image
    assert first.media == (("IMAGE", _s("coco", "images", "000000000001.png")),)
    ys, xs = np.nonzero(_decode(first.mask))
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (6, 23, 8, 31)

    for sample, ann in zip(result.samples, data["annotations"], strict=True):
        x, y, w, h = ann["bbox"]
        assert sample.box == pytest.approx((x / 64, y / 48, (x + w) / 64, (y + h) / 48))
        decoded = _decode(sample.mask)
        assert decoded.shape == (48, 64) and sample.mask["size"] == [48, 64]
        assert decoded.sum() == pytest.approx(w * h, rel=0.05)
        assert decoded.sum() == pytest.approx(ann["area"], rel=0.05)
        json.dumps(dataclasses.asdict(sample))  # counts is an ASCII str, so samples serialise


def test_coco_instances_min_area_fraction_filters_small_objects():
    areas = [a["area"] for a in _instances_json()["annotations"]]
    result = sources.read_coco_instances(
        _s("coco", "annotations", "instances.json"), _s("coco", "images"), min_area_fraction=150 / (64 * 48)
    )
    assert len(result.samples) == sum(a >= 150 for a in areas) < len(areas)
    assert result.bad_records == []


def test_travel_guides_feed_the_tgi_builder():
    result = sources.read_travel_guides(_s("travel_guides.json"))
    assert [s.text for s in result.samples] == ["Beijing", "Paris", "Kyoto"]
    parsed = tpl.parse_answer(f"[OUT] {result.samples[0].guide} [END]")
    assert parsed.modalities == ["IMAGE", "AUDIO", "VIDEO"] and parsed.groups[0].t_prompt == "Forbidden City"
    pool = tmm.load_pools()["tgi"]
    for i, record in enumerate(result.samples):
        inst = tmm.build_travel_guide(pool, record, np.random.default_rng(i))
        assert inst.targets and tpl.parse_answer(inst.answer).modalities == list(inst.targets)


def test_compressed_rle_decoder_matches_pycocotools():
    rng = np.random.default_rng(0)
    for h, w in ((1, 1), (7, 5), (48, 64), (31, 97)):
        mask = np.asfortranarray((rng.random((h, w)) < rng.random()).astype(np.uint8))
        counts = mask_utils.encode(mask)["counts"].decode("ascii")
        assert sources._compressed_rle_total(counts) == h * w


# --------------------------------------------------------------------------------- corrupt copies


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    annotation: str  # path under data/samples
    read: Callable[[str, bool], sources.SourceResult]
    corrupt: Callable[[str], str]  # annotation text -> corrupt text
    unit: str
    row: int


def _edit_line(number: int, edit: Callable[[str], str]) -> Callable[[str], str]:
    def corrupt(text: str) -> str:
        lines = text.split("\n")
        lines[number - 1] = edit(lines[number - 1])
        return "\n".join(lines)

    return corrupt


def _edit_json(edit: Callable[[object], None]) -> Callable[[str], str]:
    def corrupt(text: str) -> str:
        data = json.loads(text)
        edit(data)
        return json.dumps(data)

    return corrupt


def _set(data: dict, index: int, key: str, value: object) -> None:
    data["annotations"][index][key] = value


CASES = [
    Case(
        "tsv",
        "cc3m/captions.tsv",
        lambda p, skip: sources.read_caption_table(p, "IMAGE", _s("cc3m"), skip_bad_records=skip),
        _edit_line(3, lambda line: "no tab on this line"),
        "line",
        3,
    ),
    Case(
        "webvid",
        "webvid/results.csv",
        lambda p, skip: sources.read_webvid_csv(p, _s("webvid", "videos"), skip_bad_records=skip),
        _edit_line(4, lambda line: line.rsplit(",", 1)[0]),
        "line",
        4,
    ),
    Case(
        "audiocaps",
        "audiocaps/train.csv",
        lambda p, skip: sources.read_audiocaps_csv(p, _s("audiocaps", "audio"), skip_bad_records=skip),
        _edit_line(2, lambda line: line.rsplit(",", 1)[0] + ","),
        "line",
        2,
    ),
    Case(
        "coco_captions",
        "coco/annotations/captions.json",
        lambda p, skip: sources.read_coco_captions(p, _s("coco", "images"), skip_bad_records=skip),
        _edit_json(lambda d: _set(d, 2, "image_id", 999999)),
        "annotation",
        2,
    ),
    Case(
        "coco_instances_bbox",
        "coco/annotations/instances.json",
        lambda p, skip: sources.read_coco_instances(p, _s("coco", "images"), skip_bad_records=skip),
        _edit_json(lambda d: _set(d, 1, "bbox", [1, 2, 3])),
        "annotation",
        1,
    ),
    Case(
        "coco_instances_rle_sum",
        "coco/annotations/instances.json",
        lambda p, skip: sources.read_coco_instances(p, _s("coco", "images"), skip_bad_records=skip),
        _edit_json(lambda d: d["annotations"][2]["segmentation"]["counts"].append(5)),
        "annotation",
        2,
    ),
    Case(
        "coco_instances_rle_string",
        "coco/annotations/instances.json",
        lambda p, skip: sources.read_coco_instances(p, _s("coco", "images"), skip_bad_records=skip),
        _edit_json(lambda d: d["annotations"][3]["segmentation"].update(counts="Z9Z9Z9")),
        "annotation",
        3,
    ),
    Case(
        "travel_guides",
        "travel_guides.json",
        lambda p, skip: sources.read_travel_guides(p, skip_bad_records=skip),
        _edit_json(lambda d: d[1].update(guide="see <IMAGE> the Louvre </VIDEO>")),
        "entry",
        1,
    ),
]


def _corrupt_copy(case: Case, tmp_path) -> tuple[str, int]:
    """Writes the corrupt annotation file; returns its path and the record count of the clean file."""
    with open(_s(case.annotation), encoding="utf-8") as f:
        text = f.read()
    path = tmp_path / os.path.basename(case.annotation)
    path.write_text(case.corrupt(text), encoding="utf-8")
    return str(path), len(case.read(_s(case.annotation), False).samples)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_record_raises_naming_file_and_row(case, tmp_path):
    path, _ = _corrupt_copy(case, tmp_path)
    with pytest.raises(sources.SourceError) as err:
        case.read(path, False)
    assert str(err.value).startswith(f"{path}: {case.unit} {case.row}: ")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_skip_bad_records_skips_and_counts(case, tmp_path, capsys):
    path, clean = _corrupt_copy(case, tmp_path)
    result = case.read(path, True)
    assert len(result.samples) == clean - 1
    assert [(b.file, b.row) for b in result.bad_records] == [(path, case.row)]
    assert result.bad_records[0].reason
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "skipped 1 bad record" in out[0]


def test_missing_media_file_is_reported(tmp_path):
    table = tmp_path / "captions.tsv"
    table.write_text("a cat\timages/00000.png\na dog\timages/missing.png\n")
    with pytest.raises(sources.SourceError, match=r"line 2: media file not found: .*missing\.png"):
        sources.read_caption_table(table, "IMAGE", media_root=_s("cc3m"))

    result = sources.read_webvid_csv(_s("webvid", "results.csv"), tmp_path, skip_bad_records=True)
    assert result.samples == [] and len(result.bad_records) == COUNT
    assert all(b.reason.startswith("media file not found") for b in result.bad_records)

    images = tmp_path / "images"
    shutil.copytree(_s("coco", "images"), images)
    os.remove(images / "000000000002.png")
    result = sources.read_coco_captions(_s("coco", "annotations", "captions.json"), images, skip_bad_records=True)
    n_images = max(2, COUNT // 3)
    assert len(result.bad_records) == sum(k % n_images == 1 for k in range(COUNT))
    assert len(result.samples) + len(result.bad_records) == COUNT


def test_box_is_clipped_to_the_image(tmp_path):
    data = _instances_json()
    data["annotations"] = data["annotations"][:1]
    data["annotations"][0]["bbox"] = [50, 40, 30, 20]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    (sample,) = sources.read_coco_instances(path, _s("coco", "images")).samples
    assert sample.box == pytest.approx((50 / 64, 40 / 48, 1.0, 1.0))


def test_wrong_csv_header_is_a_source_error(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("id,url,caption\n1,x,y\n")
    with pytest.raises(sources.SourceError, match=r"line 1: header .* lacks column"):
        sources.read_webvid_csv(path, tmp_path)


@pytest.mark.parametrize(
    "read",
    [
        lambda p: sources.read_caption_table(p.with_suffix(".tsv"), "IMAGE"),
        lambda p: sources.read_webvid_csv(p, SAMPLES),
        lambda p: sources.read_audiocaps_csv(p, SAMPLES),
        lambda p: sources.read_coco_captions(p, SAMPLES),
        lambda p: sources.read_coco_instances(p, SAMPLES),
        lambda p: sources.read_travel_guides(p),
    ],
    ids=["tsv", "webvid", "audiocaps", "coco_captions", "coco_instances", "travel_guides"],
)
def test_missing_annotation_file_names_it(read, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        read(tmp_path / "absent")


# ---------------------------------------------------------------------------------------- the script


def _tree(folder) -> dict[str, bytes]:
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.relpath(os.path.join(d, f), folder)] = fh.read()
    return out


def test_sample_script_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_samples.main(["--out", str(a), "--count", "5"])
    make_samples.main(["--out", str(b), "--count", "5"])
    tree_a, tree_b = _tree(a), _tree(b)
    assert set(tree_a) >= set(ANNOTATIONS)
    assert tree_a == tree_b
    assert len(sources.read_caption_table(a / "cc3m" / "captions.tsv", "IMAGE").samples) == 5


def test_committed_samples_are_up_to_date_and_small(tmp_path):
    make_samples.make_samples(str(tmp_path), COUNT)
    fresh = _tree(tmp_path)
    committed = _tree(SAMPLES)
    for name in ANNOTATIONS:
        assert committed[name] == fresh[name], f"{name} is stale: run python data/make_samples.py"
    assert set(committed) == set(fresh)
    assert sum(len(v) for v in committed.values()) < 1_000_000
