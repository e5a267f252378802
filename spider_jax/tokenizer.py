"""LLaMA tokenizer (sentencepiece ``tokenizer.model`` or an HF tokenizer folder) with added tokens.

Spider adds its template tokens (``[OUT]``, ``<IMAGE>``, ``[IMAGE0]`` …) as whole tokens. For a raw
sentencepiece model we handle them ourselves: text is split on the added tokens (longest match first), each
piece between them is encoded by sentencepiece, and decoding maps pieces back to text byte-exactly, so the
template parser sees exactly what the model produced. ``resize_embeddings`` grows the embedding and LM-head
rows to the new vocabulary (new rows = mean of the old rows, a neutral start for new tokens).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

ADDED_TOKENS_FILE = "added_tokens.json"


class TokenizerError(ValueError):
    """The tokenizer files are missing or inconsistent."""


class Tokenizer:
    """Common interface of the two backends."""

    bos_id: int | None
    eos_id: int | None
    pad_id: int

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        raise TypeError(f"{type(self).__name__} must implement encode")

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        raise TypeError(f"{type(self).__name__} must implement decode")

    def add_tokens(self, tokens: Sequence[str], special: bool = False) -> int:
        raise TypeError(f"{type(self).__name__} must implement add_tokens")

    def token_to_id(self, token: str) -> int:
        raise TypeError(f"{type(self).__name__} must implement token_to_id")

    def __len__(self) -> int:
        raise TypeError(f"{type(self).__name__} must implement __len__")

    @property
    def vocab_size(self) -> int:
        return len(self)

    def single_token_id(self, token: str) -> int:
        """Id of ``token``, asserting that it encodes to exactly one id (template tokens must)."""
        ids = self.encode(token, add_bos=False)
        if len(ids) != 1:
            raise TokenizerError(f"{token!r} encodes to {len(ids)} ids {ids}; add it with add_tokens first")
        return ids[0]


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_path: str | os.PathLike, added_tokens: dict[str, int] | None = None):
        import sentencepiece as spm

        self.model_path = os.fspath(model_path)
        if not os.path.isfile(self.model_path):
            raise TokenizerError(f"{self.model_path}: sentencepiece model not found")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(self.model_path)
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{self.model_path}: not a sentencepiece model ({e})") from e
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        # LLaMA has no pad token; like the reference code, pad with EOS (labels mask it out anyway).
        pad = self.sp.pad_id()
        self.pad_id = pad if pad >= 0 else (self.eos_id if self.eos_id is not None else 0)
        self._added: dict[str, int] = {}
        self._special: set[str] = set()
        self._pattern: re.Pattern | None = None
        for token, idx in (added_tokens or {}).items():
            if idx != len(self):
                raise TokenizerError(
                    f"added token {token!r} has id {idx}, expected {len(self)} (ids must be contiguous)"
                )
            self._added[token] = idx
        self._rebuild_pattern()
        # Encoding a chunk without sentencepiece's dummy "▁" prefix: prepend a fixed anchor and drop its ids.
        self._anchor = "\n"
        self._anchor_ids = list(self.sp.EncodeAsIds(self._anchor))
        first = self.sp.EncodeAsIds("a")
        self._adds_dummy_prefix = bool(first) and self.sp.IdToPiece(first[0]).startswith("\u2581")

    def __len__(self) -> int:
        return self.sp.GetPieceSize() + len(self._added)

    def _rebuild_pattern(self) -> None:
        if self._added:
            alternatives = sorted(self._added, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(t) for t in alternatives))
        else:
            self._pattern = None
        self._id_to_added = {v: k for k, v in self._added.items()}

    def add_tokens(self, tokens: Sequence[str], special: bool = False) -> int:
        added = 0
        for token in tokens:
            unk = self.sp.unk_id()
            already_known = self.sp.PieceToId(token) != unk or token == self.sp.IdToPiece(unk)
            if token in self._added or already_known:
                continue
            self._added[token] = len(self)
            added += 1
            if special:
                self._special.add(token)
        self._rebuild_pattern()
        return added

    def token_to_id(self, token: str) -> int:
        if token in self._added:
            return self._added[token]
        idx = self.sp.PieceToId(token)
        if idx == self.sp.unk_id() and token != self.sp.IdToPiece(idx):
            raise TokenizerError(f"token {token!r} is not in the vocabulary")
        return idx

    def _encode_chunk(self, chunk: str, at_start: bool) -> list[int]:
        if not chunk:
            return []
        if at_start:
            return list(self.sp.EncodeAsIds(chunk))
        ids = list(self.sp.EncodeAsIds(self._anchor + chunk))
        n = len(self._anchor_ids)
        if ids[:n] == self._anchor_ids:
            return ids[n:]
        return list(self.sp.EncodeAsIds(chunk))  # the anchor merged into the chunk: accept the dummy prefix

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        ids: list[int] = [self.bos_id] if add_bos and self.bos_id is not None else []
        pos = 0
        if self._pattern is not None:
            for m in self._pattern.finditer(text):
                ids += self._encode_chunk(text[pos : m.start()], at_start=pos == 0)
                ids.append(self._added[m.group()])
                pos = m.end()
        ids += self._encode_chunk(text[pos:], at_start=pos == 0)
        if add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def _pieces_to_text(self, ids: list[int], skip_special_tokens: bool) -> str:
        out: list[str] = []
        pending = bytearray()
        for i in ids:
            if self.sp.IsByte(i):
                pending.append(int(self.sp.IdToPiece(i)[1:-1], 16))
                continue
            if pending:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            if skip_special_tokens and self.sp.IsControl(i):
                continue
            out.append(self.sp.IdToPiece(i).replace("\u2581", " "))
        if pending:
            out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        parts: list[str] = []
        run: list[int] = []
        size = self.sp.GetPieceSize()
        for i in (int(x) for x in ids):
            if i < size:
                run.append(i)
                continue
            if run:
                parts.append(self._pieces_to_text(run, skip_special_tokens))
                run = []
            token = self._id_to_added.get(i)
            if token is None:
                continue  # out-of-range id (e.g. a padded vocab row): nothing to show
            if not (skip_special_tokens and token in self._special):
                parts.append(token)
        if run:
            parts.append(self._pieces_to_text(run, skip_special_tokens))
        text = "".join(parts)
        # The dummy prefix sentencepiece adds to the start of the text is not part of it.
        return text[1:] if text.startswith(" ") and self._adds_dummy_prefix else text

    def save(self, folder: str | os.PathLike) -> None:
        import shutil

        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, "tokenizer.model")
        if os.path.abspath(target) != os.path.abspath(self.model_path):
            shutil.copy2(self.model_path, target)
        with open(os.path.join(folder, ADDED_TOKENS_FILE), "w") as f:
            json.dump(self._added, f, indent=1)
        with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
            json.dump({"additional_special_tokens": sorted(self._special)}, f, indent=1)


class HFTokenizer(Tokenizer):
    """Any tokenizer ``transformers.AutoTokenizer`` can read from a local folder."""

    def __init__(self, folder: str | os.PathLike):
        from transformers import AutoTokenizer

        self.folder = os.fspath(folder)
        try:
            self.tok = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise TokenizerError(f"{self.folder}: cannot load a Hugging Face tokenizer ({e})") from e
        self.bos_id = self.tok.bos_token_id
        self.eos_id = self.tok.eos_token_id
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else (self.eos_id or 0)

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        ids = list(self.tok(text, add_special_tokens=False)["input_ids"])
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        if add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def add_tokens(self, tokens: Sequence[str], special: bool = False) -> int:
        return self.tok.add_tokens(list(tokens), special_tokens=special)

    def token_to_id(self, token: str) -> int:
        idx = self.tok.convert_tokens_to_ids(token)
        if idx is None or (idx == self.tok.unk_token_id and token != self.tok.unk_token):
            raise TokenizerError(f"token {token!r} is not in the vocabulary")
        return idx

    def save(self, folder: str | os.PathLike) -> None:
        self.tok.save_pretrained(os.fspath(folder))


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """``tokenizer.model`` file, a folder with one (+ optional ``added_tokens.json``), or an HF tokenizer folder."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return SentencePieceTokenizer(path)
    if not os.path.isdir(path):
        raise TokenizerError(f"{path}: no such tokenizer file or folder")
    sp_path = os.path.join(path, "tokenizer.model")
    hf_files = ("tokenizer.json", "tokenizer_config.json")
    if os.path.exists(sp_path) and not any(os.path.exists(os.path.join(path, f)) for f in hf_files):
        added_path = os.path.join(path, ADDED_TOKENS_FILE)
        added = None
        if os.path.exists(added_path):
            with open(added_path) as f:
                added = json.load(f)
        tok = SentencePieceTokenizer(sp_path, added)
        special_path = os.path.join(path, "special_tokens_map.json")
        if os.path.exists(special_path):
            with open(special_path) as f:
                tok._special = set(json.load(f).get("additional_special_tokens", []))
        return tok
    if any(os.path.exists(os.path.join(path, f)) for f in hf_files):
        return HFTokenizer(path)
    raise TokenizerError(f"{path}: found neither tokenizer.model nor tokenizer.json/tokenizer_config.json")


def train_sentencepiece(texts: Iterable[str], model_prefix: str | os.PathLike, vocab_size: int = 256) -> str:
    """Trains a small LLaMA-style BPE sentencepiece model (byte fallback, <unk>=0 <s>=1 </s>=2).

    Used to make the tiny tokenizer for tests and the demo, since no real LLaMA tokenizer can be downloaded.
    """
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        minloglevel=2,
    )
    path = os.fspath(model_prefix) + ".model"
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path


def resize_embeddings(
    params: dict[str, Any],
    new_vocab_size: int,
    tied: bool = False,
    init_from: Mapping[int, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Grows ``embed_tokens`` (V, D) rows and ``lm_head`` (D, V) columns to ``new_vocab_size``.

    New row ``i`` is the mean of the old rows ``init_from[i]`` (the pieces of a description of the token, e.g.
    "video" for ``<VIDEO>``), else the mean of all old rows (as HF does with ``mean_resizing``). Either way new
    tokens start out well-scaled rather than as noise; descriptions also make them distinct from each other.
    Shrinking keeps the first rows.
    """
    import jax.numpy as jnp

    model = dict(params["model"])
    emb = model["embed_tokens"]
    old = emb.shape[0]
    if new_vocab_size == old:
        return params
    init_from = dict(init_from or {})
    for new_id, ids in init_from.items():
        bad = [i for i in ids if not 0 <= i < old]
        if not old <= new_id < new_vocab_size or bad or not ids:
            raise ValueError(
                f"init_from[{new_id}] = {list(ids)}: the new id must lie in [{old}, {new_vocab_size}) and its "
                f"description ids in [0, {old}) (non-empty)"
            )

    def grow(x: Any, axis: int) -> Any:
        xp = np if isinstance(x, np.ndarray) else jnp
        if new_vocab_size < old:
            return xp.take(x, xp.arange(new_vocab_size), axis=axis)
        x32 = x.astype(np.float32)
        rows = []
        for new_id in range(old, new_vocab_size):
            ids = init_from.get(new_id)
            source = xp.take(x32, xp.asarray(ids), axis=axis) if ids else x32
            rows.append(source.mean(axis=axis, keepdims=True))
        return xp.concatenate([x, xp.concatenate(rows, axis=axis).astype(x.dtype)], axis=axis)

    model["embed_tokens"] = grow(emb, 0)
    out = dict(params)
    out["model"] = model
    if not tied and "lm_head" in params:
        out["lm_head"] = grow(params["lm_head"], 1)
    return out


def description_ids(tokenizer: Tokenizer, descriptions: Mapping[str, str], base_vocab: int) -> dict[int, list[int]]:
    """``{id of an added token: ids of its description's pieces}`` for ``resize_embeddings(init_from=...)``."""
    out = {}
    for token, text in descriptions.items():
        pieces = [i for i in tokenizer.encode(text, add_bos=False) if i < base_vocab]
        token_id = tokenizer.token_to_id(token)
        if pieces and token_id >= base_vocab:
            out[token_id] = pieces
    return out
