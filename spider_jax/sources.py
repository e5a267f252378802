"""Readers that turn real dataset annotation files on local disk into :class:`tmm.Sample` lists.

Why: the TMM builder needs ``Sample`` records, but real data arrives as CC3M caption tables, WebVid and
AudioCaps CSVs, COCO JSON and travel-guide lists. The readers never decode media (the input pipeline does that
later); they only resolve and check every media path, so a broken row fails at load time with its file, row and
reason instead of hours into training. ``skip_bad_records=True`` drops such rows and lists them instead.
Row numbers: 1-based line numbers for text files, 0-based list indices for JSON files.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import math
import os
import re
import string
from collections.abc import Callable, Iterable
from typing import Any

from pycocotools import mask as mask_utils

from spider_jax.tmm import Sample

PathArg = str | os.PathLike
IMAGE, VIDEO, AUDIO = "IMAGE", "VIDEO", "AUDIO"
MEDIA_KEYS = ("image", "video", "audio", "path")  # JSONL caption tables name the media under one of these
WEBVID_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")
AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
AUDIOCAPS_FILENAME = "{youtube_id}_{start_time}.wav"
_TAG_RE = re.compile(r"<(/?)(IMAGE|VIDEO|AUDIO|BOX|MASK)>")


class SourceError(ValueError):
    """An annotation file or one of its records is malformed; the message names the file, the row and why."""


@dataclasses.dataclass(frozen=True)
class BadRecord:
    file: str
    row: int  # 1-based line for text files, list index for JSON files
    reason: str


@dataclasses.dataclass
class SourceResult:
    samples: list[Sample] = dataclasses.field(default_factory=list)
    bad_records: list[BadRecord] = dataclasses.field(default_factory=list)


class _Bad(Exception):
    """A record-level problem; :class:`_Collector` turns it into a SourceError or a BadRecord."""


class _Collector:
    """Runs one record builder per row, so every reader reports (or skips) bad rows the same way."""

    def __init__(self, path: PathArg, skip: bool, unit: str):
        self.path, self.skip, self.unit = _require_file(path), skip, unit
        self.stem = os.path.splitext(os.path.basename(self.path))[0]
        self.result = SourceResult()

    def bad(self, row: int, reason: str) -> None:
        if not self.skip:
            raise SourceError(f"{self.path}: {self.unit} {row}: {reason}")
        self.result.bad_records.append(BadRecord(self.path, row, reason))

    def add(self, row: int, build: Callable[..., Sample | None], *args: Any) -> None:
        """Calls ``build(row, *args)``; a None result is a record filtered out on purpose."""
        try:
            sample = build(row, *args)
        except _Bad as e:
            return self.bad(row, str(e))
        except (KeyError, TypeError, ValueError, IndexError) as e:  # a record of an unexpected shape
            return self.bad(row, f"malformed record ({type(e).__name__}: {e})")
        if sample is not None:
            self.result.samples.append(sample)

    def finish(self) -> SourceResult:
        if bad := self.result.bad_records:
            print(f"{self.path}: skipped {len(bad)} bad record(s); first: {self.unit} {bad[0].row}: {bad[0].reason}")
        return self.result


def _require_file(path: PathArg) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "annotation file not found", path)
    return path


def _read_text(path: str, as_json: bool = False) -> Any:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return json.load(f) if as_json else f.read()
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not UTF-8 text ({e})") from e
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from e


def _text(record: Any, key: str) -> str:
    if not isinstance(record, dict):
        raise _Bad(f"expected an object, got {type(record).__name__}")
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"missing or empty field {key!r}")
    return value.strip()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _media(root: str, relative: str) -> str:
    """The media path (``relative`` joined to ``root`` unless absolute); it must be an existing file."""
    path = os.path.normpath(os.path.join(root, relative))
    if not os.path.isfile(path):
        raise _Bad(f"media file not found: {path}")
    return path


def _read_csv(collector: _Collector, required: Iterable[str], build: Callable[[int, dict], Sample]) -> None:
    """Feeds each data row of a headed CSV to ``build(line, row_dict)``; blank lines are ignored."""
    path = collector.path
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise SourceError(f"{path}: line 1: header {header} lacks column(s) {missing}")
        row = reader.line_num + 1
        for cells in reader:
            if any(c.strip() for c in cells) and len(cells) != len(header):
                collector.bad(row, f"has {len(cells)} fields, the header has {len(header)}")
            elif any(c.strip() for c in cells):
                collector.add(row, build, dict(zip(header, cells, strict=True)))
            row = reader.line_num + 1
    except csv.Error as e:
        raise SourceError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from e


def read_caption_table(
    path: PathArg, modality: str, media_root: PathArg | None = None, skip_bad_records: bool = False
) -> SourceResult:
    """CC3M-style captions: ``.tsv`` (``caption<TAB>path``, optional ``caption`` header) or ``.jsonl``.
    Relative media paths are joined to ``media_root`` (default: the annotation file's folder)."""
    if modality not in (IMAGE, VIDEO, AUDIO):
        raise ValueError(f"modality {modality!r} is not one of {(IMAGE, VIDEO, AUDIO)}")
    path = _require_file(path)
    root = os.fspath(media_root) if media_root is not None else os.path.dirname(os.path.abspath(path))
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".tsv", ".jsonl"):
        raise ValueError(f"{path}: caption tables are .tsv or .jsonl, got {ext!r}")
    collector = _Collector(path, skip_bad_records, "line")

    def from_tsv(number: int, line: str) -> Sample:
        cells = line.split("\t")
        if len(cells) != 2:
            raise _Bad(f"expected 2 tab-separated columns (caption, path), got {len(cells)}")
        caption, relative = (c.strip() for c in cells)
        if not caption or not relative:
            raise _Bad("empty caption or path")
        return Sample(caption, ((modality, _media(root, relative)),), sample_id=f"{collector.stem}:{number}")

    def from_jsonl(number: int, line: str) -> Sample:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise _Bad(f"invalid JSON ({e.msg})") from e
        caption, keys = _text(record, "caption"), [k for k in MEDIA_KEYS if k in record]
        if not keys:
            raise _Bad(f"no media field (one of {MEDIA_KEYS})")
        return Sample(
            caption, ((modality, _media(root, _text(record, keys[0]))),), sample_id=f"{collector.stem}:{number}"
        )

    for number, line in enumerate(_read_text(path).split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip() or (ext == ".tsv" and number == 1 and line.split("\t")[0].strip().lower() == "caption"):
            continue
        collector.add(number, from_tsv if ext == ".tsv" else from_jsonl, line)
    return collector.finish()


def read_webvid_csv(path: PathArg, media_root: PathArg, skip_bad_records: bool = False) -> SourceResult:
    """WebVid results CSV; the clip of a row is ``media_root/page_dir/videoid.mp4`` and ``name`` its caption."""
    collector, root = _Collector(path, skip_bad_records, "line"), os.fspath(media_root)

    def build(_: int, record: dict) -> Sample:
        video_id, caption, page_dir = _text(record, "videoid"), _text(record, "name"), _text(record, "page_dir")
        if any(sep in video_id for sep in "/\\"):
            raise _Bad(f"videoid {video_id!r} holds a path separator")
        video = _media(root, os.path.join(page_dir, f"{video_id}.mp4"))
        return Sample(caption, ((VIDEO, video),), sample_id=f"webvid:{video_id}")

    _read_csv(collector, WEBVID_COLUMNS, build)
    return collector.finish()


def read_audiocaps_csv(
    path: PathArg, media_root: PathArg, skip_bad_records: bool = False, filename_format: str = AUDIOCAPS_FILENAME
) -> SourceResult:
    """AudioCaps CSV; the clip of a row is ``media_root/filename_format.format(**row)``."""
    fields = {name for _, name, _, _ in string.Formatter().parse(filename_format) if name}
    if not fields or fields - set(AUDIOCAPS_COLUMNS):
        raise ValueError(f"filename_format {filename_format!r} must name only AudioCaps columns {AUDIOCAPS_COLUMNS}")
    collector, root = _Collector(path, skip_bad_records, "line"), os.fspath(media_root)

    def build(_: int, record: dict) -> Sample:
        values = {k: _text(record, k) for k in AUDIOCAPS_COLUMNS}
        if not re.fullmatch(r"\d+(\.\d*)?", values["start_time"]):
            raise _Bad(f"start_time {values['start_time']!r} is not a non-negative number")
        audio = _media(root, filename_format.format(**values))
        return Sample(values["caption"], ((AUDIO, audio),), sample_id=f"audiocaps:{values['audiocap_id']}")

    _read_csv(collector, AUDIOCAPS_COLUMNS, build)
    return collector.finish()


# ---------------------------------------------------------------------------------------------- COCO


def _coco_lists(path: str, keys: Iterable[str]) -> list[list]:
    data = _read_text(path, as_json=True)
    for key in keys:
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise SourceError(f"{path}: not COCO JSON: no list {key!r} at the top level")
    return [data[key] for key in keys]


class _CocoImages:
    """COCO ``images`` by id; resolves (and checks, once per image) each file under ``root``."""

    def __init__(self, images: list, root: PathArg):
        self.by_id = {im["id"]: im for im in images if isinstance(im, dict) and "id" in im}
        self.root, self.paths = os.fspath(root), {}

    def get(self, image_id: Any) -> tuple[str, int, int]:
        image = self.by_id.get(image_id) if isinstance(image_id, int | str) else None
        if image is None:
            raise _Bad(f"image_id {image_id!r} is not in 'images'")
        if image_id not in self.paths:
            self.paths[image_id] = _media(self.root, _text(image, "file_name"))
        width, height = image.get("width"), image.get("height")
        if not (_is_count(width, 1) and _is_count(height, 1)):
            raise _Bad(f"image {image_id!r} has no positive integer width/height")
        return self.paths[image_id], width, height


def read_coco_captions(captions_json: PathArg, images_root: PathArg, skip_bad_records: bool = False) -> SourceResult:
    """COCO captions: one IMAGE sample per caption annotation."""
    collector = _Collector(captions_json, skip_bad_records, "annotation")
    images, annotations = _coco_lists(collector.path, ("images", "annotations"))
    index = _CocoImages(images, images_root)

    def build(position: int, ann: Any) -> Sample:
        caption = _text(ann, "caption")
        image, _, _ = index.get(ann.get("image_id"))
        return Sample(caption, ((IMAGE, image),), sample_id=f"coco-cap:{ann.get('id', position)}")

    for position, ann in enumerate(annotations):
        collector.add(position, build, ann)
    return collector.finish()


def _normalised_box(bbox: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` pixels -> normalised ``(x1, y1, x2, y2)`` clipped to [0, 1]."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise _Bad(f"bbox {bbox!r} is not four numbers [x, y, w, h]")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise _Bad(f"bbox {bbox!r} has a non-positive width or height")
    clip = lambda v: min(max(v, 0.0), 1.0)
    box = (clip(x / width), clip(y / height), clip((x + w) / width), clip((y + h) / height))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise _Bad(f"bbox {bbox!r} lies outside the {width}x{height} image")
    return box


def _compressed_rle_total(counts: str) -> int:
    """Sum of the runs of a compressed COCO RLE string (6-bit delta-coded varints); pycocotools decodes without
    bounds checks, so runs that overshoot h*w would corrupt memory instead of failing."""
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            c = ord(counts[pos]) - 48 if pos < len(counts) else -1
            if not 0 <= c < 64:
                raise _Bad("compressed RLE string is truncated or holds an invalid character")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos, shift = pos + 1, shift + 5
            if not more and c & 0x10:
                value -= 1 << shift
        value += runs[-2] if len(runs) > 2 else 0
        if value < 0:
            raise _Bad("compressed RLE string has a negative run length")
        runs.append(value)
    return sum(runs)


def _rle(segmentation: Any, height: int, width: int) -> dict:
    """COCO segmentation (polygons, uncompressed or compressed RLE) -> ``{"size": [h, w], "counts": str}``."""
    if isinstance(segmentation, list):
        if not segmentation:
            raise _Bad("empty segmentation")
        for poly in segmentation:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or not all(map(_is_number, poly)):
                raise _Bad("a polygon must be a list of at least 3 (x, y) number pairs")
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if list(size or ()) != [height, width]:
            raise _Bad(f"RLE size {size!r} differs from the image size [{height}, {width}]")
        if isinstance(counts, list):
            if not all(map(_is_count, counts)) or sum(counts) != height * width:
                raise _Bad(f"uncompressed RLE counts must be non-negative integers summing to {height}*{width}")
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        elif isinstance(counts, str | bytes):
            text = counts.decode("ascii") if isinstance(counts, bytes) else counts
            if _compressed_rle_total(text) != height * width:
                raise _Bad(f"compressed RLE does not cover {height}*{width} pixels")
            rle = {"counts": text}
        else:
            raise _Bad("RLE 'counts' must be a list or a string")
    else:
        raise _Bad("missing 'segmentation', or neither a list of polygons nor an RLE object")
    counts = rle["counts"]
    return {"size": [height, width], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def read_coco_instances(
    instances_json: PathArg, images_root: PathArg, skip_bad_records: bool = False, min_area_fraction: float = 0.0
) -> SourceResult:
    """COCO instances: one referring sample per object ("the dog", its normalised box and its RLE mask).

    Objects smaller than ``min_area_fraction`` of their image are left out (not counted as bad records).
    """
    collector = _Collector(instances_json, skip_bad_records, "annotation")
    images, annotations, categories = _coco_lists(collector.path, ("images", "annotations", "categories"))
    names = {c["id"]: c["name"] for c in categories if isinstance(c, dict) and "id" in c and "name" in c}
    index = _CocoImages(images, images_root)

    def build(_: int, ann: Any) -> Sample | None:
        if not isinstance(ann, dict) or not isinstance(ann.get("id"), int | str):
            raise _Bad("annotation has no 'id'")
        image, width, height = index.get(ann.get("image_id"))
        name = names.get(ann.get("category_id"))
        if not isinstance(name, str) or not name.strip():
            raise _Bad(f"category_id {ann.get('category_id')!r} is not in 'categories'")
        box = _normalised_box(ann.get("bbox"), width, height)
        area = ann["area"] if _is_number(ann.get("area")) else ann["bbox"][2] * ann["bbox"][3]
        if area < min_area_fraction * width * height:
            return None
        mask = _rle(ann.get("segmentation"), height, width)
        return Sample(f"the {name.strip()}", ((IMAGE, image),), box=box, mask=mask, sample_id=f"coco:{ann['id']}")

    for position, ann in enumerate(annotations):
        collector.add(position, build, ann)
    return collector.finish()


# --------------------------------------------------------------------------------------- travel guides


def read_travel_guides(path: PathArg, skip_bad_records: bool = False) -> SourceResult:
    """TGI records: a JSON list of ``{"city", "guide"}``; guides must hold balanced ``<X> … </X>`` groups."""
    collector = _Collector(path, skip_bad_records, "entry")
    data = _read_text(collector.path, as_json=True)
    if not isinstance(data, list):
        raise SourceError(f"{collector.path}: expected a JSON list of {{'city', 'guide'}} objects")

    def build(position: int, entry: Any) -> Sample:
        city, guide = _text(entry, "city"), _text(entry, "guide")
        open_tag, groups = None, 0
        for m in _TAG_RE.finditer(guide):
            closing, tag = bool(m.group(1)), m.group(2)
            if closing != (open_tag is not None) or (closing and tag != open_tag):
                raise _Bad(f"guide has an unbalanced <{m.group(1)}{tag}> at character {m.start()}")
            open_tag, groups = (None, groups + 1) if closing else (tag, groups)
        if open_tag is not None or not groups:
            raise _Bad("guide must hold at least one closed <IMAGE|VIDEO|AUDIO> … </…> group")
        return Sample(city, guide=guide, sample_id=f"{collector.stem}:{position}")

    for position, entry in enumerate(data):
        collector.add(position, build, entry)
    return collector.finish()


DEFAULT_SAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "samples")
# Which TMM/X-to-X datasets each kind of source feeds (Tab. 21a, "Data Source" column).
IMAGE_CAPTION_DATASETS = ("i2t", "t2i", "t2i_ts", "i2t_ts")
VIDEO_CAPTION_DATASETS = ("v2t", "t2v", "t2v_ts", "v2t_ts", "smmi", "spmi")
AUDIO_CAPTION_DATASETS = ("a2t", "t2a", "t2a_ts", "a2t_ts")
GROUNDING_DATASETS = ("i2b", "i2m", "i2b_ts", "i2m_ts")


def load_layout(root: PathArg = DEFAULT_SAMPLES_DIR, skip_bad_records: bool = False) -> dict[str, list[Sample]]:
    """Every dataset name of the stage mixtures -> its samples, from a folder laid out like ``data/samples``:
    ``cc3m/captions.tsv``, ``webvid/results.csv`` + ``webvid/videos``, ``audiocaps/train.csv`` + ``audiocaps/audio``,
    ``coco/annotations/{captions,instances}.json`` + ``coco/images``, ``travel_guides.json``. Parts that are
    absent are simply left out (the mixture is renormalised over what exists)."""
    root = os.fspath(root)

    def there(*parts: str) -> str | None:
        path = os.path.join(root, *parts)
        return path if os.path.exists(path) else None

    images: list[Sample] = []
    if path := there("cc3m", "captions.tsv"):
        images += read_caption_table(path, IMAGE, skip_bad_records=skip_bad_records).samples
    if path := there("coco", "annotations", "captions.json"):
        images += read_coco_captions(path, os.path.join(root, "coco", "images"), skip_bad_records).samples
    kinds: list[tuple[tuple[str, ...], list[Sample]]] = [(IMAGE_CAPTION_DATASETS, images)]
    if path := there("webvid", "results.csv"):
        videos = read_webvid_csv(path, os.path.join(root, "webvid", "videos"), skip_bad_records).samples
        kinds.append((VIDEO_CAPTION_DATASETS, videos))
    if path := there("audiocaps", "train.csv"):
        audio = read_audiocaps_csv(path, os.path.join(root, "audiocaps", "audio"), skip_bad_records).samples
        kinds.append((AUDIO_CAPTION_DATASETS, audio))
    if path := there("coco", "annotations", "instances.json"):
        refs = read_coco_instances(path, os.path.join(root, "coco", "images"), skip_bad_records).samples
        kinds.append((GROUNDING_DATASETS, refs))
    if path := there("travel_guides.json"):
        kinds.append((("tgi",), read_travel_guides(path, skip_bad_records).samples))
    return {name: samples for names, samples in kinds if samples for name in names}
