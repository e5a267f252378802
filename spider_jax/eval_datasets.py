"""Readers for the benchmark test sets of the paper's tables, from local copies in their official layouts.

COCO captions (Tab. 1 I2T, Tab. 2 T2I, Tab. 3 I2I), AudioCaps (A2T, T2A), MSR-VTT (V2T, T2V), VCTK (A2A) and
DAVIS 2017 (V2V). Nothing is downloaded: these sets come under their own licences, so the user points at files
they obtained. Every reader returns :class:`EvalSample` records in a deterministic order (natural sort of the
id), honours ``limit``, and checks that the media it names exist — a benchmark silently run on the 4,000 clips
that happened to download instead of 5,000 gives a number nobody can compare — so by default missing media raise
(``missing="skip"`` warns and drops them, ``"ignore"`` does not look, e.g. when only captions are needed).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import re
import string
import warnings
from collections.abc import Callable, Iterable
from typing import Any

MISSING_POLICIES = ("raise", "skip", "ignore")
AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")


class DatasetError(ValueError):
    """A dataset file or folder is missing or malformed; the message names it and what was expected."""


@dataclasses.dataclass(frozen=True)
class EvalSample:
    """One test item: its id, media files (absolute paths), reference texts, and dataset-specific fields."""

    id: str
    media: tuple[str, ...]
    references: tuple[str, ...] = ()
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------------------ helpers


def natural_key(text: str) -> tuple:
    """Sort key where digit runs compare as numbers: video9 < video10, p225_2 < p225_10."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part)


def _require_file(path: str | os.PathLike, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file not found (expected {what})")
    return path


def _require_dir(path: str | os.PathLike, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: folder not found (expected {what})")
    return path


def _load_json(path: str, what: str) -> Any:
    _require_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e}); expected {what}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e}); expected {what}") from e


def _field(record: Any, key: str, path: str, where: str) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise DatasetError(f"{path}: {where} has no {key!r} field: {str(record)[:200]}")
    return record[key]


def _absent_files(sample: EvalSample) -> list[str]:
    return [p for p in sample.media if not os.path.isfile(p)]


def _finish(
    samples: Iterable[EvalSample],
    missing: str,
    limit: int | None,
    source: str,
    absent_of: Callable[[EvalSample], list[str]] = _absent_files,
    check: bool = True,
) -> list[EvalSample]:
    """Sorts, applies ``limit`` and the missing-media policy (checked over the samples that would be returned)."""
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing={missing!r}; choose from {MISSING_POLICIES}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    out: list[EvalSample] = []
    absent: list[str] = []
    skipped = 0
    for sample in sorted(samples, key=lambda s: natural_key(s.id)):
        if limit is not None and len(out) >= limit:
            break
        lost = absent_of(sample) if check and missing != "ignore" else []
        absent += lost
        if lost and missing == "skip":
            skipped += 1
            continue
        out.append(sample)
    if absent and missing == "raise":
        shown = "\n  ".join(absent[:10]) + (f"\n  … ({len(absent)} in all)" if len(absent) > 10 else "")
        raise DatasetError(f"{source}: {len(absent)} media files not found:\n  {shown}\n(missing='skip' drops them)")
    if skipped:
        warnings.warn(
            f"{source}: skipped {skipped} samples whose media are missing, e.g. {absent[:3]}", UserWarning, stacklevel=3
        )
    return out


# ------------------------------------------------------------------------------------------ COCO


def load_coco_captions(
    annotations: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    split: str = "test",
    limit: int | None = None,
    missing: str = "raise",
) -> list[EvalSample]:
    """COCO captions, one sample per image with all its captions as references.

    Reads the official ``captions_val2014.json`` (``images`` + ``annotations``; images at
    ``image_root/file_name``) or Karpathy's ``dataset_coco.json`` (``images`` with ``sentences`` and ``split``;
    images at ``image_root/filepath/filename``, only those of ``split``: test, val, train or restval). Without
    ``image_root`` samples carry no media (captions only).
    """
    path = os.fspath(annotations)
    data = _load_json(path, "COCO captions_*.json or Karpathy dataset_coco.json")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: expected a JSON object with an 'images' list (COCO or Karpathy format)")
    root = None if image_root is None else _require_dir(image_root, "the COCO image folder")
    karpathy = "annotations" not in data
    samples = []
    if karpathy:
        for i, img in enumerate(data["images"]):
            if _field(img, "split", path, f"images[{i}]") != split:
                continue
            sentences = _field(img, "sentences", path, f"images[{i}]")
            refs = tuple(_field(s, "raw", path, f"images[{i}].sentences") for s in sentences)
            image_id = img.get("cocoid", img.get("imgid"))
            name = _field(img, "filename", path, f"images[{i}]")
            rel = os.path.join(img.get("filepath", ""), name)
            media = () if root is None else (os.path.join(root, rel),)
            extra = {"image_id": image_id, "file_name": name, "split": split}
            samples.append(EvalSample(str(image_id), media, refs, extra))
    else:
        if not isinstance(data["annotations"], list):
            raise DatasetError(f"{path}: 'annotations' must be a list of {{image_id, caption}} entries")
        captions: dict[Any, list[str]] = {}
        for i, ann in enumerate(data["annotations"]):
            image_id = _field(ann, "image_id", path, f"annotations[{i}]")
            captions.setdefault(image_id, []).append(_field(ann, "caption", path, f"annotations[{i}]").strip())
        for i, img in enumerate(data["images"]):
            image_id = _field(img, "id", path, f"images[{i}]")
            name = _field(img, "file_name", path, f"images[{i}]")
            if image_id not in captions:
                continue  # an image without captions cannot be scored
            media = () if root is None else (os.path.join(root, name),)
            extra = {"image_id": image_id, "file_name": name}
            samples.append(EvalSample(str(image_id), media, tuple(captions[image_id]), extra))
    if not samples:
        raise DatasetError(f"{path}: no captioned images" + (f" in split {split!r}" if karpathy else ""))
    return _finish(samples, missing, limit, path, check=root is not None)


# ------------------------------------------------------------------------------------------ AudioCaps


def load_audiocaps(
    csv_path: str | os.PathLike,
    audio_dir: str | os.PathLike | None = None,
    *,
    filename_pattern: str = "{youtube_id}_{start_time}.wav",
    limit: int | None = None,
    missing: str = "raise",
) -> list[EvalSample]:
    """AudioCaps (``test.csv``: audiocap_id, youtube_id, start_time, caption), one sample per clip.

    A clip's captions (5 in the test split) are grouped by (youtube_id, start_time); its id is
    ``<youtube_id>_<start_time>``. ``filename_pattern`` names the audio under ``audio_dir`` with the fields
    ``{youtube_id}``, ``{start_time}``, ``{audiocap_id}``; with ``{audiocap_id}`` (one file per caption row) the
    first row's file that exists is used.
    """
    path = _require_file(csv_path, "the AudioCaps CSV (audiocap_id,youtube_id,start_time,caption)")
    fields = {f for _, f, _, _ in string.Formatter().parse(filename_pattern) if f is not None}
    if not fields or not fields <= {"youtube_id", "start_time", "audiocap_id"}:
        raise ValueError(
            f"filename_pattern {filename_pattern!r} may only use {{youtube_id}}, {{start_time}}, "
            "{audiocap_id}, and needs at least one"
        )
    root = None if audio_dir is None else _require_dir(audio_dir, "the AudioCaps audio folder")
    clips: dict[tuple[str, str], list[dict[str, str]]] = {}
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            lost = [c for c in AUDIOCAPS_COLUMNS if c not in columns]
            if lost:
                raise DatasetError(
                    f"{path}: missing column(s) {lost}; expected header {','.join(AUDIOCAPS_COLUMNS)}, found {columns}"
                )
            for row in reader:
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
                if not row["youtube_id"]:
                    raise DatasetError(f"{path}: line {reader.line_num} has an empty youtube_id")
                clips.setdefault((row["youtube_id"], row["start_time"]), []).append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot read as CSV ({e})") from e
    samples = []
    for (youtube_id, start), rows in clips.items():
        rows = sorted(rows, key=lambda r: natural_key(r["audiocap_id"]))
        media: tuple[str, ...] = ()
        if root is not None:
            candidates = list(dict.fromkeys(os.path.join(root, filename_pattern.format(**r)) for r in rows))
            media = (next((c for c in candidates if os.path.isfile(c)), candidates[0]),)
        extra = {"youtube_id": youtube_id, "start_time": start, "audiocap_ids": tuple(r["audiocap_id"] for r in rows)}
        samples.append(EvalSample(f"{youtube_id}_{start}", media, tuple(r["caption"] for r in rows), extra))
    return _finish(samples, missing, limit, path, check=root is not None)


# ------------------------------------------------------------------------------------------ MSR-VTT


def load_msrvtt(
    annotations: str | os.PathLike,
    video_dir: str | os.PathLike | None = None,
    *,
    split: str | None = "test",
    video_ext: str = ".mp4",
    limit: int | None = None,
    missing: str = "raise",
) -> list[EvalSample]:
    """MSR-VTT from ``test_videodatainfo.json`` or ``MSRVTT_data.json`` (``videos`` + ``sentences``).

    One sample per video (``video7010``) with its 20 sentences; videos at ``video_dir/<video_id><video_ext>``.
    ``split`` keeps videos whose ``split`` field matches (train, validate, test; None keeps all).
    """
    path = os.fspath(annotations)
    data = _load_json(path, "MSR-VTT annotations with 'videos' and 'sentences' lists")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("videos", "sentences")):
        raise DatasetError(f"{path}: expected a JSON object with 'videos' and 'sentences' lists (MSR-VTT format)")
    root = None if video_dir is None else _require_dir(video_dir, "the MSR-VTT video folder")
    sentences: dict[str, list[tuple[Any, str]]] = {}
    for i, s in enumerate(data["sentences"]):
        video_id = str(_field(s, "video_id", path, f"sentences[{i}]"))
        sentences.setdefault(video_id, []).append((s.get("sen_id", i), _field(s, "caption", path, f"sentences[{i}]")))
    samples = []
    for i, v in enumerate(data["videos"]):
        video_id = str(_field(v, "video_id", path, f"videos[{i}]"))
        if split is not None and _field(v, "split", path, f"videos[{i}]") != split:
            continue
        refs = tuple(c.strip() for _, c in sorted(sentences.get(video_id, []), key=lambda t: natural_key(str(t[0]))))
        if not refs:
            continue
        media = () if root is None else (os.path.join(root, video_id + video_ext),)
        extra = {k: v[k] for k in ("category", "start time", "end time", "url", "split") if k in v}
        samples.append(EvalSample(video_id, media, refs, extra))
    if not samples:
        raise DatasetError(f"{path}: no captioned videos" + (f" in split {split!r}" if split else ""))
    return _finish(samples, missing, limit, path, check=root is not None)


# ------------------------------------------------------------------------------------------ VCTK


def load_vctk(
    root: str | os.PathLike,
    *,
    mic: str = "mic1",
    speakers: Iterable[str] | None = None,
    limit: int | None = None,
    missing: str = "raise",
) -> list[EvalSample]:
    """VCTK utterances with their transcripts (one sample per ``txt/<spk>/<spk>_<utt>.txt``).

    Audio: ``wav48_silence_trimmed/<spk>/<spk>_<utt>_<mic>.flac`` (VCTK 0.92) or ``wav48/<spk>/<spk>_<utt>.wav``
    (0.80 and older), whichever folder exists.
    """
    base = _require_dir(root, "the VCTK corpus root holding txt/ and wav48_silence_trimmed/ (or wav48/)")
    txt_dir = _require_dir(os.path.join(base, "txt"), "VCTK transcripts txt/<speaker>/<speaker>_<utt>.txt")
    if os.path.isdir(os.path.join(base, "wav48_silence_trimmed")):
        audio = lambda spk, utt: os.path.join(base, "wav48_silence_trimmed", spk, f"{spk}_{utt}_{mic}.flac")
    elif os.path.isdir(os.path.join(base, "wav48")):
        audio = lambda spk, utt: os.path.join(base, "wav48", spk, f"{spk}_{utt}.wav")
    else:
        raise DatasetError(f"{base}: no audio folder (expected wav48_silence_trimmed/ of VCTK 0.92 or wav48/)")
    wanted = None if speakers is None else set(speakers)
    samples = []
    for txt in glob.glob(os.path.join(txt_dir, "*", "*.txt")):
        speaker, stem = os.path.basename(os.path.dirname(txt)), os.path.splitext(os.path.basename(txt))[0]
        if wanted is not None and speaker not in wanted:
            continue
        if not stem.startswith(speaker + "_"):
            raise DatasetError(f"{txt}: expected a name <speaker>_<utterance>.txt inside txt/{speaker}/")
        utt = stem[len(speaker) + 1 :]
        try:
            with open(txt, encoding="utf-8", errors="replace") as f:
                text = " ".join(f.read().split())
        except OSError as e:
            raise DatasetError(f"{txt}: cannot read transcript ({e})") from e
        extra = {"speaker": speaker, "utterance": utt, "mic": mic}
        samples.append(EvalSample(stem, (audio(speaker, utt),), (text,), extra))
    if not samples:
        raise DatasetError(
            f"{txt_dir}: no transcripts <speaker>/<speaker>_<utt>.txt"
            + (f" for speakers {sorted(wanted)}" if wanted is not None else "")
        )
    return _finish(samples, missing, limit, base)


# ------------------------------------------------------------------------------------------ DAVIS


def load_davis(
    root: str | os.PathLike,
    *,
    split: str = "val",
    year: str = "2017",
    resolution: str = "480p",
    limit: int | None = None,
    missing: str = "raise",
) -> list[EvalSample]:
    """DAVIS sequences listed in ``ImageSets/<year>/<split>.txt``: frames and annotation masks in order.

    ``media`` holds the frames ``JPEGImages/<resolution>/<seq>/*.jpg``; ``extra["annotations"]`` the masks
    ``Annotations/<resolution>/<seq>/*.png`` (may be fewer, e.g. first frame only on test-dev). A listed
    sequence without frames counts as missing media.
    """
    base = _require_dir(root, "the DAVIS root holding JPEGImages/, Annotations/ and ImageSets/")
    list_file = _require_file(
        os.path.join(base, "ImageSets", year, f"{split}.txt"), f"the DAVIS {year} {split} sequence list"
    )
    frames_dir = _require_dir(os.path.join(base, "JPEGImages", resolution), f"DAVIS frames JPEGImages/{resolution}")
    with open(list_file, encoding="utf-8") as f:
        names = list(dict.fromkeys(line.strip() for line in f if line.strip()))
    if not names:
        raise DatasetError(f"{list_file}: empty sequence list (expected one sequence name per line)")
    samples = []
    for seq in names:
        frames = tuple(sorted(glob.glob(os.path.join(frames_dir, seq, "*.jpg")), key=natural_key))
        masks = tuple(sorted(glob.glob(os.path.join(base, "Annotations", resolution, seq, "*.png")), key=natural_key))
        extra = {"annotations": masks, "num_frames": len(frames), "frames_dir": os.path.join(frames_dir, seq)}
        samples.append(EvalSample(seq, frames, (), extra))
    no_frames = lambda s: _absent_files(s) if s.media else [os.path.join(s.extra["frames_dir"], "*.jpg")]
    return _finish(samples, missing, limit, list_file, no_frames)
