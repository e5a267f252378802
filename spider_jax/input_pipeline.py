"""Grain input pipeline: TMM instances -> token ids, answer-only labels, modality slots, M-Prompt positions.

Each example is a fixed-size dict of numpy arrays (so batches go straight into a jitted step):

* ``input_ids``, ``attention_mask``, ``labels`` (L,): labels are ``IGNORE_INDEX`` on the question;
* ``input_positions``, ``input_modality``, ``input_key`` (max_inputs,): where the ``<X-Token>`` slot of each input
  medium sits (its projected encoder embedding replaces that token), which modality, and a stable 63-bit key of
  the media path (to look up precomputed encoder embeddings); -1 / 0 where unused;
* ``mprompt_positions``, ``mprompt_modality``, ``tprompt_key`` (max_groups,): the position of the first M-Prompt
  token of each answer group (its hidden state feeds the Decoders-Controller), its modality, and a key of the
  group's T-Prompt text (to look up the decoder text encoder's T_e); -1 / 0 where unused.

Modalities are coded by their index in ``template.MODALITIES`` plus one (0 = none). Instance ``i`` is a pure
function of ``(seed, i)``, so the grain iterator state (just the next index) makes resume exact, and each host
reads a disjoint slice of the same stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
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


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    max_length: int = 1024
    max_inputs: int = 4
    max_groups: int = 16
    batch_size: int = 4  # per host
    seed: int = 0
    add_bos: bool = True
    template: tpl.TemplateConfig = tpl.DEFAULT


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


def encode_instance(
    instance: tmm.Instance | Mapping[str, Any], tokenizer: Tokenizer, ids: TemplateIds, config: PipelineConfig
) -> dict[str, np.ndarray]:
    """Tokenizes one question/answer pair into the fixed-size example described in the module docstring."""
    if isinstance(instance, Mapping):
        instance = tmm.instance_from_json(instance)
    question = tokenizer.encode(instance.question, add_bos=config.add_bos)
    answer = tokenizer.encode(instance.answer, add_bos=False)  # starts with the [OUT] token
    tokens = np.asarray(question + answer, np.int32)
    labels = tokens.copy()
    labels[: len(question)] = IGNORE_INDEX
    length = min(len(tokens), config.max_length)  # overlong answers are cut; groups past the cut are dropped
    example = {
        "input_ids": np.full(config.max_length, tokenizer.pad_id, np.int32),
        "attention_mask": np.zeros(config.max_length, bool),
        "labels": np.full(config.max_length, IGNORE_INDEX, np.int32),
        "input_positions": np.full(config.max_inputs, -1, np.int32),
        "input_modality": np.zeros(config.max_inputs, np.int32),
        "input_key": np.zeros(config.max_inputs, np.int64),
        "mprompt_positions": np.full(config.max_groups, -1, np.int32),
        "mprompt_modality": np.zeros(config.max_groups, np.int32),
        "tprompt_key": np.zeros(config.max_groups, np.int64),
    }
    example["input_ids"][:length] = tokens[:length]
    example["attention_mask"][:length] = True
    example["labels"][:length] = labels[:length]

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
    for k, (pos, (modality, path)) in enumerate(zip(slot_positions, instance.inputs, strict=True)):
        if pos >= length:
            break
        example["input_positions"][k] = pos
        example["input_modality"][k] = modality_code(modality)
        example["input_key"][k] = stable_key(path)

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
    for k, ((pos, modality), group) in enumerate(zip(first_mprompts, groups, strict=True)):
        if pos >= length:
            break
        example["mprompt_positions"][k] = pos
        example["mprompt_modality"][k] = modality_code(modality)
        example["tprompt_key"][k] = stable_key(group.t_prompt)
    return example


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
    """This host's slice of the stream, encoded and batched (drop remainder); iterate and checkpoint its state."""
    ds = instances[process_index::process_count] if process_count > 1 else instances
    ds = ds.map(lambda inst: encode_instance(inst, tokenizer, ids, config))
    return ds.batch(config.batch_size, drop_remainder=True).to_iter_dataset()


def iterator_state(iterator: Iterator) -> dict[str, Any]:
    """JSON-serialisable position of a grain iterator (stored beside the train-state checkpoint)."""
    return iterator.get_state()


def restore_iterator(iterator: Iterator, state: Mapping[str, Any]) -> Iterator:
    iterator.set_state(dict(state))
    return iterator
