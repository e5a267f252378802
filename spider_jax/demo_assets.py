"""The tiny demo's stand-ins for weights it cannot download, saved in the formats a real run reads.

* Decoder text encoders: tiny random ``transformers.CLIPTextModel`` folders (image: SD1.5-style, video:
  Zeroscope-style, wider) and a tiny ``ClapTextModelWithProjection`` (audio: AudioLDM-style), each with a
  character-level BPE tokenizer written here. Their outputs fill the T_e stores through the same
  ``embedding_store.hf_text_encoder`` a real run uses with the real SD1.5 / Zeroscope / AudioLDM folders.
* Media store (E^X): ImageBind lands later (its own issue); until then the demo places each medium in a joint
  text-media space the way ImageBind does for paired data — by the normalised embedding of the medium's caption
  from a tiny CLIP text encoder with a projection to ``encoder_width``. Real runs point ``stores.media`` at an
  ImageBind store instead.
Everything is built once under ``<output_dir>/demo_assets`` and reused.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from spider_jax import embedding_store
from spider_jax.input_pipeline import media_key
from spider_jax.tmm import Sample

_CHARS = string.ascii_lowercase + string.digits + string.punctuation
_ROBERTA_SPACE = "\u0120"  # byte-level BPE's marker of a leading space


def _write_bpe(folder: str, vocab: Mapping[str, int]) -> tuple[str, str]:
    os.makedirs(folder, exist_ok=True)
    vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(dict(vocab), f)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    return vocab_file, merges_file


def make_clip_text_folder(folder: str, width: int, length: int, projection_dim: int = 0, seed: int = 0) -> str:
    """Tiny random CLIP text encoder + tokenizer (``text_encoder/``, ``tokenizer/``) as diffusers lays them out."""
    import torch
    import transformers

    if os.path.exists(os.path.join(folder, "text_encoder", "config.json")):
        return folder
    vocab = {c: i for i, c in enumerate(_CHARS)}
    vocab.update({c + "</w>": len(_CHARS) + i for i, c in enumerate(_CHARS)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = transformers.CLIPTokenizer(*_write_bpe(os.path.join(folder, "bpe"), vocab), model_max_length=length)
    config = transformers.CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=length,
        projection_dim=projection_dim or width,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    cls = transformers.CLIPTextModelWithProjection if projection_dim else transformers.CLIPTextModel
    cls(config).eval().save_pretrained(os.path.join(folder, "text_encoder"))
    tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    return folder


def make_clap_text_folder(folder: str, projection_dim: int, length: int = 32, seed: int = 0) -> str:
    """Tiny random CLAP text branch (RoBERTa + projection) with a RoBERTa byte-level tokenizer."""
    import torch
    import transformers

    if os.path.exists(os.path.join(folder, "text_encoder", "config.json")):
        return folder
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for c in _CHARS + string.ascii_uppercase + _ROBERTA_SPACE:
        vocab[c] = len(vocab)
    vocab["<mask>"] = len(vocab)
    tokenizer = transformers.RobertaTokenizer(*_write_bpe(os.path.join(folder, "bpe"), vocab), model_max_length=length)
    config = transformers.ClapTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=length + 2,
        projection_dim=projection_dim,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    transformers.ClapTextModelWithProjection(config).eval().save_pretrained(os.path.join(folder, "text_encoder"))
    tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    return folder


def _pooled_projection_encoder(folder: str):
    """Normalised ``text_embeds`` of a CLIP text model with projection (the demo's joint-space embedding)."""
    import torch
    import transformers

    model = transformers.CLIPTextModelWithProjection.from_pretrained(os.path.join(folder, "text_encoder")).eval()
    tokenizer = transformers.CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))

    def encode(texts: list[str]) -> np.ndarray:
        tok = tokenizer(list(texts), padding="max_length", truncation=True, return_tensors="pt")
        with torch.no_grad():
            embeds = model(input_ids=tok.input_ids).text_embeds
        return torch.nn.functional.normalize(embeds, dim=-1).numpy()

    return encode


def t_prompts(sources: Mapping[str, Sequence[Sample]]) -> list[str]:
    """Every T-Prompt the TMM builders can emit from these sources: captions as written, without a final period
    (``tmm._groups`` strips it), and the travel guides' tagged spans."""
    from spider_jax import template as tpl

    texts = []
    for samples in sources.values():
        for s in samples:
            if s.text:
                texts.append(s.text.strip().rstrip("."))
            if s.guide:
                parsed = tpl.parse_answer(f"[OUT] {s.guide} [END]")
                texts += [g.t_prompt for g in parsed.groups]
    return list(dict.fromkeys(texts))


MEDIA_KEYS = "path relative to data.samples_dir"


def _store_meta(path: str) -> dict:
    meta = os.path.join(path, "store.json")
    if not os.path.exists(meta):
        return {}
    with open(meta) as f:
        return json.load(f).get("meta", {})


def build_demo_stores(cfg: ml_collections.ConfigDict, sources: Mapping[str, Sequence[Sample]]):
    """Builds (once) the demo's encoders and stores; returns a ``stores``-shaped config pointing at them."""
    root = os.path.join(cfg.output_dir, "demo_assets")
    outputs = cfg.controller.outputs
    texts = t_prompts(sources)
    stores = ml_collections.ConfigDict({"text": {}, "media": ""})
    for modality, spec in outputs.items():
        path = os.path.join(root, f"te_{modality.lower()}")
        if not os.path.exists(os.path.join(path, "store.json")):
            folder = os.path.join(root, f"text_encoder_{modality.lower()}")
            if spec.text_length == 1:
                make_clap_text_folder(folder, projection_dim=spec.width, seed=len(modality))
                encoder = embedding_store.text_encoder(folder, "clap")
                encode = lambda batch, enc=encoder: enc(batch)[:, None, :]  # noqa: E731  (B, 1, D) like T_e
            else:
                make_clip_text_folder(folder, spec.width, spec.text_length, seed=len(modality))
                encode = embedding_store.text_encoder(folder, "clip")
            embedding_store.build_text_store(path, texts, encode, name=f"demo T_e {modality}", dtype="float32")
        stores.text[modality] = path
    media_path = os.path.join(root, "media_store")
    if _store_meta(media_path).get("keys") != MEDIA_KEYS:  # missing, or keyed by an older scheme
        folder = make_clip_text_folder(
            os.path.join(root, "joint_space_encoder"), 32, 16, projection_dim=cfg.encoder_width, seed=7
        )
        encode = _pooled_projection_encoder(folder)
        captions = {path: s.text for samples in sources.values() for s in samples for _, path in s.media}
        paths = list(captions)
        values = encode([captions[p] for p in paths]) if paths else np.zeros((0, cfg.encoder_width), np.float32)
        embedding_store.write_store(
            media_path,
            ((media_key(p, cfg.data.samples_dir), v) for p, v in zip(paths, values, strict=True)),
            name="demo media (caption joint-space stand-in for ImageBind)",
            dtype="float32",
            meta={"keys": MEDIA_KEYS},
        )
    stores.media = media_path
    return stores
