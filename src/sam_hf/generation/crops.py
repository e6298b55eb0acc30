"""Crop boxes and point grids of automatic mask generation, and the maps from a crop back to the image.

Layer 0 is the whole image; layer i >= 1 tiles it with (2**i)**2 overlapping crops. Each layer samples an
evenly spaced grid of points in [0, 1]^2, scaled to the crop it runs on. Boxes are XYXY in pixels.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Sequence

import numpy as np
import torch


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n_per_side**2, 2) points (x, y) at the centres of an n x n tiling of [0, 1]^2, row after row."""
    if not isinstance(n_per_side, (int, np.integer)) or isinstance(n_per_side, bool) or n_per_side < 1:
        raise ValueError(f"n_per_side must be a positive int, got {n_per_side!r}")
    half_step = 1 / (2 * n_per_side)
    centres = np.linspace(half_step, 1 - half_step, n_per_side)
    xs = np.tile(centres[None, :], (n_per_side, 1))  # (n, n): x varies along a row
    ys = np.tile(centres[:, None], (1, n_per_side))  # (n, n): y varies down the rows
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)  # (n * n, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer: layer i has int(n_per_side / scale_per_layer**i) points per side."""
    grids = []
    for layer in range(n_layers + 1):
        n = int(n_per_side / (scale_per_layer**layer))
        if n < 1:
            raise ValueError(
                f"points_per_side={n_per_side} with crop_n_points_downscale_factor={scale_per_layer} leaves no "
                f"point in crop layer {layer}; expected points_per_side >= crop_n_points_downscale_factor**crop_n_layers"
            )
        grids.append(build_point_grid(n))
    return grids


def validate_point_grids(point_grids: Sequence, crop_n_layers: int) -> list[np.ndarray]:
    """Check explicit grids (one (K, 2) array in [0, 1] per crop layer) and return them as float64 arrays."""
    if isinstance(point_grids, np.ndarray) or not isinstance(point_grids, (list, tuple)):
        raise TypeError(f"point_grids must be a list of (K, 2) arrays, one per crop layer, got {type(point_grids).__name__}")
    if len(point_grids) < crop_n_layers + 1:
        raise ValueError(
            f"point_grids must hold one grid per crop layer (crop_n_layers + 1 = {crop_n_layers + 1}), got {len(point_grids)}"
        )
    grids = []
    for i, grid in enumerate(point_grids):
        arr = np.asarray(grid.cpu() if isinstance(grid, torch.Tensor) else grid, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
            raise ValueError(f"point_grids[{i}] must be a non-empty (K, 2) array of (x, y), got shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"point_grids[{i}] must hold coordinates normalized to [0, 1], got range [{arr.min()}, {arr.max()}]")
        grids.append(arr)
    return grids


def generate_crop_boxes(image_size: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY ints) over an image of `image_size` (H, W), and the layer of each.

    Layer i >= 1 has 2**i crops per side overlapping by int(overlap_ratio * short_side * 2 / 2**i) pixels. On an image
    only a few pixels high or wide some of them hold no pixel (they start at or past its edge): those are left out
    (Meta's generator passes them on and fails on an empty crop).
    """
    im_h, im_w = int(image_size[0]), int(image_size[1])
    short_side = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = int(math.ceil((overlap * (per_side - 1) + im_w) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + im_h) / per_side))
        lefts = [int((crop_w - overlap) * i) for i in range(per_side)]
        tops = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(lefts, tops):  # column of crops after column
            if x0 < im_w and y0 < im_h:
                boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
                layers.append(layer)
    return boxes, layers


def _offset(crop_box: Sequence[int], like: torch.Tensor, n: int) -> torch.Tensor:
    x0, y0 = int(crop_box[0]), int(crop_box[1])
    offset = torch.tensor([x0, y0] * (n // 2), device=like.device)
    return offset.view(*([1] * (like.dim() - 1)), n)


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """XYXY boxes (..., 4) from the crop's frame to the image's."""
    return boxes + _offset(crop_box, boxes, 4)


def uncrop_points(points: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """(x, y) points (..., 2) from the crop's frame to the image's."""
    return points + _offset(crop_box, points, 2)


def uncrop_masks(masks: torch.Tensor, crop_box: Sequence[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """Masks (..., h, w) of a crop, zero-padded into the (orig_h, orig_w) image frame."""
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    pad = (x0, orig_w - x1, y0, orig_h - y1)  # left, right, top, bottom
    return torch.nn.functional.pad(masks, pad, value=0)
