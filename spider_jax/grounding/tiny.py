"""Tiny *random* GroundingDINO and SAM folders, built offline with ``save_pretrained``.

Why: tests and the generation demo need folders that load through exactly the same code path as the real
checkpoints (``from_pretrained(folder, local_files_only=True)``) without downloading anything. The weights are
random, so scores/boxes/masks are meaningless, but every shape, dtype, processor step and post-processing step is
the real one.

A detail that matters: transformers' GroundingDINO hard-codes the *bert-base-uncased* ids of its phrase delimiters
(``[CLS]``=101, ``[SEP]``=102, ``.``=1012, ``?``=1029; ``[PAD]``=0). The tiny WordPiece vocabulary therefore puts
those tokens at the same ids (filling the gaps with ``[unusedN]`` like BERT does) so phrase splitting behaves as
with the real tokenizer.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

__all__ = ["TINY_WORDS", "make_tiny_dino_folder", "make_tiny_grounding_folders", "make_tiny_sam_folder", "tiny_vocab"]

# Words the tiny tokenizer knows as whole tokens; anything else falls back to single letters ("##x" pieces).
TINY_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "and", "with", "on", "in", "left", "right", "red", "blue", "green", "small", "big",
    "cat", "dog", "person", "man", "woman", "car", "tree", "house", "bird", "horse", "sky", "ball", "table",
    "chair", "cup", "boat", "flower", "road", "grass", "water", "object", "thing",
)  # fmt: skip

# bert-base-uncased ids that GroundingDINO relies on (see modeling_grounding_dino.SPECIAL_TOKENS).
_FIXED_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ",": 1010, "-": 1011, ".": 1012}
_QUESTION_ID = 1029
_MARKER = "tiny_random.txt"


def tiny_vocab() -> list[str]:
    """WordPiece vocabulary (index = id) with BERT's special/delimiter ids and lower-case words + letters."""
    fixed = dict(_FIXED_IDS)
    fixed["?"] = _QUESTION_ID
    free: list[str] = []
    seen = set(fixed)
    for tok in [*TINY_WORDS, *string.ascii_lowercase, *string.digits, *("##" + c for c in string.ascii_lowercase)]:
        if tok not in seen:
            seen.add(tok)
            free.append(tok)
    extra_punct = [p for p in "!\"#$%&'()*+/:;<=>@[\\]^_`{|}~" if p not in seen]
    size = max(fixed.values()) + 1 + len(extra_punct)
    vocab: list[str | None] = [None] * size
    for tok, idx in fixed.items():
        vocab[idx] = tok
    # Words go right after [MASK] (like BERT's real words follow its specials); punctuation after "?".
    slots = [i for i in range(104, size) if vocab[i] is None]
    if len(free) + len(extra_punct) > len(slots):
        raise ValueError("tiny vocabulary does not fit")
    for tok, idx in zip(free, slots, strict=False):
        vocab[idx] = tok
    for tok, idx in zip(extra_punct, range(_QUESTION_ID + 1, size), strict=True):
        vocab[idx] = tok
    unused = 0
    out: list[str] = []
    for tok in vocab:
        if tok is None:
            tok = f"[unused{unused}]"
            unused += 1
        out.append(tok)
    return out


def _done(folder: Path) -> bool:
    return (folder / _MARKER).is_file() and (folder / "config.json").is_file()


def _mark(folder: Path, what: str, seed: int) -> None:
    (folder / _MARKER).write_text(f"{what} with RANDOM weights (seed={seed}); for tests/demos only.\n")


def make_tiny_dino_folder(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Build (once) a tiny random GroundingDINO folder: model + processor (image processor + BERT tokenizer)."""
    import torch
    import transformers as tf

    folder = Path(folder)
    if _done(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    max_text_len = 64
    tokenizer = tf.BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    tokenizer.model_max_length = max_text_len
    image_processor_cls = getattr(tf, "GroundingDinoImageProcessorPil", None) or tf.GroundingDinoImageProcessor
    image_processor = image_processor_cls(size={"shortest_edge": 64, "longest_edge": 96})
    processor = tf.GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)

    backbone = tf.SwinConfig(
        image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=2,
        mlp_ratio=2.0, out_indices=[2, 3, 4],
    )  # fmt: skip
    text = tf.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=max_text_len, pad_token_id=0,
    )  # fmt: skip
    config = tf.GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, num_queries=16, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_n_points=2, decoder_n_points=2, num_feature_levels=4, max_text_len=max_text_len,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = tf.GroundingDinoForObjectDetection(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    _mark(folder, "GroundingDINO", seed)
    return folder


def make_tiny_sam_folder(folder: str | os.PathLike, seed: int = 0, image_size: int = 64) -> Path:
    """Build (once) a tiny random SAM folder: model + SamProcessor whose resize/pad size matches ``image_size``."""
    import torch
    import transformers as tf

    folder = Path(folder)
    if _done(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    hidden = 32
    vision = tf.SamVisionConfig(
        hidden_size=32, output_channels=hidden, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
        patch_size=16, window_size=2, global_attn_indexes=[1], num_pos_feats=hidden // 2, mlp_dim=64,
    )  # fmt: skip
    prompt = tf.SamPromptEncoderConfig(hidden_size=hidden, image_size=image_size, patch_size=16, mask_input_channels=4)
    decoder = tf.SamMaskDecoderConfig(
        hidden_size=hidden, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16,
    )  # fmt: skip
    config = tf.SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    torch.manual_seed(seed)
    model = tf.SamModel(config).eval()
    image_processor_cls = getattr(tf, "SamImageProcessorPil", None) or tf.SamImageProcessor
    mask_side = image_size // 4  # SAM's low-res masks are 4x the embedding grid, i.e. image_size / 4
    image_processor = image_processor_cls(
        size={"longest_edge": image_size}, pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": mask_side}, mask_pad_size={"height": mask_side, "width": mask_side},
    )  # fmt: skip
    processor = tf.SamProcessor(image_processor=image_processor)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    _mark(folder, "SAM", seed)
    return folder


def make_tiny_grounding_folders(root: str | os.PathLike, seed: int = 0) -> tuple[str, str]:
    """Build (idempotently) ``root/tiny-grounding-dino`` and ``root/tiny-sam``; returns ``(dino, sam)`` folders.

    Plain strings, so they drop straight into the str-typed ``cfg.grounding.dino`` / ``.sam`` ConfigDict fields.
    """
    root = Path(root)
    return (
        str(make_tiny_dino_folder(root / "tiny-grounding-dino", seed=seed)),
        str(make_tiny_sam_folder(root / "tiny-sam", seed=seed + 1)),
    )
