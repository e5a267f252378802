"""From input-pipeline examples to Spider batches: per-modality group slots plus embeddings from the stores.

The input pipeline emits modality-agnostic group arrays (``mprompt_positions``/``mprompt_modality``/
``tprompt_key``/``target_key``); the controller needs, for each output modality X, that modality's groups with
its decoder's T_e (different shape per decoder) and the encoder embedding E^X of the target medium. This map
runs on the host (numpy) inside the grain pipeline, so the train step only sees dense arrays.

Stores (``embedding_store.EmbeddingStore``-like: ``lookup(keys, allow_missing=...) -> (values, found)``):
``text_stores[X]`` maps T-Prompt keys to T_e^X; ``media_store`` maps media-path keys to E (ImageBind). A missing
store means the loss term is off for that modality (found = False everywhere); a key missing from a present
store is an error unless ``allow_missing``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from spider_jax.input_pipeline import modality_code
from spider_jax.models.controller import OutputSpec


class Store(Protocol):
    def lookup(self, keys: np.ndarray, allow_missing: bool = False) -> tuple[np.ndarray, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class SpiderInputSpec:
    outputs: Mapping[str, OutputSpec]  # the controller's output modalities
    groups_per_modality: int = 4  # slots per example per output modality
    encoder_width: int = 1024

    def example_shapes(self, max_inputs: int) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Shape and dtype of every field this map adds (without the batch axis)."""
        g, e = self.groups_per_modality, self.encoder_width
        shapes = {"input_embeddings": ((max_inputs, e), np.float32)}
        for modality, spec in self.outputs.items():
            x = modality.lower()
            shapes[f"{x}_positions"] = ((g,), np.int32)
            shapes[f"{x}_te"] = ((g, spec.text_length, spec.width), np.float32)
            shapes[f"{x}_te_found"] = ((g,), np.bool_)
            shapes[f"{x}_target"] = ((g, e), np.float32)
            shapes[f"{x}_target_found"] = ((g,), np.bool_)
        return shapes


def _lookup(store: Store | None, keys: np.ndarray, shape: tuple[int, ...], allow_missing: bool):
    if store is None:
        return np.zeros(keys.shape + shape, np.float32), np.zeros(keys.shape, bool)
    values, found = store.lookup(keys, allow_missing=allow_missing)
    if values.shape[keys.ndim :] != shape:
        raise ValueError(f"store gives embeddings of shape {values.shape[keys.ndim :]}, the model expects {shape}")
    return values.astype(np.float32), found


def attach_embeddings(
    example: Mapping[str, np.ndarray],
    spec: SpiderInputSpec,
    text_stores: Mapping[str, Store | None],
    media_store: Store | None,
    allow_missing: bool = False,
) -> dict[str, np.ndarray]:
    """One example (no batch axis) -> the same fields plus the per-modality group arrays of ``models.spider``.

    Groups beyond ``groups_per_modality`` for a modality are left out of the controller losses (their tokens
    still train the LM); ``dropped_groups`` counts them so the loop can report it.
    """
    out = {k: v for k, v in example.items() if k not in ("tprompt_key", "target_key", "input_key")}
    out["input_embeddings"], _ = _lookup(media_store, example["input_key"], (spec.encoder_width,), allow_missing)
    g = spec.groups_per_modality
    dropped = 0
    for modality, ospec in spec.outputs.items():
        x = modality.lower()
        (where,) = np.nonzero(example["mprompt_modality"] == modality_code(modality))
        dropped += max(0, len(where) - g)
        where = where[:g]
        positions = np.full(g, -1, np.int32)
        positions[: len(where)] = example["mprompt_positions"][where]
        te_keys = np.zeros(g, np.int64)
        te_keys[: len(where)] = example["tprompt_key"][where]
        target_keys = np.zeros(g, np.int64)
        target_keys[: len(where)] = example["target_key"][where]
        te, te_found = _lookup(text_stores.get(modality), te_keys, (ospec.text_length, ospec.width), allow_missing)
        target, target_found = _lookup(media_store, target_keys, (spec.encoder_width,), allow_missing)
        out[f"{x}_positions"] = positions
        out[f"{x}_te"], out[f"{x}_te_found"] = te, te_found & (positions >= 0)
        out[f"{x}_target"], out[f"{x}_target_found"] = target, target_found & (positions >= 0)
    out["dropped_groups"] = np.asarray(dropped, np.int32)
    return out
