"""Build the E^X store: ImageBind embeddings of media files, keyed the way the training pipeline looks them up.

Why: Spider's input slots and its M-Reconstruction target read E^X (1024-d ImageBind embeddings) from an
``embedding_store`` keyed by ``input_pipeline.media_key(path, media_root)``; the frozen encoder never runs in the
train step. This walks the media, preprocesses each file on host threads (``imagebind_data``; modality from the
extension), batches per kind (image / audio / video), runs the encoder jitted with the batch axis sharded over
the local devices (the last batch is zero-padded to the fixed batch size, so there is one compile per kind) and
writes the store with ``embedding_store.write_store``.

    python -m spider_jax.embed_cache --checkpoint imagebind_huge.pth --config imagebind_huge \\
        --media_root /data --glob '**/*.jpg' --out /stores/imagebind --batch_size 64 --dtype float16

Resumable: finished embeddings are committed every ``--part_size`` items as complete sub-stores under
``OUT/_parts/``; a rerun skips every key already in OUT or a part, and the end of a run merges OUT + parts into
OUT (via a complete ``_parts/merged`` store first, so a crash at any point loses at most one part of work).
A store built with a different encoder/checkpoint/config/key scheme is refused unless ``--overwrite``.
Per-file failures (``imagebind_data.MediaReadError`` and other preprocessing errors) are reported, listed in
``OUT/failures.jsonl`` and skipped (they are retried on the next run); ``--strict`` stops at the first one.
Each host runs over its own local devices; several hosts need separate file lists and output stores.
A video item is 15 clip x crop views (``imagebind_data``), so a video batch costs 15 image batches of the same
``--batch_size``; the store is rewritten whole at the end of a run (peak host memory ~ the store's size).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import glob
import itertools
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from spider_jax import embedding_store as es
from spider_jax import imagebind_data as ibd
from spider_jax.input_pipeline import media_key

KEY_SCHEME = "media_key(path, media_root): stable_key of the path relative to media_root, else of the absolute path"
PARTS_DIR = "_parts"
MERGED = "merged"
FAILURES_FILE = "failures.jsonl"
DTYPES = ("float16", "float32")
_MATCH_FIELDS = ("keys", "encoder", "checkpoint", "config")  # meta that must agree to add to an existing store


@dataclasses.dataclass(frozen=True)
class MediaEncoder:
    """A jittable encoder: ``apply(params, kind, batch) -> (B, D)`` with ``kind`` in ``imagebind_data.KINDS`` and
    ``batch`` stacked ``imagebind_data.load_media`` arrays. ``meta`` goes into the store (and must match on resume)."""

    apply: Callable[[Any, str, Any], Any]
    params: Any = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    load: Callable[[str], np.ndarray] = ibd.load_media  # path -> model input (sizes from the model config)


@dataclasses.dataclass
class CacheReport:
    path: str
    total: int = 0  # embeddings in the store after this run
    written: int = 0  # new this run
    skipped: int = 0  # already in the store or a part
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, reason)

    def summary(self) -> str:
        lines = [
            f"{self.path}: {self.total} embeddings ({self.written} new, {self.skipped} already there, "
            f"{len(self.failed)} failed)"
        ]
        lines += [f"  failed: {reason}" for _, reason in self.failed[:20]]
        if len(self.failed) > 20:
            lines.append(f"  ... and {len(self.failed) - 20} more in {os.path.join(self.path, FAILURES_FILE)}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- file listing


def list_media(media_root: str, *, list_file: str | None = None, pattern: str | None = None) -> list[str]:
    """Media paths to embed: the lines of ``list_file`` (relative ones joined to ``media_root``, as the source
    readers join them) or the media files (known extensions) under ``media_root`` matching ``pattern``."""
    if list_file and pattern:
        raise ValueError("pass either a list file or a glob pattern, not both")
    if list_file:
        with open(list_file, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        return [n if os.path.isabs(n) else os.path.join(media_root, n) for n in names]
    names = glob.glob(pattern or "**/*", root_dir=media_root, recursive=True)
    paths = [os.path.join(media_root, n) for n in sorted(names)]
    return [p for p in paths if os.path.isfile(p) and ibd.kind_of(p)]


# ------------------------------------------------------------------------------------------- encoder running


class ShardedRunner:
    """Runs ``encoder.apply`` jitted, one compile per kind, with the batch axis sharded over the local devices."""

    def __init__(self, encoder: MediaEncoder, batch_size: int, devices: Sequence[Any] | None = None):
        import jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        devices = list(devices or jax.local_devices())
        self.mesh = Mesh(np.asarray(devices), ("data",))
        self.batch_size = -(-batch_size // len(devices)) * len(devices)  # divisible by the data axis
        self._data = NamedSharding(self.mesh, PartitionSpec("data"))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self._params = jax.device_put(encoder.params, self._replicated)
        self._apply, self._fns = encoder.apply, {}

    def _fn(self, kind: str):
        import jax

        if kind not in self._fns:
            self._fns[kind] = jax.jit(
                lambda params, batch: self._apply(params, kind, batch),
                in_shardings=(self._replicated, self._data),
                out_shardings=self._data,
            )
        return self._fns[kind]

    def __call__(self, kind: str, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Up to ``batch_size`` same-shaped arrays -> (len(arrays), D) float32 embeddings."""
        import jax

        n = len(arrays)
        if not 0 < n <= self.batch_size:
            raise ValueError(f"runner takes 1..{self.batch_size} items, got {n}")
        batch = np.zeros((self.batch_size, *arrays[0].shape), np.float32)
        for i, a in enumerate(arrays):
            batch[i] = a
        out = np.asarray(self._fn(kind)(self._params, jax.device_put(batch, self._data)), np.float32)
        if out.ndim != 2 or out.shape[0] != self.batch_size:
            raise ValueError(f"encoder returned shape {out.shape} for a {kind} batch of {batch.shape}; expected (B, D)")
        return out[:n]


# ------------------------------------------------------------------------------------ store parts and resume


def _complete_stores(path: str) -> list[str]:
    """OUT itself (if committed) and every committed part; uncommitted part folders are dropped."""
    found = [path] if os.path.exists(os.path.join(path, es.META_FILE)) else []
    parts = os.path.join(path, PARTS_DIR)
    for name in sorted(os.listdir(parts)) if os.path.isdir(parts) else []:
        sub = os.path.join(parts, name)
        if os.path.exists(os.path.join(sub, es.META_FILE)):
            found.append(sub)
        else:
            shutil.rmtree(sub, ignore_errors=True)  # a part that died before write_store committed it
    return found


def _check_meta(store_path: str, meta: Mapping[str, Any], dtype: str) -> None:
    with open(os.path.join(store_path, es.META_FILE), encoding="utf-8") as f:
        info = json.load(f)
    old = info.get("meta", {})
    for field in _MATCH_FIELDS:
        if field in meta and old.get(field) != meta[field]:
            raise ValueError(
                f"embedding store {store_path} was built with {field}={old.get(field)!r}, this run has "
                f"{meta[field]!r}; embeddings from different encoders must not mix: pass --overwrite or another --out"
            )
    if info["dtype"] != dtype:
        raise ValueError(f"embedding store {store_path} holds {info['dtype']}, this run asks for {dtype}")


def _remove_store(path: str) -> None:
    for name in (es.META_FILE, es.RECORDS_FILE, FAILURES_FILE):
        if os.path.exists(os.path.join(path, name)):
            os.remove(os.path.join(path, name))
    shutil.rmtree(os.path.join(path, PARTS_DIR), ignore_errors=True)


def _merge(path: str, stores: list[str], *, name: str, dtype: str, meta: Mapping[str, Any]) -> int:
    """OUT + parts -> OUT. Written as a complete ``_parts/merged`` store first, then moved into place."""
    loaded = [es.load_store(s) for s in stores]

    def items() -> Iterator[tuple[int, np.ndarray]]:
        for store in loaded:
            yield from zip(store.keys.tolist(), store.values, strict=True)

    tmp, final = os.path.join(path, PARTS_DIR, MERGED + ".new"), os.path.join(path, PARTS_DIR, MERGED)
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover complete one is among ``loaded`` already
    es.write_store(tmp, items(), name=name, dtype=dtype, meta=dict(meta))
    for s in stores:  # everything is in the new merged store; the parts (and an older merged) are redundant
        if s not in (path, tmp):
            shutil.rmtree(s)
    os.replace(tmp, final)
    if os.path.exists(os.path.join(path, es.META_FILE)):
        os.remove(os.path.join(path, es.META_FILE))  # OUT is invalid until its new store.json lands
    os.replace(os.path.join(final, es.RECORDS_FILE), os.path.join(path, es.RECORDS_FILE))
    os.replace(os.path.join(final, es.META_FILE), os.path.join(path, es.META_FILE))
    shutil.rmtree(os.path.join(path, PARTS_DIR))
    with open(os.path.join(path, es.META_FILE), encoding="utf-8") as f:
        return int(json.load(f)["count"])


def _preprocessed(
    items: Sequence[tuple[int, str]], load: Callable[[str], np.ndarray], workers: int, lookahead: int
) -> Iterator[tuple[int, str, Future]]:
    """(key, path, future of load(path)) in input order, at most ``lookahead`` files in flight."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: collections.deque = collections.deque()
        it = iter(items)
        for key, path in itertools.islice(it, lookahead):
            pending.append((key, path, pool.submit(load, path)))
        while pending:
            key, path, future = pending.popleft()
            for nkey, npath in itertools.islice(it, 1):
                pending.append((nkey, npath, pool.submit(load, npath)))
            yield key, path, future


# ----------------------------------------------------------------------------------------------- the builder


def build_media_store(
    out: str,
    paths: Iterable[str],
    encoder: MediaEncoder,
    *,
    media_root: str,
    batch_size: int = 32,
    dtype: str = "float16",
    name: str | None = None,
    strict: bool = False,
    overwrite: bool = False,
    part_size: int = 4096,
    workers: int = 4,
    progress: bool = True,
    runner: Callable[[str, Sequence[np.ndarray]], np.ndarray] | None = None,
) -> CacheReport:
    """Embed every path not yet in the store at ``out`` and commit the union; see the module docstring."""
    out, media_root = os.path.abspath(out), os.path.abspath(media_root)
    meta = {"keys": KEY_SCHEME, "media_root": media_root, **encoder.meta}
    name = name or f"E^X {encoder.meta.get('encoder', 'media')} ({os.path.basename(out)})"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    report = CacheReport(out)
    by_key: dict[int, str] = {}
    for p in paths:
        key = media_key(p, media_root)
        if by_key.setdefault(key, p) != p and os.path.abspath(by_key[key]) != os.path.abspath(p):
            raise ValueError(f"media_key collision: {by_key[key]!r} and {p!r} share key {key}")
    os.makedirs(out, exist_ok=True)
    if overwrite:
        _remove_store(out)
    stores = _complete_stores(out)
    done: set[int] = set()
    for s in stores:
        _check_meta(s, meta, dtype)
        done.update(es.load_store(s).keys.tolist())
    todo = [(k, p) for k, p in by_key.items() if k not in done]
    report.skipped = len(by_key) - len(todo)
    if runner is None:  # built on the first batch: a fully resumed run never moves the params to the devices
        import jax

        size = -(-batch_size // jax.local_device_count()) * jax.local_device_count()
    else:
        size = getattr(runner, "batch_size", batch_size)
    run = runner
    parts_dir = os.path.join(out, PARTS_DIR)
    part_index = 1 + max([int(s.rsplit("-", 1)[1]) for s in stores if os.path.basename(s).startswith("part-")] or [-1])
    finished: list[tuple[int, np.ndarray]] = []
    buffers: dict[str, list[tuple[int, np.ndarray]]] = collections.defaultdict(list)

    def flush(kind: str) -> None:
        nonlocal finished, run
        if buffers[kind]:
            run = run or ShardedRunner(encoder, size)
            keys, arrays = zip(*buffers[kind], strict=True)
            finished += zip(keys, run(kind, list(arrays)), strict=True)
            buffers[kind].clear()

    def commit() -> None:
        nonlocal finished, part_index
        if finished:
            part = os.path.join(parts_dir, f"part-{part_index:06d}")
            es.write_store(part, finished, name=name, dtype=dtype, meta=meta)
            stores.append(part)
            report.written += len(finished)
            finished, part_index = [], part_index + 1

    def load_kind(path: str) -> tuple[str, np.ndarray]:
        kind = ibd.kind_of(path)
        if kind is None:
            raise ibd.MediaReadError(path, f"unsupported extension {os.path.splitext(path)[1]!r}")
        return kind, np.asarray(encoder.load(path), np.float32)

    bar = _progress(len(todo), progress)
    shapes: dict[str, tuple[int, ...]] = {}
    for key, path, future in _preprocessed(todo, load_kind, workers, lookahead=max(2 * size, 4 * workers)):
        bar.update(1)
        try:
            kind, array = future.result()
            if shapes.setdefault(kind, array.shape) != array.shape:
                raise ibd.MediaReadError(path, f"{kind} input has shape {array.shape}, others {shapes[kind]}")
        except Exception as e:  # a broken file must not stop a million-file run
            if strict:
                bar.close()
                raise
            reason = str(e) if isinstance(e, ibd.MediaReadError) else f"{path}: {type(e).__name__}: {e}"
            report.failed.append((path, reason))
            bar.set_postfix(failed=len(report.failed))
            continue
        buffers[kind].append((key, array))
        if len(buffers[kind]) >= size:
            flush(kind)
        if len(finished) >= part_size:
            commit()
    bar.close()
    for kind in list(buffers):
        flush(kind)
    commit()
    _write_failures(out, report.failed)
    if stores and (len(stores) > 1 or stores[0] != out):
        report.total = _merge(out, stores, name=name, dtype=dtype, meta=meta)
    elif stores:
        report.total = len(done)
    return report


def _write_failures(out: str, failed: list[tuple[str, str]]) -> None:
    path = os.path.join(out, FAILURES_FILE)
    if not failed:
        if os.path.exists(path):
            os.remove(path)
        return
    with open(path, "w", encoding="utf-8") as f:
        for p, reason in failed:
            f.write(json.dumps({"path": p, "error": reason}, ensure_ascii=False) + "\n")


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="embedding media", unit="file", disable=not enabled, dynamic_ncols=True)


# ------------------------------------------------------------------------------------------ ImageBind wiring


def parse_config(config: str) -> str | dict:
    """``--config``: a preset name (``imagebind_huge``), a JSON file, or inline JSON."""
    if config.strip().startswith("{"):
        return json.loads(config)
    if config.endswith(".json"):
        with open(config, encoding="utf-8") as f:
            return json.load(f)
    return config


PRESETS = ("imagebind_huge", "imagebind_tiny")


def imagebind_config(config: str | Mapping[str, Any]):
    """An ``ImageBindConfig`` without the text tower from a preset name or a dict of its fields (JSON)."""
    from spider_jax.models import imagebind as model

    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown ImageBind config {config!r}; presets: {PRESETS} (or pass JSON)")
        return getattr(model, config)(text=False)
    fields = dict(config)
    towers = {"vision": model.VisionConfig, "audio": model.AudioConfig}
    for name, cls in towers.items():
        if isinstance(fields.get(name), Mapping):
            sub = dict(fields[name])
            if "kernel_size" in sub and isinstance(sub["kernel_size"], list):
                sub["kernel_size"] = tuple(sub["kernel_size"])
            fields[name] = cls(**sub)
    fields["text"] = None  # E^X needs vision and audio only
    return model.ImageBindConfig(**fields)


def imagebind_encoder(checkpoint: str, config: str | Mapping[str, Any]) -> MediaEncoder:
    """The real encoder: Flax ImageBind (``models.imagebind.embed``) with weights read by ``convert.imagebind``.

    Imported lazily so the cache and its tests run without the model. Preprocessing sizes follow the config;
    the batch layout conversion is ``imagebind_data.to_model_inputs``.
    """
    from spider_jax.convert import imagebind as convert
    from spider_jax.models import imagebind as model

    cfg = imagebind_config(config)
    params = convert.load_imagebind(checkpoint, cfg)
    if cfg.vision is None or cfg.audio is None:
        raise ValueError(f"ImageBind config {config!r} needs both the vision and the audio tower for E^X")

    def apply(params: Any, kind: str, batch: Any) -> Any:
        modality, inputs = ibd.to_model_inputs(kind, batch)
        return model.embed(params, cfg, modality, inputs)

    load = functools.partial(
        ibd.load_media,
        image_size=cfg.vision.image_size,
        num_mel_bins=cfg.audio.num_mel_bins,
        target_length=cfg.audio.target_len,
        video_frames=cfg.vision.video_frames,
    )
    meta = {"encoder": "imagebind", "checkpoint": os.path.abspath(checkpoint), "config": config}
    return MediaEncoder(apply, params, meta, load)


def main(argv: list[str] | None = None, encoder: MediaEncoder | None = None) -> int:
    """CLI; ``encoder`` replaces the ImageBind wiring (tests, other encoders)."""
    parser = argparse.ArgumentParser(prog="python -m spider_jax.embed_cache", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="ImageBind checkpoint (e.g. imagebind_huge.pth)")
    parser.add_argument("--config", default="imagebind_huge", help=f"{'|'.join(PRESETS)}, a JSON file or inline JSON")
    parser.add_argument("--media_root", required=True, help="store keys are paths relative to this folder")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--list", help="file with one media path per line (relative to --media_root)")
    source.add_argument("--glob", help="pattern under --media_root, e.g. '**/*.jpg' (default: all known media)")
    parser.add_argument("--out", required=True, help="embedding store folder")
    parser.add_argument("--batch_size", type=int, default=32, help="per step, rounded up to the device count")
    parser.add_argument("--dtype", default="float16", choices=list(DTYPES))
    parser.add_argument("--name", default=None, help="store name")
    parser.add_argument("--part_size", type=int, default=4096, help="embeddings per resumable commit")
    parser.add_argument("--workers", type=int, default=4, help="preprocessing threads")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable file")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing store at --out")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    if encoder is None:
        if not args.checkpoint:
            parser.error("--checkpoint is required")
        encoder = imagebind_encoder(args.checkpoint, parse_config(args.config))
    paths = list_media(args.media_root, list_file=args.list, pattern=args.glob)
    if not paths:
        print(f"no media found under {args.media_root}", file=sys.stderr)
        return 1
    report = build_media_store(
        args.out,
        paths,
        encoder,
        media_root=args.media_root,
        batch_size=args.batch_size,
        dtype=args.dtype,
        name=args.name,
        strict=args.strict,
        overwrite=args.overwrite,
        part_size=args.part_size,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
