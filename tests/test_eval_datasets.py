"""Benchmark readers on tiny files written in each official layout, plus the missing / malformed cases."""

import json
import os

import pytest

from spider_jax import eval_datasets as ed
from spider_jax.eval_datasets import DatasetError


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _json(path, data):
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------------------------------ COCO


COCO_OFFICIAL = {
    "images": [
        {"id": 42, "file_name": "COCO_val2014_000000000042.jpg"},
        {"id": 9, "file_name": "COCO_val2014_000000000009.jpg"},
        {"id": 73, "file_name": "COCO_val2014_000000000073.jpg"},  # no caption: not a sample
    ],
    "annotations": [
        {"image_id": 42, "id": 1, "caption": "A dog on a bed. "},
        {"image_id": 9, "id": 2, "caption": "A plate of food."},
        {"image_id": 42, "id": 3, "caption": "A brown dog sleeping."},
    ],
}


def test_coco_official_format(tmp_path):
    images = tmp_path / "val2014"
    for img in COCO_OFFICIAL["images"][:2]:
        _touch(images / img["file_name"])
    ann = _json(tmp_path / "captions_val2014.json", COCO_OFFICIAL)
    samples = ed.load_coco_captions(ann, images)
    assert [s.id for s in samples] == ["9", "42"]  # natural order of ids
    assert samples[1].references == ("A dog on a bed.", "A brown dog sleeping.")
    assert samples[1].media == (str(images / "COCO_val2014_000000000042.jpg"),)
    assert samples[1].extra["image_id"] == 42
    assert [s.id for s in ed.load_coco_captions(ann, images, limit=1)] == ["9"]
    assert ed.load_coco_captions(ann)[0].media == ()  # captions only


def test_coco_karpathy_format_and_missing_images(tmp_path):
    def image(cocoid, split):
        name = f"COCO_val2014_{cocoid:012d}.jpg"
        return {
            "filepath": "val2014",
            "filename": name,
            "cocoid": cocoid,
            "split": split,
            "sentences": [{"raw": f"caption {cocoid} a", "tokens": []}, {"raw": f"caption {cocoid} b", "tokens": []}],
        }

    ann = _json(tmp_path / "dataset_coco.json", {"images": [image(3, "test"), image(1, "test"), image(2, "train")]})
    _touch(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000001.jpg")
    with pytest.raises(DatasetError, match=r"1 media files not found:\n  .*COCO_val2014_000000000003.jpg"):
        ed.load_coco_captions(ann, tmp_path / "coco")
    with pytest.warns(UserWarning, match="skipped 1 samples"):
        samples = ed.load_coco_captions(ann, tmp_path / "coco", missing="skip")
    assert [(s.id, s.references) for s in samples] == [("1", ("caption 1 a", "caption 1 b"))]
    assert [s.id for s in ed.load_coco_captions(ann, tmp_path / "coco", missing="ignore")] == ["1", "3"]
    assert [s.id for s in ed.load_coco_captions(ann, split="train")] == ["2"]


def test_coco_errors(tmp_path):
    with pytest.raises(DatasetError, match="captions.json: file not found"):
        ed.load_coco_captions(tmp_path / "captions.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DatasetError, match="bad.json: not valid JSON"):
        ed.load_coco_captions(bad)
    _json(bad, {"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [{"image_id": 1}]})
    with pytest.raises(DatasetError, match=r"annotations\[0\] has no 'caption' field"):
        ed.load_coco_captions(bad)
    _json(bad, {"annotations": []})
    with pytest.raises(DatasetError, match="'images' list"):
        ed.load_coco_captions(bad)
    with pytest.raises(DatasetError, match="folder not found"):
        ed.load_coco_captions(_json(tmp_path / "ok.json", COCO_OFFICIAL), tmp_path / "nope")
    with pytest.raises(ValueError, match="missing='drop'"):
        ed.load_coco_captions(tmp_path / "ok.json", missing="drop")


# ------------------------------------------------------------------------------------------ AudioCaps


AUDIOCAPS_CSV = """audiocap_id,youtube_id,start_time,caption
103549,7fmOlUlwoNg,20,Constant rattling noise and sharp vibrations
103548,7fmOlUlwoNg,20,"A rattling, then vibrations"
97151,-0yB4FmYV9Y,30,A dog barks
103541,7fmOlUlwoNg,20,Rattling and a loud vibration
"""


def test_audiocaps_groups_captions_per_clip(tmp_path):
    csv_path = tmp_path / "test.csv"
    csv_path.write_text(AUDIOCAPS_CSV)
    audio = tmp_path / "audio"
    _touch(audio / "7fmOlUlwoNg_20.wav")
    _touch(audio / "-0yB4FmYV9Y_30.wav")
    samples = ed.load_audiocaps(csv_path, audio)
    assert [s.id for s in samples] == ["7fmOlUlwoNg_20", "-0yB4FmYV9Y_30"]  # natural order: digit runs first
    clip = samples[0]
    assert clip.references == (
        "Rattling and a loud vibration",
        "A rattling, then vibrations",
        "Constant rattling noise and sharp vibrations",
    )  # ordered by audiocap_id
    assert clip.extra["audiocap_ids"] == ("103541", "103548", "103549")
    assert clip.media == (str(audio / "7fmOlUlwoNg_20.wav"),)
    # one file per caption row, named by audiocap_id: the first row whose file exists is the clip's audio
    by_id = tmp_path / "by_id"
    _touch(by_id / "103548.wav")
    _touch(by_id / "97151.wav")
    samples = ed.load_audiocaps(csv_path, by_id, filename_pattern="{audiocap_id}.wav")
    assert [s.media for s in samples] == [(str(by_id / "103548.wav"),), (str(by_id / "97151.wav"),)]
    assert len(ed.load_audiocaps(csv_path)) == 2  # captions only, no audio check


def test_audiocaps_errors(tmp_path):
    csv_path = tmp_path / "test.csv"
    csv_path.write_text("audiocap_id,youtube_id,start\n1,abc,0\n")
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['start_time', 'caption'\]"):
        ed.load_audiocaps(csv_path)
    csv_path.write_text(AUDIOCAPS_CSV)
    (tmp_path / "audio").mkdir()
    with pytest.raises(DatasetError, match=r"2 media files not found:\n  .*7fmOlUlwoNg_20.wav\n  .*-0yB4FmYV9Y_30.wav"):
        ed.load_audiocaps(csv_path, tmp_path / "audio")
    with pytest.raises(ValueError, match="filename_pattern"):
        ed.load_audiocaps(csv_path, filename_pattern="{ytid}.wav")
    with pytest.raises(DatasetError, match="nothere.csv: file not found"):
        ed.load_audiocaps(tmp_path / "nothere.csv")


# ------------------------------------------------------------------------------------------ MSR-VTT


def test_msrvtt_test_split(tmp_path):
    data = {
        "info": {"year": 2016},
        "videos": [
            {"video_id": "video7010", "id": 7010, "split": "test", "category": 9},
            {"video_id": "video100", "id": 100, "split": "train", "category": 1},
            {"video_id": "video9000", "id": 9000, "split": "test", "category": 2},
        ],
        "sentences": [
            {"video_id": "video9000", "sen_id": 5, "caption": "a man is cooking"},
            {"video_id": "video7010", "sen_id": 3, "caption": "people dance"},
            {"video_id": "video7010", "sen_id": 1, "caption": "a group dances on stage"},
            {"video_id": "video100", "sen_id": 2, "caption": "a car drives"},
        ],
    }
    ann = _json(tmp_path / "test_videodatainfo.json", data)
    videos = tmp_path / "TestVideo"
    _touch(videos / "video7010.mp4")
    _touch(videos / "video9000.mp4")
    samples = ed.load_msrvtt(ann, videos)
    assert [s.id for s in samples] == ["video7010", "video9000"]
    assert samples[0].references == ("a group dances on stage", "people dance")  # by sen_id
    assert samples[0].media == (str(videos / "video7010.mp4"),) and samples[0].extra["category"] == 9
    assert [s.id for s in ed.load_msrvtt(ann, split=None)] == ["video100", "video7010", "video9000"]
    with pytest.raises(DatasetError, match="video100.mp4"):
        ed.load_msrvtt(ann, videos, split="train")
    _json(ann, {"videos": []})
    with pytest.raises(DatasetError, match="'videos' and 'sentences' lists"):
        ed.load_msrvtt(ann)


# ------------------------------------------------------------------------------------------ VCTK


def _vctk(root, layout):
    for spk, utt, text in [
        ("p226", "002", "Ask her to bring these things."),
        ("p225", "010", "Please call Stella."),
        ("p225", "002", " Some have accepted it\n as a miracle. "),
    ]:
        (root / "txt" / spk).mkdir(parents=True, exist_ok=True)
        (root / "txt" / spk / f"{spk}_{utt}.txt").write_text(text)
        if layout == "0.92":
            _touch(root / "wav48_silence_trimmed" / spk / f"{spk}_{utt}_mic1.flac")
        else:
            _touch(root / "wav48" / spk / f"{spk}_{utt}.wav")


@pytest.mark.parametrize("layout", ["0.92", "0.80"])
def test_vctk_layouts(tmp_path, layout):
    _vctk(tmp_path, layout)
    samples = ed.load_vctk(tmp_path)
    assert [s.id for s in samples] == ["p225_002", "p225_010", "p226_002"]
    assert samples[0].references == ("Some have accepted it as a miracle.",)
    expected = "wav48_silence_trimmed/p225/p225_002_mic1.flac" if layout == "0.92" else "wav48/p225/p225_002.wav"
    assert samples[0].media == (os.path.join(str(tmp_path), expected),)
    assert samples[0].extra == {"speaker": "p225", "utterance": "002", "mic": "mic1"}
    assert [s.id for s in ed.load_vctk(tmp_path, speakers=["p226"])] == ["p226_002"]


def test_vctk_errors(tmp_path):
    with pytest.raises(DatasetError, match="folder not found"):
        ed.load_vctk(tmp_path / "VCTK")
    (tmp_path / "txt").mkdir()
    with pytest.raises(DatasetError, match="no audio folder"):
        ed.load_vctk(tmp_path)
    _vctk(tmp_path, "0.92")
    with pytest.raises(DatasetError, match="p225_010_mic2.flac"):
        ed.load_vctk(tmp_path, mic="mic2")


# ------------------------------------------------------------------------------------------ DAVIS


def test_davis_sequences(tmp_path):
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("dog\nbike-packing\nmissing-seq\n")
    for seq, n in (("dog", 3), ("bike-packing", 2)):
        for i in range(n):
            _touch(tmp_path / "JPEGImages" / "480p" / seq / f"{i:05d}.jpg")
            _touch(tmp_path / "Annotations" / "480p" / seq / f"{i:05d}.png")
    with pytest.raises(DatasetError, match=r"missing-seq/\*\.jpg"):
        ed.load_davis(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1"):
        samples = ed.load_davis(tmp_path, missing="skip")
    assert [s.id for s in samples] == ["bike-packing", "dog"]
    dog = samples[1]
    assert [os.path.basename(p) for p in dog.media] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert len(dog.extra["annotations"]) == 3 and dog.extra["num_frames"] == 3
    assert [s.id for s in ed.load_davis(tmp_path, limit=1)] == ["bike-packing"]
    with pytest.raises(DatasetError, match=r"test-dev.txt: file not found \(expected the DAVIS 2017 test-dev"):
        ed.load_davis(tmp_path, split="test-dev")


def test_natural_key_orders_numbers():
    ids = ["video10", "video9", "p225_010", "p225_2", "video100"]
    assert sorted(ids, key=ed.natural_key) == ["p225_2", "p225_010", "video9", "video10", "video100"]
