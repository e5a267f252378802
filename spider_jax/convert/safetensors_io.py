"""Minimal safetensors reader/writer on numpy memory maps.

Why our own: the numpy backend of ``safetensors`` has no bfloat16, and memory-mapping lets a 7B checkpoint be
read tensor by tensor without first materialising it (only what is touched is paged in). Format: 8-byte
little-endian header length, a JSON header ``{name: {dtype, shape, data_offsets}, "__metadata__": {...}}``, then
the raw little-endian bytes.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping

import ml_dtypes
import numpy as np

_TO_NUMPY = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}


class SafetensorsError(ValueError):
    """A safetensors file is malformed or holds something we cannot read."""


class SafetensorsFile(Mapping):
    """Read-only mapping ``name -> np.ndarray`` backed by a memory map of ``path``."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(header_len))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{self.path}: not a readable safetensors file ({e})") from e
        self.metadata = header.pop("__metadata__", {}) or {}
        self._header = header
        self._data_start = 8 + header_len
        self._mmap = None

    def _buffer(self) -> np.memmap:
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mmap

    def __getitem__(self, name: str) -> np.ndarray:
        info = self._header[name]
        dtype = _TO_NUMPY.get(info["dtype"])
        if dtype is None:
            raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        raw = self._buffer()[self._data_start + begin : self._data_start + end]
        expected = int(np.prod(info["shape"], dtype=np.int64)) * dtype.itemsize
        if raw.size != expected:
            raise SafetensorsError(
                f"{self.path}: tensor {name!r} should hold {expected} bytes for shape {info['shape']} "
                f"{info['dtype']}, found {raw.size} (truncated file?)"
            )
        return raw.view(dtype).reshape(info["shape"])

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def __iter__(self) -> Iterator[str]:
        return iter(self._header)

    def __len__(self) -> int:
        return len(self._header)


def save_file(
    tensors: Mapping[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Writes ``tensors`` (numpy or jax arrays, bf16 included) as one safetensors file, atomically."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    arrays = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name], order="C")  # not ascontiguousarray: it turns 0-d scalars into (1,)
        if arr.dtype not in _FROM_NUMPY:
            raise SafetensorsError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored in safetensors")
        header[name] = {
            "dtype": _FROM_NUMPY[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned, as the reference writer does
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes())
    os.replace(tmp, path)
