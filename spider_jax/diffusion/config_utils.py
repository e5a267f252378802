"""Helpers the model config dataclasses (UNet2D, UNet3D, VAE, vocoder) share for reading and writing Hugging Face
``config.json`` dicts.

Each config is a frozen dataclass whose fields are the checkpoint's config keys plus execution choices (dtypes,
attention implementation) that never go into ``config.json``. Reading keeps the known keys, rejects features we do
not implement (``unsupported``: key -> the only accepted values, the first being the default), and applies
overrides; writing lists tuples back as JSON lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

EXEC_FIELDS = ("dtype", "param_dtype", "attention_impl")


def config_from_hf(
    cls: type,
    hf: Mapping[str, Any],
    overrides: Mapping[str, Any],
    *,
    unsupported: Mapping[str, tuple] | None = None,
    label: str = "",
    exec_fields: Sequence[str] = EXEC_FIELDS,
) -> Any:
    """``cls(**known keys of hf, **overrides)``; a key of ``unsupported`` set to another value raises
    ``ValueError("{label} config {key}=... is not supported ...")``."""
    for key, allowed in (unsupported or {}).items():
        if hf.get(key, allowed[0]) not in allowed:
            raise ValueError(f"{label} config {key}={hf[key]!r} is not supported (supported: {allowed})")
    names = {f.name for f in dataclasses.fields(cls)} - set(exec_fields)
    kwargs = {k: v for k, v in hf.items() if k in names}
    kwargs.update(overrides)
    return cls(**kwargs)


def _as_json(value: Any) -> Any:
    return [_as_json(v) for v in value] if isinstance(value, tuple) else value


def config_to_hf(
    config: Any,
    head: Mapping[str, Any],
    *,
    unsupported: Mapping[str, tuple] | None = None,
    exec_fields: Sequence[str] = EXEC_FIELDS,
) -> dict[str, Any]:
    """``head`` (class name, ...), then every checkpoint field (tuples as lists), then the default of each
    ``unsupported`` key."""
    out: dict[str, Any] = dict(head)
    for f in dataclasses.fields(config):
        if f.name not in exec_fields:
            out[f.name] = _as_json(getattr(config, f.name))
    out.update({k: allowed[0] for k, allowed in (unsupported or {}).items()})
    return out


def check_block_types(
    down: Sequence[str], up: Sequence[str], channels: Sequence[int], down_types: tuple, up_types: tuple
) -> None:
    """One down and one up block per entry of ``block_out_channels``, each of a supported type."""
    n = len(channels)
    if len(down) != n or len(up) != n:
        raise ValueError(
            f"down_block_types ({len(down)}), up_block_types ({len(up)}) and "
            f"block_out_channels ({n}) must have the same length"
        )
    for t in down:
        if t not in down_types:
            raise ValueError(f"down block type {t!r} is not supported (supported: {down_types})")
    for t in up:
        if t not in up_types:
            raise ValueError(f"up block type {t!r} is not supported (supported: {up_types})")
