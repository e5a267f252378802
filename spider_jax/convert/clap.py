"""HF CLAP text branch (AudioLDM's text encoder) <-> our Flax :class:`ClapTextModel` parameters.

``load_clap_text(folder)`` accepts a ``ClapTextModelWithProjection`` folder (AudioLDM's ``text_encoder/``) or a
full ``ClapModel`` one (e.g. ``laion/clap-htsat-unfused``): both name the text tower ``text_model.*`` and its
projection ``text_projection.*``; the audio tower of a full model is skipped. ``save_clap_text`` writes a
``ClapTextModelWithProjection`` folder that ``transformers`` loads with ``from_pretrained``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from spider_jax.convert.clip import (
    Entry,
    layer_norm,
    linear,
    params_to_state,
    state_to_params,
    torch_dtype_name,
)
from spider_jax.convert.folders import (
    TRANSFORMERS_WEIGHTS,
    FolderState,
    read_config,
    write_config,
    write_weights,
)
from spider_jax.models.llama import as_dtype
from spider_jax.models.text_encoders import ClapTextConfig

# Persistent buffers transformers stores (arange / zeros): recomputed, never loaded; written back on export.
_BUFFERS = ("text_model.embeddings.position_ids", "text_model.embeddings.token_type_ids")
_CLAP_MODEL_ONLY = ("audio_model.", "audio_projection.", "logit_scale_a", "logit_scale_t")


def clap_entries(config: ClapTextConfig) -> list[Entry]:
    """The name map for :class:`spider_jax.models.text_encoders.ClapTextModel` of this config."""
    d, f = config.hidden_size, config.intermediate_size
    root, p = ("text_model",), "text_model."
    out: list[Entry] = [
        (root + ("word_embeddings",), f"{p}embeddings.word_embeddings.weight", False, (config.vocab_size, d)),
        (root + ("position_embeddings",), f"{p}embeddings.position_embeddings.weight", False,
         (config.max_position_embeddings, d)),
        (root + ("token_type_embeddings",), f"{p}embeddings.token_type_embeddings.weight", False,
         (config.type_vocab_size, d)),
    ]  # fmt: skip
    out += layer_norm(root + ("embeddings_layer_norm",), f"{p}embeddings.LayerNorm", d)
    for i in range(config.num_hidden_layers):
        layer, hf = root + (f"layers_{i}",), f"{p}encoder.layer.{i}"
        for proj in ("query", "key", "value"):
            out += linear(layer + ("attention", proj), f"{hf}.attention.self.{proj}", d, d)
        out += linear(layer + ("attention_output",), f"{hf}.attention.output.dense", d, d)
        out += layer_norm(layer + ("attention_layer_norm",), f"{hf}.attention.output.LayerNorm", d)
        out += linear(layer + ("intermediate",), f"{hf}.intermediate.dense", d, f)
        out += linear(layer + ("output",), f"{hf}.output.dense", f, d)
        out += layer_norm(layer + ("output_layer_norm",), f"{hf}.output.LayerNorm", d)
    out += linear(root + ("pooler",), f"{p}pooler.dense", d, d)
    q = config.projection_dim
    out += linear(("text_projection", "linear1"), "text_projection.linear1", d, q)
    out += linear(("text_projection", "linear2"), "text_projection.linear2", q, q)
    return out


def clap_config_to_hf(config: ClapTextConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    return {
        "architectures": ["ClapTextModelWithProjection"],
        "model_type": "clap_text_model",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "hidden_act": config.hidden_act,
        "layer_norm_eps": config.layer_norm_eps,
        "projection_dim": config.projection_dim,
        "projection_hidden_act": config.projection_hidden_act,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_factor": 1.0,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "dtype": torch_dtype,
    }


def load_clap_text(folder: str | os.PathLike, **config_overrides: Any) -> tuple[ClapTextConfig, dict[str, Any]]:
    """``(config, params)`` from a local ClapTextModelWithProjection or ClapModel folder (host numpy arrays).

    ``dtype`` / ``param_dtype`` overrides set the compute dtype and cast the tensors.
    """
    folder = os.fspath(folder)
    hf = read_config(folder)
    config = ClapTextConfig.from_hf_config(hf, **config_overrides)
    cast = as_dtype(config_overrides["param_dtype"]) if "param_dtype" in config_overrides else None
    state = FolderState(folder, weights=(TRANSFORMERS_WEIGHTS,))
    full_model = hf.get("model_type") == "clap"

    def ignored(name: str) -> bool:
        return name in _BUFFERS or (full_model and name.startswith(_CLAP_MODEL_ONLY))

    params = state_to_params(state, clap_entries(config), folder, ignored, cast, what="CLAP text")
    return config, params


def save_clap_text(
    config: ClapTextConfig, params: Mapping[str, Any], folder: str | os.PathLike, dtype: Any = None
) -> None:
    """Writes ``config.json`` + ``model.safetensors`` for ``transformers.ClapTextModelWithProjection``."""
    state = params_to_state(params, clap_entries(config), dtype)
    positions = config.max_position_embeddings
    state[_BUFFERS[0]] = np.arange(positions, dtype=np.int64)[None]
    state[_BUFFERS[1]] = np.zeros((1, positions), np.int64)
    write_weights(state, folder, TRANSFORMERS_WEIGHTS)
    write_config(clap_config_to_hf(config, torch_dtype_name(state)), folder)
