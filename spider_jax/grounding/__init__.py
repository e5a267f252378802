"""Grounding heads for Spider's ``<BOX>`` / ``<MASK>`` answer groups: GroundingDINO + SAM in PyTorch behind a bridge.

* :mod:`.bridge` moves arrays JAX ⇄ torch (DLPack, zero-copy where possible);
* :mod:`.heads` runs GroundingDINO (boxes) and SAM (masks) from local transformers folders;
* :mod:`.outputs` writes COCO-style JSON, RLE masks and PNG overlays;
* :mod:`.tiny` builds tiny random model folders offline for tests and demos.
"""

from spider_jax.grounding.bridge import UnsupportedDtypeError, to_jax, to_numpy, to_torch, tree_to_jax, tree_to_torch
from spider_jax.grounding.heads import (
    Detections,
    GroundingConfig,
    GroundingDinoHead,
    GroundingHeads,
    GroundingWeightsError,
    Masks,
    SamHead,
    check_weights_folder,
    normalize_query,
)
from spider_jax.grounding.outputs import (
    detections_to_json,
    draw_overlay,
    masks_to_json,
    masks_to_rle,
    rle_to_masks,
    save_json,
    save_overlay,
    write_overlay,
)
from spider_jax.grounding.tiny import make_tiny_grounding_folders

__all__ = [
    "Detections",
    "GroundingConfig",
    "GroundingDinoHead",
    "GroundingHeads",
    "GroundingWeightsError",
    "Masks",
    "SamHead",
    "UnsupportedDtypeError",
    "check_weights_folder",
    "detections_to_json",
    "draw_overlay",
    "make_tiny_grounding_folders",
    "masks_to_json",
    "masks_to_rle",
    "normalize_query",
    "rle_to_masks",
    "save_json",
    "save_overlay",
    "to_jax",
    "to_numpy",
    "to_torch",
    "tree_to_jax",
    "tree_to_torch",
    "write_overlay",
]
