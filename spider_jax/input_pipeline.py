"""Grain input pipeline: TMM instances -> token ids, answer-only labels, modality slots, M-Prompt positions.

Each example is a fixed-size dict of numpy arrays (so batches go straight into a jitted step):

* ``input_ids``, ``attention_mask``, ``labels`` (L,): labels are ``IGNORE_INDEX`` on the question and padding;
* ``segment_ids``, ``positions`` (L,): which instance each token belongs to (1, 2, … ; 0 = padding) and its
  position inside that instance — one instance per row unless ``PipelineConfig.packing``;
* ``input_positions``, ``input_modality``, ``input_key`` (max_inputs, per row): where the ``<X-Token>`` slot of
  each input medium sits (its projected encoder embedding replaces that token), which modality, and a stable
  63-bit key of the media path (to look up precomputed encoder embeddings); -1 / 0 where unused;
* ``mprompt_positions``, ``mprompt_modality``, ``tprompt_key`` (max_groups, per row): the position of the first M-Prompt
  token of each answer group (its hidden state feeds the Decoders-Controller), its modality, and a key of the
  group's T-Prompt text (to look up the decoder text encoder's T_e); -1 / 0 where unused;
* ``target_key`` (max_groups, per row): key of the media file the group should produce (its encoder embedding
  E^X is the M-Reconstruction target); 0 where unknown.

Modalities are coded by their index in ``template.MODALITIES`` plus one (0 = none). Instance ``i`` is a pure
function of ``(seed, i)``, so the grain iterator state (just the next index) makes resume exact, and each host
reads a disjoint slice of the same stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import grain.experimental
import numpy as np

from spider_jax import template as tpl
from spider_jax import tmm
from spider_jax.tokenizer import Tokenizer
from spider_jax.trainer import IGNORE_INDEX

STREAM_LENGTH = 2**40  # "infinite": instances are generated on demand from their index


def modality_code(modality: str) -> int:
    return tpl.MODALITIES.index(modality) + 1


def stable_key(text: str) -> int:
    """63-bit key of a string, identical on every host and run (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def media_key(path: str, root: str | None = None) -> int:
    """Store key of a media file: ``stable_key`` of its path relative to ``root`` (the data folder) when inside it.

    Relative keys let an E^X store built on one machine serve the same data mounted elsewhere (a TPU VM, another
    user's checkout); a file outside ``root`` (or no root) is keyed by its normalised absolute path.
    """
    full = os.path.abspath(path)
    if root:
        base = os.path.abspath(root)
        if os.path.commonpath([full, base]) == base:
            return stable_key(os.path.relpath(full, base).replace(os.sep, "/"))
    return stable_key(full)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    max_length: int = 1024
    max_inputs: int = 4
    max_groups: int = 16
    batch_size: int = 4  # per host
    seed: int = 0
    add_bos: bool = True
    packing: bool = False  # several instances per row (segment-masked attention) instead of one + padding
    packing_bins: int = 8  # rows the first-fit packer keeps open; more bins, less padding
    template: tpl.TemplateConfig = tpl.DEFAULT
    media_root: str | None = None  # media store keys are paths relative to this folder (see media_key)


@dataclasses.dataclass(frozen=True)
class TemplateIds:
    """Token ids of the template tokens the pipeline looks for."""

    slot_to_modality: dict[int, str]
    mprompt_to_modality: dict[int, str]

    @classmethod
    def build(cls, tokenizer: Tokenizer, config: tpl.TemplateConfig = tpl.DEFAULT) -> TemplateIds:
        """Adds the template tokens to ``tokenizer`` (idempotent) and records their ids."""
        tokenizer.add_tokens(config.special_tokens())
        slots = {tokenizer.single_token_id(config.slot(m)): m for m in tpl.INPUT_MODALITIES}
        mprompts = {tokenizer.single_token_id(t): m for m in tpl.MODALITIES for t in config.mprompts(m)}
        return cls(slots, mprompts)


class EncodingError(ValueError):
    """An instance cannot be encoded (e.g. more inputs than slots); names the instance."""


def encode_tokens(
    instance: tmm.Instance | Mapping[str, Any], tokenizer: Tokenizer, ids: TemplateIds, config: PipelineConfig
) -> dict[str, np.ndarray]:
    """Variable-length, per-token encoding (cut at ``max_length``): the unit that padding and packing share.

    Slot and M-Prompt annotations live on their token (modality code / key there, 0 elsewhere), so packing
    several instances into one row moves them along with their tokens; ``fixed_slots`` turns them into the
    fixed-size position arrays afterwards.
    """
    if isinstance(instance, Mapping):
        instance = tmm.instance_from_json(instance)
    question = tokenizer.encode(instance.question, add_bos=config.add_bos)
    answer = tokenizer.encode(instance.answer, add_bos=False)  # starts with the [OUT] token
    tokens = np.asarray(question + answer, np.int32)
    labels = tokens.copy()
    labels[: len(question)] = IGNORE_INDEX
    n = len(tokens)
    per_token = {
        "input_ids": tokens,
        "labels": labels,
        "input_modality": np.zeros(n, np.int32),
        "input_key": np.zeros(n, np.int64),
        "mprompt_modality": np.zeros(n, np.int32),
        "tprompt_key": np.zeros(n, np.int64),
        "target_key": np.zeros(n, np.int64),
    }

    slot_positions = [i for i, t in enumerate(question) if t in ids.slot_to_modality]
    if len(slot_positions) != len(instance.inputs):
        raise EncodingError(
            f"instance {instance.sample_ids}: {len(instance.inputs)} inputs but "
            f"{len(slot_positions)} slot tokens in the question"
        )
    if len(slot_positions) > config.max_inputs:
        raise EncodingError(
            f"instance {instance.sample_ids}: {len(slot_positions)} inputs > max_inputs {config.max_inputs}"
        )
    for pos, (modality, path) in zip(slot_positions, instance.inputs, strict=True):
        per_token["input_modality"][pos] = modality_code(modality)
        per_token["input_key"][pos] = media_key(path, config.media_root)

    groups = tpl.parse_answer(instance.answer, config.template).groups
    first_mprompts = []
    previous = None
    for i, t in enumerate(answer):
        modality = ids.mprompt_to_modality.get(t)
        if modality is not None and previous not in ids.mprompt_to_modality:  # first token of a run [X0][X1]…
            first_mprompts.append((len(question) + i, modality))
        previous = t
    if len(first_mprompts) != len(groups):
        raise EncodingError(
            f"instance {instance.sample_ids}: {len(groups)} groups but {len(first_mprompts)} "
            "M-Prompt runs in the tokenized answer"
        )
    if len(groups) > config.max_groups:
        raise EncodingError(f"instance {instance.sample_ids}: {len(groups)} groups > max_groups {config.max_groups}")
    outputs = instance.outputs if len(instance.outputs) == len(groups) else ("",) * len(groups)
    for (pos, modality), group, target in zip(first_mprompts, groups, outputs, strict=True):
        per_token["mprompt_modality"][pos] = modality_code(modality)
        per_token["tprompt_key"][pos] = stable_key(group.t_prompt)
        per_token["target_key"][pos] = media_key(target, config.media_root) if target else 0
    # Overlong answers are cut; inputs and groups past the cut are dropped with their tokens.
    return {k: v[: config.max_length] for k, v in per_token.items()}


def fixed_slots(row: Mapping[str, np.ndarray], config: PipelineConfig) -> dict[str, np.ndarray]:
    """A padded or packed row of per-token arrays -> the fixed-size example of the module docstring."""
    segment_ids = np.asarray(row["segment_ids"], np.int32)
    example = {
        "input_ids": np.asarray(row["input_ids"], np.int32),
        "labels": np.where(segment_ids > 0, row["labels"], IGNORE_INDEX).astype(np.int32),
        "attention_mask": segment_ids > 0,
        "segment_ids": segment_ids,
        "positions": np.asarray(row["positions"], np.int32),
    }
    for prefix, code, key, capacity, what in (
        ("input", "input_modality", "input_key", config.max_inputs, "max_inputs"),
        ("mprompt", "mprompt_modality", "tprompt_key", config.max_groups, "max_groups"),
    ):
        (where,) = np.nonzero(row[code])
        if len(where) > capacity:
            raise EncodingError(f"a packed row holds {len(where)} {prefix} slots > {what} {capacity}; raise {what}")
        positions = np.full(capacity, -1, np.int32)
        positions[: len(where)] = where
        codes = np.zeros(capacity, np.int32)
        codes[: len(where)] = row[code][where]
        keys = np.zeros(capacity, np.int64)
        keys[: len(where)] = row[key][where]
        example[f"{prefix}_positions"], example[code], example[key] = positions, codes, keys
        if prefix == "mprompt":
            targets = np.zeros(capacity, np.int64)
            targets[: len(where)] = row["target_key"][where]
            example["target_key"] = targets
    return example


def pad_tokens(per_token: Mapping[str, np.ndarray], config: PipelineConfig, pad_id: int) -> dict[str, np.ndarray]:
    """One instance per row, right-padded to ``max_length`` (segment 1, positions 0..n-1)."""
    n = len(per_token["input_ids"])
    row = {}
    for name, values in per_token.items():
        fill = pad_id if name == "input_ids" else IGNORE_INDEX if name == "labels" else 0
        row[name] = np.full(config.max_length, fill, values.dtype)
        row[name][:n] = values
    row["segment_ids"] = (np.arange(config.max_length) < n).astype(np.int32)
    row["positions"] = np.where(row["segment_ids"] > 0, np.arange(config.max_length), 0).astype(np.int32)
    return row


def encode_instance(
    instance: tmm.Instance | Mapping[str, Any], tokenizer: Tokenizer, ids: TemplateIds, config: PipelineConfig
) -> dict[str, np.ndarray]:
    """Tokenizes one question/answer pair into the fixed-size (padded, unpacked) example."""
    return fixed_slots(pad_tokens(encode_tokens(instance, tokenizer, ids, config), config, tokenizer.pad_id), config)


# --------------------------------------------------------------------------------------- datasets


def instance_dataset(
    mixture: Mapping[str, float],
    pools: Mapping[str, tmm.InstructionPool],
    sources: Mapping[str, Sequence[tmm.Sample]],
    seed: int,
    opts: tmm.BuildOptions | None = None,
) -> grain.MapDataset:
    """The online TMM stream as a random-access grain dataset (index -> Instance)."""
    opts = opts or tmm.BuildOptions()
    mixture = tmm.normalised_mixture(mixture, available=[k for k in sources if k in pools])
    return grain.MapDataset.range(STREAM_LENGTH).map(
        lambda i: tmm.build_instance(int(i), seed, mixture, pools, sources, opts)
    )


def materialized_dataset(paths: Sequence[str]) -> grain.MapDataset:
    """Instances previously written to array_record files (one JSON record each)."""
    source = grain.sources.ArrayRecordDataSource(list(paths))
    return grain.MapDataset.source(source).map(lambda raw: json.loads(raw))


def batched_examples(
    instances: grain.MapDataset,
    tokenizer: Tokenizer,
    ids: TemplateIds,
    config: PipelineConfig,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """This host's slice of the stream, encoded and batched (drop remainder); iterate and checkpoint its state.

    With ``config.packing`` several instances share a row (first-fit over ``packing_bins`` open rows, grain's
    checkpointable packer); ``segment_ids``/``positions`` then keep attention and RoPE inside each instance.
    """
    ds = instances[process_index::process_count] if process_count > 1 else instances
    ds = ds.map(lambda inst: encode_tokens(inst, tokenizer, ids, config))
    if not config.packing:  # random access all the way: to_iter_dataset() then prefetches batches on threads
        rows = ds.map(lambda t: fixed_slots(pad_tokens(t, config, tokenizer.pad_id), config))
        return rows.batch(config.batch_size, drop_remainder=True).to_iter_dataset()
    else:
        lengths = dict.fromkeys(PER_TOKEN_FEATURES, config.max_length)
        packed = grain.experimental.FirstFitPackIterDataset(
            ds.to_iter_dataset(),
            length_struct=lengths,
            num_packing_bins=config.packing_bins,
            shuffle_bins=False,
        )
        rows = packed.map(_from_grain_packing)
    return rows.map(lambda row: fixed_slots(row, config)).batch(config.batch_size, drop_remainder=True)


PER_TOKEN_FEATURES = (
    "input_ids",
    "labels",
    "input_modality",
    "input_key",
    "mprompt_modality",
    "tprompt_key",
    "target_key",
)


def _from_grain_packing(packed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    row = {name: packed[name] for name in PER_TOKEN_FEATURES}
    row["segment_ids"] = packed["input_ids_segment_ids"]
    row["positions"] = packed["input_ids_positions"]
    return row


def iterator_state(iterator: Iterator) -> dict[str, Any]:
    """JSON-serialisable position of a grain iterator (stored beside the train-state checkpoint)."""
    return iterator.get_state()


def restore_iterator(iterator: Iterator, state: Mapping[str, Any]) -> Iterator:
    iterator.set_state(dict(state))
    return iterator
