"""Reading and writing the weight folders of Hugging Face models (transformers and diffusers).

Why shared: every converter (LLaMA, CLIP, CLAP, UNet, VAE, vocoder, ImageBind) starts from a folder holding
``config.json`` plus weights under one basename — ``model`` for transformers, ``diffusion_pytorch_model`` for
diffusers — as one safetensors file, a sharded safetensors index, or the legacy ``.bin`` pickles. The reader is
lazy (memory-mapped safetensors), so a converter touches only the tensors it needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from spider_jax.convert.safetensors_io import SafetensorsFile, save_file

TRANSFORMERS_WEIGHTS = "model"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
LEGACY_BIN = {"model": "pytorch_model", "diffusion_pytorch_model": "diffusion_pytorch_model"}


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not match what the config expects (missing, unexpected or wrong shape)."""


def torch_load(path: str) -> dict[str, np.ndarray]:
    """A ``.bin`` pickle as numpy arrays (bfloat16 kept as ``ml_dtypes.bfloat16``)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path}: reading .bin checkpoints needs torch; install it or convert to safetensors") from e
    sd = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for k, v in sd.items():
        if v.dtype == torch.bfloat16:
            out[k] = v.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[k] = v.numpy()
    return out


class FolderState(Mapping):
    """Lazy mapping ``tensor name -> np.ndarray`` over all weight files of a model folder.

    ``weights`` lists the basenames to look for, in order (``model`` for transformers folders,
    ``diffusion_pytorch_model`` for diffusers ones); for each, an index, a single safetensors file, then the
    ``.bin`` equivalents are tried.
    """

    def __init__(self, folder: str | os.PathLike, weights: Sequence[str] = (TRANSFORMERS_WEIGHTS, DIFFUSERS_WEIGHTS)):
        self.folder = os.fspath(folder)
        self._where: dict[str, str] = {}
        self._open: dict[str, Any] = {}
        tried = []
        for base in weights:
            binary = LEGACY_BIN.get(base, base)
            for name in (
                f"{base}.safetensors.index.json",
                f"{base}.safetensors",
                f"{binary}.bin.index.json",
                f"{binary}.bin",
            ):
                tried.append(name)
                if not os.path.exists(os.path.join(self.folder, name)):
                    continue
                if name.endswith(".index.json"):
                    self._read_index(name)
                else:
                    self._where = {n: name for n in self._file(name)}
                return
        raise FileNotFoundError(f"{self.folder}: no weights found (looked for {', '.join(tried)})")

    def _read_index(self, name: str) -> None:
        with open(os.path.join(self.folder, name)) as f:
            weight_map = json.load(f)["weight_map"]
        for shard in set(weight_map.values()):
            if not os.path.exists(os.path.join(self.folder, shard)):
                raise FileNotFoundError(f"{os.path.join(self.folder, name)} names shard {shard!r}, which is missing")
        self._where = dict(weight_map)

    def _file(self, name: str) -> Mapping[str, np.ndarray]:
        if name not in self._open:
            full = os.path.join(self.folder, name)
            self._open[name] = SafetensorsFile(full) if name.endswith(".safetensors") else torch_load(full)
        return self._open[name]

    def __getitem__(self, key: str) -> np.ndarray:
        return self._file(self._where[key])[key]

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)


def read_config(path: str | os.PathLike, name: str = "config.json") -> dict[str, Any]:
    """The JSON config of a model folder, with an error that says what kind of folder was expected."""
    config_path = os.path.join(os.fspath(path), name)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: expected a transformers/diffusers model folder")
    with open(config_path) as f:
        return json.load(f)


def shard_state(state: Mapping[str, np.ndarray], max_shard_bytes: int) -> list[dict[str, np.ndarray]]:
    """Splits a state dict into consecutive shards of at most ``max_shard_bytes`` (a bigger tensor stands alone)."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in state:  # insertion order keeps layers together
        nbytes = state[name].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = state[name]
        size += nbytes
    return shards


def write_weights(
    state: Mapping[str, np.ndarray],
    folder: str | os.PathLike,
    weights: str = TRANSFORMERS_WEIGHTS,
    max_shard_size: int = 5 * 2**30,
) -> None:
    """Writes ``state`` as ``{weights}.safetensors``, or shards plus ``{weights}.safetensors.index.json``."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    shards = shard_state(state, max_shard_size)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(folder, f"{weights}.safetensors"))
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"{weights}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(folder, name))
        weight_map.update({k: name for k in shard})
    total = int(sum(a.nbytes for a in state.values()))
    with open(os.path.join(folder, f"{weights}.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def write_config(config: Mapping[str, Any], folder: str | os.PathLike, name: str = "config.json") -> None:
    os.makedirs(os.fspath(folder), exist_ok=True)
    with open(os.path.join(os.fspath(folder), name), "w") as f:
        json.dump(dict(config), f, indent=2)
