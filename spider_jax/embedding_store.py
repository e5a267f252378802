"""Precomputed embeddings keyed by a 63-bit ``stable_key``: decoder text-encoder outputs (T_e) and ImageBind E^X.

The Spider training step never runs the frozen decoder text encoders or ImageBind itself; the input pipeline emits
keys (``tprompt_key``, ``input_key``, ``target_key``) and looks the embeddings up here. A store is written once
(``write_store`` / ``build_text_store`` / the CLI) and read on every host with plain numpy:

    path/embeddings.array_record   one record per item: 8-byte little-endian int64 key + raw little-endian array bytes
    path/store.json                name, shape, dtype, count, duplicates, meta, format_version (written last)
    path/texts.jsonl               (text stores only) {"key", "text"} per line, to show the caption when debugging

CLI: ``python -m spider_jax.embedding_store text --encoder_folder F --kind clip --captions FILE --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from spider_jax.input_pipeline import stable_key

FORMAT_VERSION = 1
RECORDS_FILE = "embeddings.array_record"
META_FILE = "store.json"
TEXTS_FILE = "texts.jsonl"
_DTYPES = ("float16", "float32")
_KEY_BYTES = 8
_READ_CHUNK = 4096  # records per read, so peak memory is the final arrays plus one chunk of bytes
_WRITTEN_BY = (
    "stores are written by spider_jax.embedding_store.write_store / build_text_store "
    "(CLI: python -m spider_jax.embedding_store text ...)"
)


class MissingEmbeddingError(KeyError):
    """A non-zero key has no embedding: the store was built over different captions/media than the pipeline reads."""

    def __init__(self, message: str, missing: np.ndarray):
        super().__init__(message)
        self.missing = missing

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class EmbeddingStore:
    """In-memory read view: ``keys`` sorted int64 (N,), ``values`` (N, *shape) float16/float32 as stored."""

    def __init__(
        self, keys: np.ndarray, values: np.ndarray, *, name: str = "", path: str = "", meta: dict | None = None
    ):
        keys = np.asarray(keys, dtype=np.int64)
        values = np.asarray(values)
        if keys.ndim != 1 or len(keys) != len(values):
            raise ValueError(f"keys must be (N,) matching values (N, ...); got {keys.shape} and {values.shape}")
        if len(keys) > 1 and np.any(np.diff(keys) < 0):  # load_store's rows are in write order; sort once here
            order = np.argsort(keys, kind="stable")
            keys, values = keys[order], values[order]
        self.keys, self.values = keys, values
        if len(keys) > 1 and np.any(np.diff(self.keys) == 0):
            raise ValueError(f"embedding store {name or path!r} holds duplicate keys")
        self.shape: tuple[int, ...] = tuple(values.shape[1:])
        self.dtype = values.dtype
        self.name, self.path, self.meta = name, path, dict(meta or {})
        self._texts: dict[int, str] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        try:
            key = operator.index(key)
        except TypeError:
            return False
        if not 0 < key < 2**63:
            return False
        i = int(np.searchsorted(self.keys, key))
        return i < len(self.keys) and int(self.keys[i]) == key

    def lookup(self, keys: np.ndarray, *, allow_missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(float32 embeddings of shape keys.shape + self.shape, found mask of keys.shape); key 0 = no entry."""
        keys = np.asarray(keys)
        if keys.dtype.kind not in "iu":
            raise TypeError(f"embedding keys must be integers, got dtype {keys.dtype}")
        flat = keys.reshape(-1).astype(np.int64)
        out = np.zeros((flat.size, *self.shape), np.float32)
        if len(self.keys):
            idx = np.minimum(np.searchsorted(self.keys, flat), len(self.keys) - 1)
            found = (self.keys[idx] == flat) & (flat != 0)
            out[found] = self.values[idx[found]]
        else:
            found = np.zeros(flat.shape, bool)
        missing = (flat != 0) & ~found
        if missing.any() and not allow_missing:
            bad = np.unique(flat[missing])
            raise MissingEmbeddingError(
                f"{len(bad)} key(s) missing from embedding store {self.name!r} at {self.path or '<memory>'} "
                f"({len(self)} entries), e.g. {bad[:5].tolist()}; build the store over the same captions/media the "
                "pipeline reads (stable_key(text) / stable_key(media_path)), or pass allow_missing=True",
                bad,
            )
        return out.reshape(keys.shape + self.shape), found.reshape(keys.shape)

    def text(self, key: int) -> str | None:
        """The caption a text-store key was built from (read lazily from texts.jsonl), for debugging."""
        if self._texts is None:
            file = os.path.join(self.path, TEXTS_FILE) if self.path else ""
            self._texts = {}
            if file and os.path.exists(file):
                with open(file, encoding="utf-8") as f:
                    self._texts = {int(r["key"]): r["text"] for r in map(json.loads, f) if r}
        return self._texts.get(int(key))


def _check_dtype(dtype: Any) -> np.dtype:
    if np.dtype(dtype).name not in _DTYPES:
        raise ValueError(f"embedding store dtype must be one of {_DTYPES}, got {dtype!r}")
    return np.dtype(dtype).newbyteorder("<")


def write_store(
    path: str,
    items: Iterable[tuple[int, np.ndarray]],
    *,
    name: str,
    dtype: str = "float16",
    meta: dict | None = None,
) -> str:
    """Write (key, array) items to ``path/``; the first of duplicate keys wins; store.json goes last (commit marker)."""
    path = os.fspath(path)
    dt = _check_dtype(dtype)
    os.makedirs(path, exist_ok=True)
    records, tmp = os.path.join(path, RECORDS_FILE), os.path.join(path, RECORDS_FILE + ".tmp")
    meta_path = os.path.join(path, META_FILE)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # a half-rewritten store must not look valid
    seen: set[int] = set()
    shape: tuple[int, ...] | None = None
    first_key = duplicates = 0
    writer = ArrayRecordWriter(tmp, "group_size:1")
    try:
        for key, value in items:
            key = operator.index(key)
            if not 0 < key < 2**63:
                raise ValueError(f"store {name!r}: key {key} must be a positive int64 (0 is reserved for 'no entry')")
            if key in seen:
                duplicates += 1
                continue
            arr = np.asarray(value)
            if shape is None:
                shape, first_key = arr.shape, key
            elif arr.shape != shape:
                raise ValueError(
                    f"store {name!r}: key {key} has shape {arr.shape} but the first item (key {first_key}) has shape "
                    f"{shape}; all items of a store must share one shape"
                )
            with np.errstate(over="ignore"):  # overflow is reported just below, naming the key
                cast = np.ascontiguousarray(arr, dtype=dt)
            if not np.all(np.isfinite(cast)):  # NaN/inf (e.g. float16 overflow) would silently poison the loss
                raise ValueError(f"store {name!r}: key {key} has non-finite values as {dt.name}")
            seen.add(key)
            writer.write(key.to_bytes(_KEY_BYTES, "little") + cast.tobytes())
    finally:
        writer.close()
    if shape is None:
        os.remove(tmp)
        raise ValueError(f"store {name!r}: no items to write")
    os.replace(tmp, records)
    info = dict(
        format_version=FORMAT_VERSION,
        name=name,
        shape=list(shape),
        dtype=dt.name,
        count=len(seen),
        duplicates=duplicates,
        meta=dict(meta or {}),
    )
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return path


def load_store(path: str) -> EmbeddingStore:
    """Read a whole store into memory (sorted by key) so lookups are a vectorised searchsorted."""
    path = os.fspath(path)
    meta_path, records = os.path.join(path, META_FILE), os.path.join(path, RECORDS_FILE)
    for p in (path, meta_path, records):
        if not os.path.exists(p):
            raise FileNotFoundError(f"embedding store file {p} not found; {_WRITTEN_BY}")
    with open(meta_path, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format_version {info['format_version']} is newer than {FORMAT_VERSION}")
    shape, dt = tuple(info["shape"]), _check_dtype(info["dtype"])
    expected = _KEY_BYTES + math.prod(shape) * dt.itemsize
    row = np.dtype([("key", "<i8"), ("value", dt, shape)])
    reader = ArrayRecordReader(records)
    try:
        n = reader.num_records()
        if n != info["count"]:
            raise ValueError(f"{records}: holds {n} records but {meta_path} says count={info['count']}")
        table = np.empty(n, row)
        buf = table.view(np.uint8)
        for start in range(0, n, _READ_CHUNK):
            for i, rec in enumerate(reader.read(start, min(start + _READ_CHUNK, n)), start):
                if len(rec) != expected:
                    raise ValueError(
                        f"{records}: record {i} has {len(rec)} bytes, expected {expected} "
                        f"(8-byte key + {shape} {dt.name}); the file is corrupt or does not match {META_FILE}"
                    )
                buf[i * expected : (i + 1) * expected] = np.frombuffer(rec, np.uint8)
    finally:
        reader.close()
    order = np.argsort(table["key"], kind="stable")  # rows are in write order; gather once into contiguous arrays
    keys, values = table["key"][order], table["value"][order].astype(dt.newbyteorder("="), copy=False)
    del table
    return EmbeddingStore(keys, values, name=info["name"], path=path, meta=info.get("meta"))


def build_text_store(
    path: str,
    texts: Iterable[str],
    encoder: Callable[[list[str]], np.ndarray],
    *,
    name: str,
    batch_size: int = 64,
    dtype: str = "float16",
    meta: dict | None = None,
) -> str:
    """Encode each distinct text once, key it by ``stable_key(text)`` (what the pipeline emits) and write a store."""
    unique = list(dict.fromkeys(texts))
    keys = [stable_key(t) for t in unique]
    by_key: dict[int, str] = {}
    for k, t in zip(keys, unique, strict=True):
        if k in by_key or k == 0:  # 2**-63-unlikely, but a silent wrong T_e would be worse than an error
            raise ValueError(f"stable_key collision/zero key {k} for texts {by_key.get(k)!r} and {t!r}")
        by_key[k] = t
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, TEXTS_FILE), "w", encoding="utf-8") as f:
        for k, t in by_key.items():
            f.write(json.dumps({"key": k, "text": t}, ensure_ascii=False) + "\n")

    def items() -> Iterable[tuple[int, np.ndarray]]:
        for s in range(0, len(unique), batch_size):
            batch = unique[s : s + batch_size]
            emb = np.asarray(encoder(batch))
            if emb.shape[0] != len(batch):
                raise ValueError(f"encoder returned {emb.shape[0]} embeddings for {len(batch)} texts")
            yield from zip(keys[s : s + batch_size], emb, strict=True)

    return write_store(path, items(), name=name, dtype=dtype, meta=meta)


BACKENDS = ("flax", "torch")


def text_encoder(folder: str, kind: str, *, backend: str = "flax") -> Callable[[list[str]], np.ndarray]:
    """The decoder text encoder in ``folder`` as ``texts -> np.ndarray``: our Flax port (default, see
    ``spider_jax.conditioning``) or the transformers PyTorch model (the reference; same outputs to ~1e-6)."""
    if backend == "flax":
        from spider_jax.conditioning import DecoderTextEncoder

        return DecoderTextEncoder(folder, kind)
    if backend == "torch":
        return hf_text_encoder(folder, kind)
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def hf_text_encoder(folder: str, kind: str, *, device: str = "cpu") -> Callable[[list[str]], np.ndarray]:
    """A local PyTorch transformers text encoder, encoding exactly as the diffusers pipeline conditions its decoder.

    The reference the Flax port (``spider_jax.conditioning``) is tested against. ``folder`` is either the encoder
    folder (with the tokenizer files in it) or a diffusers pipeline folder with ``text_encoder/`` and
    ``tokenizer/``. Kinds:

    * ``"clip"`` (Stable Diffusion): CLIPTextModel last_hidden_state (B, model_max_length=77, D); like
      StableDiffusionPipeline, no attention mask unless the config sets ``use_attention_mask``.
    * ``"clap"`` (AudioLDM): ClapTextModelWithProjection text_embeds (B, 512), L2-normalised as AudioLDMPipeline
      does (the model's own text_embeds are not normalised).
    """
    import torch
    import transformers

    sub = lambda name: os.path.join(folder, name) if os.path.isdir(os.path.join(folder, name)) else folder
    if kind == "clip":
        model = transformers.CLIPTextModel.from_pretrained(sub("text_encoder"), dtype=torch.float32)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(sub("tokenizer"))
    elif kind == "clap":
        model = transformers.ClapTextModelWithProjection.from_pretrained(sub("text_encoder"), dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(sub("tokenizer"))
    else:
        raise ValueError(f"unknown text encoder kind {kind!r}; expected 'clip' or 'clap'")
    model = model.float().to(device).eval()
    max_length = tokenizer.model_max_length
    if max_length > 1_000_000:  # transformers' "unset" sentinel: padding to it would never finish
        raise ValueError(f"tokenizer in {sub('tokenizer')} has no model_max_length; set it in tokenizer_config.json")
    use_mask = kind == "clap" or bool(getattr(model.config, "use_attention_mask", False))

    def encode(texts: list[str]) -> np.ndarray:
        tok = tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        mask = tok.attention_mask.to(device) if use_mask else None
        with torch.no_grad():
            out = model(input_ids=tok.input_ids.to(device), attention_mask=mask)
            emb = out.last_hidden_state if kind == "clip" else torch.nn.functional.normalize(out.text_embeds, dim=-1)
        return emb.float().cpu().numpy()

    return encode


def read_captions(file: str) -> list[str]:
    """Captions from a .txt (one per non-empty line) or a .jsonl with a "caption" field."""
    with open(file, encoding="utf-8") as f:
        lines = [(i, line.strip()) for i, line in enumerate(f, 1) if line.strip()]
    if not file.endswith(".jsonl"):
        return [line for _, line in lines]
    captions = []
    for i, line in lines:
        record = json.loads(line)
        if "caption" not in record:
            raise ValueError(f"{file}:{i}: no 'caption' field (keys: {sorted(record)})")
        captions.append(record["caption"])
    return captions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spider_jax.embedding_store", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    text = sub.add_parser("text", help="encode captions with a decoder text encoder (T_e)")
    text.add_argument("--encoder_folder", required=True)
    text.add_argument("--kind", required=True, choices=["clip", "clap"])
    text.add_argument("--captions", required=True, help=".txt (one caption per line) or .jsonl with 'caption'")
    text.add_argument("--out", required=True)
    text.add_argument("--name", default=None, help="store name (default: the --out folder name)")
    text.add_argument("--batch_size", type=int, default=64)
    text.add_argument("--dtype", default="float16", choices=list(_DTYPES))
    text.add_argument("--backend", default="flax", choices=list(BACKENDS), help="flax (ours) or torch (transformers)")
    args = parser.parse_args(argv)
    captions = read_captions(args.captions)
    out = build_text_store(
        args.out,
        captions,
        text_encoder(args.encoder_folder, args.kind, backend=args.backend),
        name=args.name or os.path.basename(os.path.normpath(args.out)),
        batch_size=args.batch_size,
        dtype=args.dtype,
        meta=dict(
            kind=args.kind,
            backend=args.backend,
            encoder_folder=os.path.abspath(args.encoder_folder),
            captions=args.captions,
        ),
    )
    with open(os.path.join(out, META_FILE), encoding="utf-8") as f:
        info = json.load(f)
    print(f"wrote {info['count']} embeddings of shape {tuple(info['shape'])} ({info['dtype']}) to {out}")


if __name__ == "__main__":
    main()
