"""A compact PyTorch re-implementation of ImageBind's vision/audio/text towers, written from the public architecture
(facebookresearch/ImageBind ``imagebind_model.py``) with the same module tree, hence the same state-dict names as
the official ``ImageBindModel``. The reference for ``tests/test_imagebind.py``; attention is
``torch.nn.MultiheadAttention`` on (L, B, D) exactly as ImageBind calls it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PadIm2Video(nn.Module):
    """(B, C, H, W) -> (B, C, 1, H, W); a 1-frame clip is repeated ``ntimes`` along time."""

    def __init__(self, ntimes: int):
        super().__init__()
        self.ntimes = ntimes

    def forward(self, x):
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.shape[2] == 1:
            x = x.repeat(1, 1, self.ntimes, 1, 1)
        return x


class Stem(nn.Module):
    """``PatchEmbedGeneric``: ``proj`` (a conv, or Sequential of pad + conv), flatten to tokens, optional norm."""

    def __init__(self, proj: list[nn.Module], norm_layer: nn.Module | None = None):
        super().__init__()
        self.proj = nn.Sequential(*proj) if len(proj) > 1 else proj[0]
        self.norm_layer = norm_layer

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)
        return self.norm_layer(x) if self.norm_layer is not None else x


class PosEmbed(nn.Module):
    def __init__(self, num_tokens: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))


class PatchPreprocessor(nn.Module):
    """``RGBDTPreprocessor`` / ``AudioPreprocessor``: stem tokens, one cls token in front, learned positions."""

    def __init__(self, stem: Stem, num_patches: int, dim: int):
        super().__init__()
        self.rgbt_stem = stem
        self.pos_embedding_helper = PosEmbed(1 + num_patches, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x):
        tokens = self.rgbt_stem(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        assert tokens.shape[1] == self.pos_embedding_helper.pos_embed.shape[1]
        return tokens + self.pos_embedding_helper.pos_embed, None


class TextPreprocessor(nn.Module):
    def __init__(self, vocab: int, context: int, dim: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, context, dim))
        self.register_buffer("mask", torch.empty(context, context).fill_(float("-inf")).triu_(1))

    def forward(self, ids):
        return self.token_embedding(ids) + self.pos_embed, self.mask


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, add_bias_kv: bool, layer_scale: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=add_bias_kv)
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)
        self.layer_scale = layer_scale
        if layer_scale:
            self.layer_scale_gamma1 = nn.Parameter(torch.full((1, 1, dim), 1e-4))
            self.layer_scale_gamma2 = nn.Parameter(torch.full((1, 1, dim), 1e-4))

    def forward(self, x, attn_mask):  # x: (L, B, D)
        h = self.norm_1(x)
        h = self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        x = x + (h * self.layer_scale_gamma1 if self.layer_scale else h)
        h = self.mlp(self.norm_2(x))
        return x + (h * self.layer_scale_gamma2 if self.layer_scale else h)


class Trunk(nn.Module):
    """``SimpleTransformer`` with ImageBind's pre layer: [LayerNorm or Identity, (B,L,D) -> (L,B,D)]."""

    def __init__(self, dim: int, blocks: int, heads: int, pre_ln: bool, add_bias_kv: bool, layer_scale=False):
        super().__init__()
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(dim, eps=1e-6) if pre_ln else nn.Identity())
        self.blocks = nn.Sequential(*[Block(dim, heads, add_bias_kv, layer_scale) for _ in range(blocks)])

    def forward(self, tokens, attn_mask=None):
        x = self.pre_transformer_layer(tokens).transpose(0, 1)
        for blk in self.blocks:
            x = blk(x, attn_mask)
        return x.transpose(0, 1)


class SelectElement(nn.Module):
    def forward(self, x):
        return x[:, 0, ...]


class SelectEOSAndProject(nn.Module):
    def __init__(self, proj: nn.Module):
        super().__init__()
        self.proj = proj

    def forward(self, x, ids):
        return self.proj(x[torch.arange(x.shape[0]), ids.argmax(dim=-1)])


class Normalize(nn.Module):
    def forward(self, x):
        return F.normalize(x, dim=-1, p=2)


class LogitScale(nn.Module):
    def __init__(self, init: float, learnable: bool):
        super().__init__()
        value = torch.tensor(float(init)).log()
        if learnable:
            self.log_logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_logit_scale", value)

    def forward(self, x):
        return torch.clip(self.log_logit_scale.exp(), max=100.0) * x


class ReferenceImageBind(nn.Module):
    """Vision + audio (+ text) towers; ``forward({modality: channels-first tensor})`` as ``ImageBindModel``."""

    def __init__(self, d: int, blocks: int, heads: int, out: int, image: int, patch: int, mel: int, frames: int,
                 audio_k: int, audio_s: int, vocab: int, context: int, layer_scale: bool = False):  # fmt: skip
        super().__init__()
        grid = (image // patch) ** 2
        audio_grid = ((mel - audio_k) // audio_s + 1) * ((frames - audio_k) // audio_s + 1)
        conv3d = nn.Conv3d(3, d, kernel_size=(2, patch, patch), stride=(2, patch, patch), bias=False)
        conv2d = nn.Conv2d(1, d, kernel_size=audio_k, stride=audio_s, bias=False)
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": PatchPreprocessor(Stem([PadIm2Video(2), conv3d]), grid, d),
                "text": TextPreprocessor(vocab, context, d),
                "audio": PatchPreprocessor(Stem([conv2d], nn.LayerNorm(d)), audio_grid, d),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {
                "vision": Trunk(d, blocks, heads, True, False, layer_scale),
                "text": Trunk(d, blocks, heads, False, False, layer_scale),
                "audio": Trunk(d, blocks, heads, False, True, layer_scale),
            }
        )

        def head():
            return nn.Sequential(nn.LayerNorm(d, eps=1e-6), SelectElement(), nn.Linear(d, out, bias=False))

        self.modality_heads = nn.ModuleDict(
            {
                "vision": head(),
                "text": SelectEOSAndProject(nn.Sequential(nn.LayerNorm(d, eps=1e-6), nn.Linear(d, out, bias=False))),
                "audio": head(),
            }
        )
        self.modality_postprocessors = nn.ModuleDict(
            {
                "vision": Normalize(),
                "text": nn.Sequential(Normalize(), LogitScale(1 / 0.07, learnable=True)),
                "audio": nn.Sequential(Normalize(), LogitScale(20.0, learnable=False)),
            }
        )

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = {}
        for m, x in inputs.items():
            reduce = x.ndim >= 5
            if reduce:
                b, s = x.shape[:2]
                x = x.reshape(b * s, *x.shape[2:])
            tokens, mask = self.modality_preprocessors[m](x)
            tokens = self.modality_trunks[m](tokens, mask)
            y = self.modality_heads[m](tokens, x) if m == "text" else self.modality_heads[m](tokens)
            y = self.modality_postprocessors[m](y)
            outputs[m] = y.reshape(b, s, -1).mean(dim=1) if reduce else y
        return outputs


def randomize_(model: nn.Module, seed: int = 0) -> None:
    """Random weights everywhere (LayerNorms near 1/0, the rest ~N(0, 0.05); the logit scales stay as built), so a
    transposed or swapped tensor cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "log_logit_scale" in name:
                continue
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name or "pre_transformer_layer" in name or name.endswith((".0.weight", ".0.bias")):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            elif "cls_token" in name or "pos_embed" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.05 * noise)
