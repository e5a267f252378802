"""Writes a many-modal :class:`~spider_jax.any_to_many.Response` to a folder a person can open.

``out/`` gets, in answer order, ``01_image.png``, ``02_audio.wav``, ``03_video.mp4`` (+ ``.gif`` preview), box and
mask overlays ``NN_box.png`` / ``NN_mask.png``; ``boxes.json`` (every box / mask group's detections, COCO style),
``NN_masks.json`` (RLE); ``response.md`` (the answer text with each item linked where its group stands);
``response.json`` (machine-readable: question, raw answer, parser warnings, per-group status, files, errors);
and ``index.html``, one self-contained page (media inlined as data URIs) showing the text with every item inline.
A failed group is written as its error, in place, so nothing else is lost.
"""

from __future__ import annotations

import base64
import html
import json
import os
from typing import Any

import numpy as np

MIME = {".png": "image/png", ".gif": "image/gif", ".wav": "audio/wav", ".mp4": "video/mp4"}


def _stem(o) -> str:
    return f"{o.index + 1:02d}_{o.modality.lower()}"


def _write_group_files(o, out: str, image: np.ndarray | None, fps: float) -> dict[str, Any]:
    """Files of one group -> {"files": [...], "preview": file shown inline, extra JSON fields}."""
    from PIL import Image

    stem = _stem(o)
    record: dict[str, Any] = {"files": []}
    if o.image is not None:
        path = f"{stem}.png"
        Image.fromarray(np.asarray(o.image, np.uint8)).save(os.path.join(out, path))
        record.update(files=[path], preview=path)
    elif o.audio is not None:
        from spider_jax.diffusion.audio_pipeline import write_wav

        path = f"{stem}.wav"
        write_wav(np.asarray(o.audio, np.float32)[None], out, sample_rate=o.sample_rate, prefix=stem)
        produced = os.path.join(out, f"{stem}_0.wav")
        if os.path.exists(produced):
            os.replace(produced, os.path.join(out, path))
        record.update(files=[path], preview=path, sample_rate=o.sample_rate, seconds=len(o.audio) / o.sample_rate)
    elif o.video is not None:
        from spider_jax.diffusion.video_pipeline import write_gif, write_mp4

        frames = np.asarray(o.video, np.uint8)
        mp4, gif = f"{stem}.mp4", f"{stem}.gif"
        files = []
        try:  # MP4 needs an H.264 encoder in PyAV's FFmpeg; the GIF preview always works
            write_mp4(frames, os.path.join(out, mp4), fps=fps)
            files.append(mp4)
        except Exception as e:  # noqa: BLE001
            record["mp4_error"] = f"{type(e).__name__}: {e}"
        write_gif(frames, os.path.join(out, gif), fps=fps)
        record.update(files=files + [gif], preview=gif, frames=int(frames.shape[0]))
    if o.detections is not None and image is not None:
        from spider_jax.grounding import outputs as gout

        record["detections"] = gout.detections_to_json(o.detections)
        overlay = f"{stem}.png"
        gout.write_overlay(image, os.path.join(out, overlay), o.detections, o.masks)
        record["files"].append(overlay)
        record["preview"] = overlay
        if o.masks is not None:
            masks = f"{stem}_masks.json"
            with open(os.path.join(out, masks), "w") as f:
                json.dump(gout.masks_to_json(o.masks), f)
            record["files"].append(masks)
    return record


def group_records(response, out: str, fps: float = 8.0) -> list[dict[str, Any]]:
    records = []
    for o in response.groups:
        record = {
            "index": o.index, "modality": o.modality, "t_prompt": o.t_prompt, "text_before": o.text_before,
            "ok": o.ok, "error": o.error, "router_weights": o.router_weights,
        }  # fmt: skip
        if o.ok:
            try:
                record.update(_write_group_files(o, out, response.input_image, fps))
            except Exception as e:  # noqa: BLE001 - a writer failure is this group's error, not the response's
                record.update(ok=False, error=f"writing failed: {type(e).__name__}: {e}")
        records.append(record)
    return records


def _markdown(response, records: list[dict[str, Any]]) -> str:
    lines = [f"**Prompt:** {response.request.prompt}", ""]
    if response.request.inputs:
        lines += ["**Inputs:** " + ", ".join(f"{m.lower()} `{p}`" for m, p in response.request.inputs), ""]
    for r in records:
        if r["text_before"]:
            lines += [r["text_before"], ""]
        label = f"{r['modality'].lower()} {r['index'] + 1}: {r['t_prompt']}"
        if not r["ok"]:
            lines += [f"> *{label} — failed: {r['error']}*", ""]
        elif r.get("preview", "").endswith(".png") or r.get("preview", "").endswith(".gif"):
            links = " ".join(f"[{f}]({f})" for f in r["files"])
            lines += [f"![{label}]({r['preview']})", "", links, ""]
        else:
            lines += [f"[{label}]({r['files'][0]})" if r["files"] else f"*{label}*", ""]
    if response.parsed.trailing_text:
        lines += [response.parsed.trailing_text, ""]
    if not response.stopped:
        lines += ["*(the answer was cut at max_new_tokens before [END])*", ""]
    return "\n".join(lines)


def _data_uri(path: str) -> str:
    with open(path, "rb") as f:
        payload = base64.b64encode(f.read()).decode("ascii")
    return f"data:{MIME.get(os.path.splitext(path)[1], 'application/octet-stream')};base64,{payload}"


def _html(response, records: list[dict[str, Any]], out: str) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Spider response</title><style>",
        "body{font-family:sans-serif;max-width:860px;margin:2em auto;line-height:1.5}",
        "figure{margin:1em 0;padding:.5em;border:1px solid #ddd;border-radius:6px}",
        "figure img{image-rendering:pixelated;width:256px}figcaption{color:#555;font-size:.9em}",
        ".failed{color:#a00}.prompt{background:#f4f4f4;padding:.5em}</style></head><body>",
        f"<div class='prompt'><b>Prompt:</b> {e(response.request.prompt)}</div>",
    ]
    for r in records:
        if r["text_before"]:
            parts.append(f"<p>{e(r['text_before'])}</p>")
        caption = f"<figcaption>{e(r['modality'].lower())} {r['index'] + 1}: {e(r['t_prompt'])}</figcaption>"
        item_id = f"item-{r['index'] + 1}"
        if not r["ok"]:
            parts.append(f"<figure id='{item_id}' class='failed'>failed: {e(r['error'])}{caption}</figure>")
            continue
        preview = os.path.join(out, r["preview"])
        if r["preview"].endswith(".wav"):
            body = f"<audio controls src='{_data_uri(preview)}'></audio>"
        else:
            body = f"<img alt='{e(r['modality'].lower())}' src='{_data_uri(preview)}'>"
        links = " ".join(f"<a href='{e(f)}'>{e(f)}</a>" for f in r["files"])
        parts.append(f"<figure id='{item_id}' data-modality='{e(r['modality'])}'>{body}{caption}<div>{links}</div>")
        parts.append("</figure>")
    if response.parsed.trailing_text:
        parts.append(f"<p>{e(response.parsed.trailing_text)}</p>")
    parts.append(f"<details><summary>raw answer</summary><pre>{e(response.answer)}</pre></details></body></html>")
    return "\n".join(parts)


def write_response(response, out: str, fps: float = 8.0) -> dict[str, Any]:
    """Writes every file of ``response`` into ``out`` (created); returns the ``response.json`` content."""
    os.makedirs(out, exist_ok=True)
    records = group_records(response, out, fps)
    boxes = [
        {"group": r["index"], "modality": r["modality"], "query": r["t_prompt"], **r.get("detections", {})}
        for r in records
        if r["modality"] in ("BOX", "MASK")
    ]
    with open(os.path.join(out, "boxes.json"), "w") as f:
        json.dump(boxes, f, indent=1)
    with open(os.path.join(out, "response.md"), "w", encoding="utf-8") as f:
        f.write(_markdown(response, records))
    with open(os.path.join(out, "index.html"), "w", encoding="utf-8") as f:
        f.write(_html(response, records, out))
    manifest = {
        "request": {"prompt": response.request.prompt, "inputs": [list(x) for x in response.request.inputs],
                    "task": response.request.task, "id": response.request.request_id},
        "question": response.question,
        "answer": response.answer,
        "text": response.parsed.text,
        "parser_warnings": list(response.parsed.warnings),
        "tokens": response.tokens,
        "stopped_at_end": response.stopped,
        "groups": [{k: v for k, v in r.items() if k != "detections"} for r in records],
    }  # fmt: skip
    with open(os.path.join(out, "response.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
    return manifest
