"""A decoder's own text encoder, in Flax: T_e of the T-Prompts, encoded exactly as the diffusers pipeline does.

Why one place: the T_e stores (``embedding_store``), the TM-Fusion at generation time and the diffusion pipelines
all need "this decoder's text conditioning for these strings", and they must agree to the last detail (which
output, padding, mask, normalisation), or the controller learns to aim at a target the decoder never sees:

* ``"clip"`` (Stable Diffusion, Zeroscope): ``last_hidden_state`` (B, 77, D), padded to the tokenizer's
  ``model_max_length``; no attention mask unless the encoder config sets ``use_attention_mask`` (as
  ``StableDiffusionPipeline.encode_prompt``).
* ``"clap"`` (AudioLDM): ``text_embeds`` (B, 512) with the attention mask, L2-normalised (as
  ``AudioLDMPipeline._encode_prompt``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spider_jax.convert.folders import read_config

KINDS = ("clip", "clap")


def _component(folder: str, name: str) -> str:
    """``folder/name`` when ``folder`` is a pipeline root holding it, else ``folder`` itself."""
    sub = os.path.join(folder, name)
    return sub if os.path.isdir(sub) else folder


class DecoderTextEncoder:
    """Tokenizer + jitted Flax text encoder loaded from a local transformers/diffusers folder.

    ``folder`` is a diffusers pipeline root (``text_encoder/`` + ``tokenizer/``) or one folder holding both the
    encoder (config.json + weights) and the tokenizer files. Call it with a list of strings; returns float32 numpy.
    """

    def __init__(self, folder: str | os.PathLike, kind: str, *, dtype: str = "float32", batch_size: int = 64):
        from spider_jax.convert.clap import load_clap_text
        from spider_jax.convert.clip import load_clip_text
        from spider_jax.models import text_encoders as te

        if kind not in KINDS:
            raise ValueError(f"unknown text encoder kind {kind!r}; expected one of {KINDS}")
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"text encoder folder {folder} does not exist")
        self.kind, self.batch_size = kind, int(batch_size)
        encoder_dir, tokenizer_dir = _component(folder, "text_encoder"), _component(folder, "tokenizer")
        if kind == "clip":
            # The diffusers pipelines read last_hidden_state of CLIPTextModel: a projection in the file is unused.
            self.config, params = load_clip_text(encoder_dir, with_projection=False, dtype=dtype)
            self.tokenizer = te.load_clip_tokenizer(tokenizer_dir)
            module = te.CLIPTextModel(self.config)
            self.use_mask = bool(read_config(encoder_dir).get("use_attention_mask", False))
        else:
            self.config, params = load_clap_text(encoder_dir, dtype=dtype)
            self.tokenizer = te.load_clap_tokenizer(tokenizer_dir)
            module = te.ClapTextModel(self.config)
            self.use_mask = True
        self.max_length = int(self.tokenizer.model_max_length)
        if self.max_length > 1_000_000:  # transformers' "unset" sentinel
            raise ValueError(f"tokenizer in {tokenizer_dir} has no model_max_length; set it in tokenizer_config.json")
        self.params = jax.device_put(params)

        def encode(params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
            out = module.apply({"params": params}, ids, mask if self.use_mask else None)
            if kind == "clip":
                return out.last_hidden_state.astype(jnp.float32)
            return te.l2_normalize(out.text_embeds.astype(jnp.float32))

        self._encode = jax.jit(encode)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Per-text shape of the conditioning: (77, D) for CLIP, (P,) for CLAP."""
        if self.kind == "clip":
            return (self.max_length, self.config.hidden_size)
        return (self.config.projection_dim,)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        from spider_jax.models.text_encoders import tokenize

        texts = list(texts)
        if not texts:
            return np.zeros((0, *self.output_shape), np.float32)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            ids, mask = tokenize(self.tokenizer, batch, self.max_length)
            pad = self.batch_size - len(batch) if len(texts) > self.batch_size else 0  # one compiled shape
            if pad:
                ids = np.concatenate([ids, np.repeat(ids[-1:], pad, 0)])
                mask = np.concatenate([mask, np.repeat(mask[-1:], pad, 0)])
            chunks.append(np.asarray(self._encode(self.params, ids, mask))[: len(batch)])
        return np.concatenate(chunks)
