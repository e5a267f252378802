"""The official ImageBind checkpoint (``imagebind_huge.pth``) <-> our Flax parameter tree (``models/imagebind.py``).

Names follow ``ImageBindModel``'s module tree (facebookresearch/ImageBind): ``modality_preprocessors.<m>.*``,
``modality_trunks.<m>.blocks.<i>.*``, ``modality_heads.<m>.*``, ``modality_postprocessors.<m>.*``. Layout changes:
``nn.Linear`` weights and the fused ``attn.in_proj_weight`` are transposed, conv weights go from (O, I, *k) to
(*k, I, O), and the leading singleton axes of ``cls_token``/``pos_embed``/``bias_k``/layer-scale gammas are dropped.
The text tower's causal ``mask`` buffer is checked but not loaded (we rebuild it) and written back on export.

Only the config's modalities are read; the others in the file (depth, thermal, imu, or any tower the config
leaves out) are skipped with a debug log line. ``load_imagebind`` takes a ``.pth``/``.pt``/``.bin`` state dict
(via ``folders.torch_load``) or a ``.safetensors`` file; ``save_imagebind`` writes either, with the same names.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from spider_jax.convert.folders import CheckpointMismatchError, torch_load
from spider_jax.convert.safetensors_io import SafetensorsFile, save_file
from spider_jax.models.imagebind import ImageBindConfig, TrunkConfig, imagebind_huge
from spider_jax.models.llama import as_dtype

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One checkpoint tensor: its torch name and shape, where it lives in the Flax tree and how it is laid out.

    ``kind``: ``copy`` (same layout), ``linear`` (2-D transpose), ``conv`` ((O, I, *k) <-> (*k, I, O)),
    ``reshape`` (drop/add singleton axes), ``buffer`` (checked, not loaded; ``flax_path`` is empty).
    """

    name: str
    torch_shape: tuple[int, ...]
    flax_path: tuple[str, ...]
    kind: str = "copy"

    @property
    def flax_shape(self) -> tuple[int, ...]:
        s = self.torch_shape
        if self.kind == "linear":
            return s[::-1]
        if self.kind == "conv":
            return s[2:] + (s[1], s[0])
        if self.kind == "reshape":
            return _squeezed(self.torch_shape, self.flax_path)
        return s

    def to_flax(self, arr: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            return arr.T
        if self.kind == "conv":
            return np.transpose(arr, tuple(range(2, arr.ndim)) + (1, 0))
        return arr.reshape(self.flax_shape)

    def to_torch(self, arr: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            return arr.T
        if self.kind == "conv":
            n = arr.ndim
            return np.transpose(arr, (n - 1, n - 2) + tuple(range(n - 2)))
        return arr.reshape(self.torch_shape)


def _squeezed(shape: tuple[int, ...], flax_path: tuple[str, ...]) -> tuple[int, ...]:
    # cls_token (1, n, D) -> (n, D); pos_embed (1, N, D) -> (N, D); bias_k / gammas (1, 1, D) -> (D,)
    return shape[1:] if flax_path[-1] in ("cls_token", "pos_embed") else shape[2:]


def _linear(flax_path: tuple[str, ...], name: str, d_in: int, d_out: int, bias: bool = True) -> Iterator[Tensor]:
    yield Tensor(f"{name}.weight", (d_out, d_in), flax_path + ("kernel",), "linear")
    if bias:
        yield Tensor(f"{name}.bias", (d_out,), flax_path + ("bias",))


def _layer_norm(flax_path: tuple[str, ...], name: str, width: int) -> Iterator[Tensor]:
    yield Tensor(f"{name}.weight", (width,), flax_path + ("scale",))
    yield Tensor(f"{name}.bias", (width,), flax_path + ("bias",))


def _trunk(m: str, cfg: TrunkConfig) -> Iterator[Tensor]:
    d, root, torch_root = cfg.embed_dim, (m, "trunk"), f"modality_trunks.{m}"
    if cfg.pre_transformer_ln:
        yield from _layer_norm(root + ("ln_pre",), f"{torch_root}.pre_transformer_layer.0", d)
    for i in range(cfg.num_blocks):
        blk, t = root + (f"blocks_{i}",), f"{torch_root}.blocks.{i}"
        attn = blk + ("attn",)
        yield Tensor(f"{t}.attn.in_proj_weight", (3 * d, d), attn + ("in_proj", "kernel"), "linear")
        yield Tensor(f"{t}.attn.in_proj_bias", (3 * d,), attn + ("in_proj", "bias"))
        if cfg.add_bias_kv:
            yield Tensor(f"{t}.attn.bias_k", (1, 1, d), attn + ("bias_k",), "reshape")
            yield Tensor(f"{t}.attn.bias_v", (1, 1, d), attn + ("bias_v",), "reshape")
        yield from _linear(attn + ("out_proj",), f"{t}.attn.out_proj", d, d)
        yield from _layer_norm(blk + ("norm_1",), f"{t}.norm_1", d)
        yield from _linear(blk + ("fc1",), f"{t}.mlp.fc1", d, cfg.mlp_dim)
        yield from _linear(blk + ("fc2",), f"{t}.mlp.fc2", cfg.mlp_dim, d)
        yield from _layer_norm(blk + ("norm_2",), f"{t}.norm_2", d)
        if cfg.layer_scale_type is not None:
            g = d if cfg.layer_scale_type == "per_channel" else 1
            for k in (1, 2):
                yield Tensor(f"{t}.layer_scale_gamma{k}", (1, 1, g), blk + (f"layer_scale_gamma{k}",), "reshape")


def _modality(m: str, cfg: TrunkConfig, out_dim: int) -> Iterator[Tensor]:
    d, pre, p = cfg.embed_dim, (m, "preprocessor"), f"modality_preprocessors.{m}"
    if m == "vision":
        kt, kh, kw = cfg.kernel_size
        yield Tensor(f"{p}.cls_token", (1, 1, d), pre + ("cls_token",), "reshape")
        yield Tensor(
            f"{p}.rgbt_stem.proj.1.weight", (d, cfg.in_channels, kt, kh, kw), pre + ("patch_embed", "kernel"), "conv"
        )  # proj.0 is PadIm2Video (no parameters)
        yield Tensor(
            f"{p}.pos_embedding_helper.pos_embed", (1, 1 + cfg.num_patches, d), pre + ("pos_embed",), "reshape"
        )
    elif m == "audio":
        k = cfg.kernel_size
        yield Tensor(f"{p}.cls_token", (1, 1, d), pre + ("cls_token",), "reshape")
        yield Tensor(f"{p}.rgbt_stem.proj.weight", (d, 1, k, k), pre + ("patch_embed", "kernel"), "conv")
        yield from _layer_norm(pre + ("patch_norm",), f"{p}.rgbt_stem.norm_layer", d)
        yield Tensor(
            f"{p}.pos_embedding_helper.pos_embed", (1, 1 + cfg.num_patches, d), pre + ("pos_embed",), "reshape"
        )
    elif m == "text":
        n = cfg.context_length
        yield Tensor(f"{p}.token_embedding.weight", (cfg.vocab_size, d), pre + ("token_embedding",))
        yield Tensor(f"{p}.pos_embed", (1, n, d), pre + ("pos_embed",), "reshape")
        yield Tensor(f"{p}.mask", (n, n), (), "buffer")
    yield from _trunk(m, cfg)
    head, h = (m, "head"), f"modality_heads.{m}"
    if m == "text":  # SelectEOSAndProject(proj=Sequential(LayerNorm, Linear))
        yield from _layer_norm(head + ("norm",), f"{h}.proj.0", d)
        yield from _linear(head + ("proj",), f"{h}.proj.1", d, out_dim, bias=False)
    else:  # Sequential(LayerNorm, SelectElement(0), Linear)
        yield from _layer_norm(head + ("norm",), f"{h}.0", d)
        yield from _linear(head + ("proj",), f"{h}.2", d, out_dim, bias=False)
    if cfg.logit_scale_init is not None:  # Sequential(Normalize, LearnableLogitScaling)
        yield Tensor(f"modality_postprocessors.{m}.1.log_logit_scale", (), (m, "postprocessor", "log_logit_scale"))


def imagebind_tensors(config: ImageBindConfig) -> list[Tensor]:
    """Every checkpoint tensor the config's modalities need, in the official model's order."""
    out: list[Tensor] = []
    for m in config.modalities:
        out += _modality(m, config.modality(m), config.out_embed_dim)
    return out


def _modality_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 and parts[0].startswith("modality_") else None


def _causal_mask(n: int) -> np.ndarray:
    """The additive mask ImageBind's text preprocessor registers: -inf above the diagonal, 0 elsewhere."""
    return np.triu(np.full((n, n), -np.inf, np.float32), 1)


def read_state(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
    """A state dict file as name -> numpy: ``.safetensors`` memory-mapped, anything else through ``torch.load``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such ImageBind checkpoint")
    if path.endswith(".safetensors"):
        return SafetensorsFile(path)
    return torch_load(path)


def load_imagebind(
    source: str | os.PathLike | Mapping[str, Any], config: ImageBindConfig | None = None
) -> dict[str, Any]:
    """Flax params (host numpy, ``config.param_dtype``) for ``ImageBindModel(config)`` from an official-layout
    state dict: a file path (``.pth`` / ``.safetensors``) or an already-loaded mapping. Default config:
    :func:`imagebind_huge` (vision + audio). Every needed tensor is checked by name and shape."""
    config = imagebind_huge() if config is None else config
    where = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    state = read_state(source) if isinstance(source, (str, os.PathLike)) else source
    cast = as_dtype(config.param_dtype)
    tensors = imagebind_tensors(config)
    expected = {t.name for t in tensors}
    wanted = set(config.modalities)
    present = {n for n in state if _modality_of(n) in wanted}
    skipped = sorted(n for n in state if _modality_of(n) not in wanted)
    if skipped:
        mods = sorted({_modality_of(n) or n for n in skipped})
        log.debug("%s: skipping %d tensors of modalities not in the config: %s", where, len(skipped), mods)
    missing, unexpected = sorted(expected - present), sorted(present - expected)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{where}: tensors do not match the ImageBind config for {config.modalities} "
            f"(missing {len(missing)}: {missing[:8]}; unexpected {len(unexpected)}: {unexpected[:8]})"
        )
    params: dict[str, Any] = {}
    for t in tensors:
        arr = np.asarray(state[t.name])
        if t.torch_shape == () and arr.shape == (1,):  # scalars some writers store as (1,)
            arr = arr.reshape(())
        if tuple(arr.shape) != t.torch_shape:
            raise CheckpointMismatchError(
                f"{where}: tensor {t.name!r} has shape {tuple(arr.shape)}, the ImageBind config expects {t.torch_shape}"
            )
        if t.kind == "buffer":
            continue
        node = params
        for key in t.flax_path[:-1]:
            node = node.setdefault(key, {})
        node[t.flax_path[-1]] = np.array(t.to_flax(arr), dtype=cast, order="C")  # ascontiguousarray makes 0-d 1-d
    return params


def imagebind_state(config: ImageBindConfig, params: Mapping[str, Any], dtype: Any = None) -> dict[str, np.ndarray]:
    """Our params as the official state dict (numpy, names in model order), buffers included."""
    params = nn.meta.unbox(params)
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    state: dict[str, np.ndarray] = {}
    for t in imagebind_tensors(config):
        if t.kind == "buffer":
            state[t.name] = _causal_mask(t.torch_shape[0])
            continue
        node: Any = params
        try:
            for key in t.flax_path:
                node = node[key]
        except (KeyError, TypeError) as e:
            raise CheckpointMismatchError(f"parameter tree lacks {'/'.join(t.flax_path)} (for {t.name!r})") from e
        arr = np.asarray(jax.device_get(node))
        if arr.shape != t.flax_shape:
            raise CheckpointMismatchError(
                f"parameter {'/'.join(t.flax_path)} has shape {arr.shape}, the config expects {t.flax_shape} "
                f"(for {t.name!r})"
            )
        arr = t.to_torch(arr)
        state[t.name] = np.array(arr, dtype=dtype, order="C")
    return state


def save_imagebind(
    config: ImageBindConfig, params: Mapping[str, Any], path: str | os.PathLike, dtype: Any = None
) -> None:
    """Writes the official names: ``.safetensors`` directly, otherwise a ``torch.save`` state dict (``.pth``) that
    ``ImageBindModel.load_state_dict`` accepts for these modalities (``strict=False`` when the model has more)."""
    path = os.fspath(path)
    state = imagebind_state(config, params, dtype)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".safetensors"):
        save_file(state, path)
        return
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path}: writing a .pth state dict needs torch; use a .safetensors path instead") from e
    tensors = {}
    for name, arr in state.items():
        if arr.dtype.name == "bfloat16":
            tensors[name] = torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
        else:
            tensors[name] = torch.from_numpy(np.array(arr))
    tmp = path + ".tmp"
    torch.save(tensors, tmp)
    os.replace(tmp, path)


def count_by_modality(config: ImageBindConfig) -> dict[str, int]:
    """Number of checkpoint tensors per modality (buffers included): a quick check against a file listing."""
    counts = dict.fromkeys(config.modalities, 0)
    for t in imagebind_tensors(config):
        counts[_modality_of(t.name)] += 1
    return counts
