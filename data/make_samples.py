"""Regenerates data/samples/: a tiny, deterministic, offline sample set in real dataset annotation formats.

Why: the readers in spider_jax/sources.py parse CC3M, WebVid, AudioCaps, COCO and travel-guide files, but no real
dataset can be downloaded here. This script writes each format for real (PNG images, MPEG-4 clips, WAV audio,
COCO JSON with polygon and RLE masks) from fixed seeds, so tests and demos read the same bytes everywhere.
Existing files are overwritten; the folder stays well under 1 MB.
Usage: python data/make_samples.py [--out data/samples] [--count 12]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import wave

import av
import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

try:
    from make_tiny_captions import make_captions  # run as a script: data/ is on sys.path
except ModuleNotFoundError:
    from data.make_tiny_captions import make_captions  # imported from the project root

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")
SEEDS = {"cc3m": 1, "webvid": 2, "audiocaps": 3, "coco": 4}
COCO_SIZE = (64, 48)  # width, height
FIRST_BOX = (8, 6, 24, 18)  # x, y, w, h of annotation 1 (a person in image 1): normalised (0.125, 0.125, 0.5, 0.5)
CATEGORIES = ((1, "person", (220, 60, 60)), (3, "car", (60, 60, 220)), (18, "dog", (60, 170, 60)))
SAMPLE_RATE = 16000
GUIDES = (
    {
        "city": "Beijing",
        "guide": "Attractions: <IMAGE> Forbidden City </IMAGE> is a vast palace of red walls. Culture: <AUDIO> Peking "
        "Opera </AUDIO> is sung in teahouses at night. Streets: <VIDEO> a busy hutong at dusk </VIDEO> shows daily "
        "life.",
    },
    {
        "city": "Paris",
        "guide": "Attractions: <IMAGE> the Eiffel Tower at sunset </IMAGE> rises over the Seine. Streets: <VIDEO> a "
        "boat gliding along the Seine </VIDEO> passes old bridges. Culture: <AUDIO> an accordion in Montmartre "
        "</AUDIO> plays for passers-by.",
    },
    {
        "city": "Kyoto",
        "guide": "Attractions: <IMAGE> the golden pavilion of Kinkaku-ji </IMAGE> sits by a quiet pond. Nature: "
        "<VIDEO> a path through the Arashiyama bamboo grove </VIDEO> sways in the wind. Culture: <AUDIO> temple "
        "bells at Kiyomizu-dera </AUDIO> ring at dawn.",
    },
)


def _write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def _write_json(path: str, data: object) -> None:
    _write_text(path, json.dumps(data, indent=1) + "\n")


def _write_csv(path: str, header: list[str], rows: list[list]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _save_png(path: str, pixels: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path, optimize=True)


def write_cc3m(out: str, count: int) -> None:
    """``captions.tsv`` (header + ``caption<TAB>images/NNNNN.png``) and 32x32 gradient images."""
    rng = np.random.default_rng(SEEDS["cc3m"])
    lines = ["caption\tpath"]
    ramp = np.linspace(0.0, 1.0, 32)
    for i, caption in enumerate(make_captions(count, SEEDS["cc3m"])):
        low, high = rng.integers(0, 256, size=(2, 3))
        t = (ramp[:, None] + ramp[None, :])[..., None] / 2  # diagonal gradient between two colours
        _save_png(os.path.join(out, "cc3m", "images", f"{i:05d}.png"), low + (high - low) * t)
        lines.append(f"{caption}\timages/{i:05d}.png")
    _write_text(os.path.join(out, "cc3m", "captions.tsv"), "\n".join(lines) + "\n")


def _write_video(path: str, colour: np.ndarray, row: int) -> None:
    """8 frames, 32x32, 8 fps: a coloured square sliding across a dark background."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.thread_count = 1  # single-threaded encoding keeps the bytes reproducible
        for t in range(8):
            frame = np.full((32, 32, 3), 20 + 5 * (row % 8), np.uint8)
            x = 2 + 3 * t
            frame[10:22, x : x + 8] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_webvid(out: str, count: int) -> None:
    """``results.csv`` in WebVid's columns and ``videos/<page_dir>/<videoid>.mp4``."""
    rng = np.random.default_rng(SEEDS["webvid"])
    rows = []
    for i, caption in enumerate(make_captions(count, SEEDS["webvid"])):
        video_id = str(1_000_000 + 7919 * i)
        page_dir = f"{(i // 4) * 50 + 1:03d}_{(i // 4) * 50 + 50:03d}"
        _write_video(os.path.join(out, "webvid", "videos", page_dir, f"{video_id}.mp4"), rng.integers(80, 256, 3), i)
        rows.append([video_id, f"https://example.com/stock/{video_id}.mp4", "PT00H00M01S", page_dir, caption])
    _write_csv(
        os.path.join(out, "webvid", "results.csv"), ["videoid", "contentUrl", "duration", "page_dir", "name"], rows
    )


def write_audiocaps(out: str, count: int) -> None:
    """``train.csv`` in AudioCaps' columns and ``audio/<youtube_id>_<start_time>.wav`` (1 s sine, 16 kHz mono)."""
    rng = random.Random(SEEDS["audiocaps"])
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    rows = []
    for i, caption in enumerate(make_captions(count, SEEDS["audiocaps"])):
        youtube_id = "".join(rng.choice(alphabet) for _ in range(11))
        start_time = 10 * (i % 6)
        pitch = 220.0 * 2 ** (i / 12)  # one semitone higher per row
        pcm = np.round(0.3 * 32767 * np.sin(2 * math.pi * pitch * t)).astype("<i2")
        path = os.path.join(out, "audiocaps", "audio", f"{youtube_id}_{start_time}.wav")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with wave.open(path, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(pcm.tobytes())
        rows.append([100 + i, youtube_id, start_time, caption])
    _write_csv(
        os.path.join(out, "audiocaps", "train.csv"), ["audiocap_id", "youtube_id", "start_time", "caption"], rows
    )


def _uncompressed_rle(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: column-major run lengths, starting with a (possibly empty) run of zeros."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def _segmentation(kind: int, x: int, y: int, w: int, h: int, mask: np.ndarray) -> tuple[object, int]:
    """Cycles through COCO's encodings: one polygon, two polygons, uncompressed RLE (crowd), compressed RLE."""
    if kind == 0:
        return [[x, y, x + w, y, x + w, y + h, x, y + h]], 0
    if kind == 1:
        half = x + w // 2
        return [[x, y, half, y, half, y + h, x, y + h], [half, y, x + w, y, x + w, y + h, half, y + h]], 0
    if kind == 2:
        return {"size": list(mask.shape), "counts": _uncompressed_rle(mask)}, 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}, 0


def write_coco(out: str, count: int) -> None:
    """COCO ``captions.json`` and ``instances.json`` over shared 64x48 images with one rectangle per object."""
    rng = random.Random(SEEDS["coco"])
    width, height = COCO_SIZE
    n_images = max(2, count // 3)
    images = [
        {"id": i + 1, "file_name": f"{i + 1:012d}.png", "width": width, "height": height} for i in range(n_images)
    ]
    captions = [
        {"id": k + 1, "image_id": k % n_images + 1, "caption": c}
        for k, c in enumerate(make_captions(count, SEEDS["coco"]))
    ]
    objects = []
    for image in images:
        canvas = Image.new("RGB", COCO_SIZE, (235, 235, 225))
        draw = ImageDraw.Draw(canvas)
        for _ in range(2 + image["id"] % 2):
            w, h = rng.randint(8, 24), rng.randint(6, 18)
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            if not objects:
                x, y, w, h = FIRST_BOX
            category_id, _, colour = CATEGORIES[len(objects) % len(CATEGORIES)]
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=colour)
            mask = np.zeros((height, width), np.uint8)
            mask[y : y + h, x : x + w] = 1
            segmentation, crowd = _segmentation(len(objects) % 4, x, y, w, h, mask)
            if isinstance(segmentation, list):
                area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))))
            else:
                area = float(mask.sum())
            objects.append(
                {
                    "id": len(objects) + 1,
                    "image_id": image["id"],
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": area,
                    "iscrowd": crowd,
                    "segmentation": segmentation,
                }
            )
        canvas.save(os.path.join(_mkdir(out, "coco", "images"), image["file_name"]), optimize=True)
    info = {"description": "tiny offline COCO-format sample set made by data/make_samples.py"}
    categories = [{"id": i, "name": name, "supercategory": "thing"} for i, name, _ in CATEGORIES]
    ann_dir = _mkdir(out, "coco", "annotations")
    _write_json(os.path.join(ann_dir, "captions.json"), {"info": info, "images": images, "annotations": captions})
    instances = {"info": info, "images": images, "annotations": objects, "categories": categories}
    _write_json(os.path.join(ann_dir, "instances.json"), instances)


def _mkdir(*parts: str) -> str:
    path = os.path.join(*parts)
    os.makedirs(path, exist_ok=True)
    return path


def make_samples(out: str = DEFAULT_OUT, count: int = 12) -> int:
    """Writes every format under ``out``; returns the total size in bytes."""
    if count < 1:
        raise ValueError(f"--count must be at least 1, got {count}")
    write_cc3m(out, count)
    write_webvid(out, count)
    write_audiocaps(out, count)
    write_coco(out, count)
    _write_json(os.path.join(out, "travel_guides.json"), list(GUIDES))
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(out) for f in files)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: data/samples next to this script)")
    parser.add_argument("--count", type=int, default=12, help="records per caption dataset")
    args = parser.parse_args(argv)
    size = make_samples(args.out, args.count)
    print(f"wrote {args.count} records per caption dataset to {args.out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
