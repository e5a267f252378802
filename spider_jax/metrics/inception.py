"""The FID Inception-v3 (TF 2015-12-05 graph as ported by pytorch-fid) as a feature extractor for FID and IS.

Why this module defines the network instead of importing ``pytorch_fid.inception.InceptionV3``:

* that class builds itself through ``torchvision.models.inception_v3`` and then calls
  ``load_state_dict_from_url(FID_WEIGHTS_URL)`` — a forced download with no local-path argument;
* ``pytorch_fid.inception`` imports torchvision at import time, and the only torchvision wheels reachable here are
  CUDA builds whose ops fail to register against the CPU torch (``operator torchvision::nms does not exist``).

So the module list below mirrors ``pytorch_fid.inception.fid_inception_v3()`` exactly — torchvision's
``Inception3(num_classes=1008, aux_logits=False)`` with pytorch-fid's patched blocks (``FIDInceptionA/C/E_1``
average-pool without counting padding, ``FIDInceptionE_2`` max-pools) — and uses the same parameter names, so
pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` loads with ``strict=True``. The forward pass is
pytorch-fid's ``InceptionV3([3])``: bilinear resize to 299×299 (``align_corners=False``), ``2x - 1`` scaling, the
blocks, global average pool → 2048-d features. The 1008-way ``fc`` weights of the same checkpoint give the
logits the Inception Score is defined on. ``tests/test_metrics_media.py`` checks the parameter layout against a
fingerprint recorded from pytorch-fid, and the outputs against pytorch-fid itself whenever it imports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spider_jax.metrics.feature_models import image_to_unit_float, load_image, resolve_weights
from spider_jax.metrics.frechet import extract_features, inception_score

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
NUM_CLASSES = 1008  # the TF graph's softmax has 1008 outputs (1000 ImageNet classes + 8 unused)


class BasicConv2d(nn.Module):
    """conv (no bias) → BatchNorm(eps=1e-3) → ReLU, torchvision's ``BasicConv2d``."""

    def __init__(self, cin: int, cout: int, **kw: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool does not count the zero padding (pytorch-fid's patch).
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """``FIDInceptionE_1`` (``max_pool=False``: TF average pool) or ``FIDInceptionE_2`` (``max_pool=True``)."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        # FIDInceptionE_2 max-pools here (a quirk of the TF graph that FID numbers depend on).
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's ``fid_inception_v3()`` network (same parameter names), returning pool features and logits."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, c7=128)
        self.Mixed_6c = FIDInceptionC(768, c7=160)
        self.Mixed_6d = FIDInceptionC(768, c7=160)
        self.Mixed_6e = FIDInceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, NUM_CLASSES)

    def forward(self, x: torch.Tensor, resize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: ``(B, 3, H, W)`` in [0, 1]. Returns ``(pool (B, 2048), logits (B, 1008))``.

        The logits are ``pool · W_fcᵀ`` *without* the fc bias: the original Inception-Score code multiplies pool3
        by the ``softmax/logits/MatMul`` weights only, and torch-fidelity's ISC uses the same "logits_unbiased".
        """
        if resize:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        pool = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return pool, F.linear(pool, self.fc.weight)


def load_fid_inception(weights_path: str | os.PathLike | None = None, device: str = "cpu") -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load pytorch-fid's checkpoint from a local file (``strict=True``).

    ``weights_path`` defaults to ``$SPIDER_METRIC_WEIGHTS/pt_inception-2015-12-05-6726825d.pth``; a missing file
    raises :class:`~spider_jax.metrics.feature_models.MissingMetricWeights`.
    """
    path = resolve_weights("inception", weights_path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model = FIDInceptionV3()
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


class InceptionV3Extractor:
    """Batch of images → FID pool features ``(B, 2048)``; :meth:`logits` gives the 1008-way IS logits.

    Images of different sizes are fine: each is resized to 299×299 on its own (the same bilinear op pytorch-fid
    applies to a batch), so batching never requires equal sizes.
    """

    name = "fid-inception-v3-pool3"

    def __init__(self, weights_path: str | os.PathLike | None = None, device: str = "cpu",
                 model: FIDInceptionV3 | None = None) -> None:
        self.device = device
        self.model = model.to(device).eval() if model is not None else load_fid_inception(weights_path, device)

    def _prepare(self, batch: Sequence[Any]) -> torch.Tensor:
        tensors = []
        for item in batch:
            img = image_to_unit_float(load_image(item))
            t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(self.device)
            tensors.append(F.interpolate(t, size=(299, 299), mode="bilinear", align_corners=False))
        return torch.cat(tensors, 0)

    @torch.no_grad()
    def features_and_logits(self, batch: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Pool features ``(B, 2048)`` and logits ``(B, 1008)`` from one forward pass."""
        pool, logits = self.model(self._prepare(batch), resize=False)
        return pool.double().cpu().numpy(), logits.double().cpu().numpy()

    def __call__(self, batch: Sequence[Any]) -> np.ndarray:
        return self.features_and_logits(batch)[0]

    def logits(self, batch: Sequence[Any]) -> np.ndarray:
        return self.features_and_logits(batch)[1]


class _LogitsView:
    """Adapter so :func:`extract_features` (batching + progress bar) collects logits instead of pool features."""

    def __init__(self, ext: InceptionV3Extractor) -> None:
        self.ext, self.name = ext, ext.name + ":logits"

    def __call__(self, batch: Sequence[Any]) -> np.ndarray:
        return self.ext.logits(batch)


def inception_score_images(images: Sequence[Any], extractor: InceptionV3Extractor, *, splits: int = 10,
                           batch_size: int = 32, progress: bool = True) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) of generated images from the FID Inception's 1008-way logits.

    Same 2015-12-05 graph and bias-free 1008-way softmax as the original TF implementation and torch-fidelity's
    ISC; the resize differs slightly (pytorch-fid's bilinear resize, not TF's), as it does for FID.
    """
    logits = extract_features(images, _LogitsView(extractor), batch_size, progress, "IS")
    return inception_score(logits, splits=splits)
