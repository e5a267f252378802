"""TFDS builder that materialises a TMM split to array_record, for fast random access from grain.

Online construction (``tmm.build_instance``) costs a Python call per instance; for large runs, or to freeze a
split for evaluation, write instances once with this builder and read them back with :func:`tmm_data_source`.
Each record holds one instance as JSON (question, answer, input media paths, targets, dataset, sample ids).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from spider_jax import tmm

BUILDER_NAME = "spider_tmm"


@functools.cache  # TFDS registers builder classes by name: define ours once, on first use (TF imports are slow)
def _builder_class():
    import tensorflow_datasets as tfds

    class SpiderTmm(tfds.core.GeneratorBasedBuilder):
        """TMM instances of one stage mixture; splits map a name to a number of instances."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Instances as JSON records (question, answer, inputs, targets)."}

        def __init__(
            self,
            *,
            make_instance: Callable[[int], tmm.Instance] | None = None,
            split_sizes: Mapping[str, int] | None = None,
            **kwargs: Any,
        ):
            self._make_instance = make_instance
            self._split_sizes = dict(split_sizes or {})
            super().__init__(**kwargs)

        def _info(self):
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict({"record": tfds.features.Text()}),
                description="Spider TMM instances (paper App. H), one JSON record each.",
                disable_shuffling=True,  # record i of a split is instance begin+i of the stream
            )

        def _split_generators(self, dl_manager):
            if self._make_instance is None:
                raise ValueError("SpiderTmm needs make_instance to generate data (reading needs no arguments)")
            offsets, start = {}, 0
            for name, size in self._split_sizes.items():
                offsets[name] = (start, size)
                start += size  # splits take consecutive, disjoint index ranges of the stream
            return {name: self._generate_examples(begin, size) for name, (begin, size) in offsets.items()}

        def _generate_examples(self, begin: int, size: int):
            for index in range(begin, begin + size):
                yield index, {"record": json.dumps(tmm.instance_to_json(self._make_instance(index)))}

    assert SpiderTmm.name == BUILDER_NAME
    return SpiderTmm


def materialize(
    data_dir: str | os.PathLike, make_instance: Callable[[int], tmm.Instance], split_sizes: Mapping[str, int]
) -> str:
    """Writes the splits as array_record under ``data_dir``; returns the builder's data directory."""
    builder = _builder_class()(
        make_instance=make_instance, split_sizes=split_sizes, data_dir=os.fspath(data_dir), file_format="array_record"
    )
    builder.download_and_prepare(file_format="array_record")
    return str(builder.data_dir)


def tmm_data_source(data_dir: str | os.PathLike, split: str):
    """Random-access source of ``tmm.Instance`` records of a materialised split (grain ``MapDataset.source``)."""
    import grain

    builder = _builder_class()(data_dir=os.fspath(data_dir), file_format="array_record")
    if split not in builder.info.splits:
        raise KeyError(f"{data_dir}: split {split!r} not materialised (have {list(builder.info.splits)})")
    source = builder.as_data_source(split=split)

    def decode(example: Mapping[str, Any]) -> tmm.Instance:
        record = example["record"]
        return tmm.instance_from_json(json.loads(record.decode() if isinstance(record, bytes) else record))

    return grain.MapDataset.source(source).map(decode)
