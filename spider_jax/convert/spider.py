"""Spider's trainables <-> a PyTorch state dict (one safetensors file + JSON metadata).

Only what training produces is exported (the base LLaMA stays in its own HF folder). Names and layouts follow
PyTorch conventions so the file loads with ``safetensors.torch.load_file`` into torch modules directly:

* LoRA, PEFT names: ``base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_A.weight`` (r, in) and
  ``....lora_B.weight`` (out, r); an ``adapter_config.json`` beside it lets ``peft`` pick the adapters up;
* added template tokens: ``new_tokens.embed_tokens`` (n, D) and ``new_tokens.lm_head`` (n, D), rows
  ``base_vocab_size..vocab_size-1`` of the resized tables;
* encoder projectors: ``encoder_projectors.{image|audio|video|shared}.weight`` (D, E) / ``.bias``;
* controller: ``controller.`` + the Flax path with dots; ``kernel`` -> ``weight`` as ``nn.Linear`` stores it
  (out, in) — attention projections flattened over heads (``query``: (H·hd, d), ``out``: (d, H·hd)) —
  LayerNorm ``scale`` -> ``weight``; M-Queries ``controller.queries_{x}`` (N, d) as they are.
Import reverses every rule using the shapes of a reference tree, so a round trip is exact.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from spider_jax.convert.llama import CheckpointMismatchError
from spider_jax.convert.safetensors_io import SafetensorsFile, save_file
from spider_jax.models.spider import SpiderConfig

EXPORTED_GROUPS = ("lora", "new_tokens", "projectors", "controller")
WEIGHTS_FILE = "spider_trainables.safetensors"
META_FILE = "spider_trainables.json"


def _lora_entries(path: tuple[str, ...], value: np.ndarray) -> list[tuple[str, np.ndarray, Any]]:
    """(name, torch tensor, index) per layer; scanned trees carry the layer on axis 0."""
    *module, leaf = path  # ('model', 'layers_3' | 'layers', 'self_attn', 'q_proj'), 'lora_a'
    ab = {"lora_a": "lora_A", "lora_b": "lora_B"}[leaf]
    layer_key = module[1]
    rest = ".".join(module[2:])
    if layer_key == "layers":  # nn.scan: stacked
        return [(f"base_model.model.model.layers.{i}.{rest}.{ab}.weight", value[i].T, i) for i in range(value.shape[0])]
    i = int(layer_key.split("_")[1])
    return [(f"base_model.model.model.layers.{i}.{rest}.{ab}.weight", value.T, None)]


def _to_torch(group: str, path: tuple[str, ...], value: np.ndarray) -> tuple[str, np.ndarray]:
    leaf = path[-1]
    if group == "new_tokens":
        return ("new_tokens.embed_tokens", value) if leaf == "embed" else ("new_tokens.lm_head", value.T)
    prefix = "encoder_projectors" if group == "projectors" else "controller"
    stem = ".".join((prefix, *path[:-1]))
    if leaf == "kernel":
        if path[-2] == "out" and value.ndim == 3:  # (H, hd, d) -> Linear(H*hd -> d).weight
            return f"{stem}.weight", value.reshape(-1, value.shape[-1]).T
        return f"{stem}.weight", value.reshape(value.shape[0], -1).T  # (in, ...) -> (out, in)
    if leaf == "bias":
        return f"{stem}.bias", value.reshape(-1)
    if leaf == "scale":
        return f"{stem}.weight", value
    return ".".join((prefix, *path)), value


def _from_torch(tensor: np.ndarray, name: str, like_shape: tuple[int, ...], transposed: bool) -> np.ndarray:
    """Inverse of the layout change (transpose and/or flatten) given the Flax shape."""
    array = np.asarray(tensor)
    if transposed:
        array = array.T
    if math.prod(array.shape) != math.prod(like_shape):
        raise CheckpointMismatchError(f"{name}: tensor has shape {tuple(tensor.shape)}, expected {like_shape} (Flax)")
    return array.reshape(like_shape)


def _is_transposed(group: str, path: tuple[str, ...]) -> bool:
    if group == "new_tokens":
        return path[-1] == "head"
    return path[-1] == "kernel"


def export_trainables(cfg: SpiderConfig, variables: Mapping[str, Any], folder: str) -> str:
    """Writes ``folder/spider_trainables.safetensors`` (+ metadata and a PEFT ``adapter_config.json``)."""
    os.makedirs(folder, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    for group in EXPORTED_GROUPS:
        for path, value in flatten_dict(dict(variables.get(group) or {})).items():
            value = np.asarray(value)
            entries = (
                [(n, t) for n, t, _ in _lora_entries(path, value)]
                if group == "lora"
                else [_to_torch(group, path, value)]
            )
            for name, tensor in entries:
                if name in tensors:
                    raise ValueError(f"two parameters export to the same name {name!r}")
                tensors[name] = np.ascontiguousarray(tensor)
    save_file(tensors, os.path.join(folder, WEIGHTS_FILE))
    meta = {
        "format": "spider_jax trainables v1",
        "base_vocab_size": cfg.base_vocab_size,
        "vocab_size": cfg.llm.vocab_size,
        "encoder_width": cfg.encoder_width,
        "controller_variant": cfg.controller.variant,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
    }
    with open(os.path.join(folder, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    if cfg.llm.lora is not None:
        adapter = {
            "peft_type": "LORA",
            "r": cfg.llm.lora.rank,
            "lora_alpha": cfg.llm.lora.alpha,
            "lora_dropout": cfg.llm.lora.dropout,
            "target_modules": list(cfg.llm.lora.targets),
            "bias": "none",
            "task_type": "CAUSAL_LM",
        }
        with open(os.path.join(folder, "adapter_config.json"), "w", encoding="utf-8") as f:
            json.dump(adapter, f, indent=1)
    return folder


def import_trainables(folder: str, like: Mapping[str, Any]) -> dict[str, Any]:
    """Reads an export back into the structure of ``like`` (e.g. ``nn.unbox(init_spider(...))``), groups
    ``EXPORTED_GROUPS`` only. Missing or misshapen tensors -> ``CheckpointMismatchError`` naming them."""
    path = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; write it with spider_jax.convert.spider.export_trainables")
    file = SafetensorsFile(path)
    used: set[str] = set()
    out: dict[str, Any] = {}
    for group in EXPORTED_GROUPS:
        flat = {}
        for leaf_path, value in flatten_dict(dict(like.get(group) or {})).items():
            shape = tuple(value.shape)
            if group == "lora":
                names = [n for n, _, _ in _lora_entries(leaf_path, np.zeros(shape, np.float32))]
                missing = [n for n in names if n not in file]
                if missing:
                    raise CheckpointMismatchError(f"{path}: missing tensors {missing[:3]} (of {len(missing)})")
                per_layer = shape[1:] if leaf_path[1] == "layers" else shape
                parts = [_from_torch(file[n], n, per_layer, True) for n in names]
                flat[leaf_path] = np.stack(parts) if leaf_path[1] == "layers" else parts[0]
                used.update(names)
                continue
            name, _ = _to_torch(group, leaf_path, np.zeros(shape, np.float32))
            if name not in file:
                raise CheckpointMismatchError(f"{path}: missing tensor {name!r} (Flax {group}/{'/'.join(leaf_path)})")
            flat[leaf_path] = _from_torch(file[name], name, shape, _is_transposed(group, leaf_path))
            used.add(name)
        out[group] = unflatten_dict(flat) if flat else {}
    unexpected = sorted(set(file) - used)
    if unexpected:
        raise CheckpointMismatchError(f"{path}: unexpected tensors {unexpected[:5]} (of {len(unexpected)})")
    return out
