"""Mask quality filters of automatic mask generation: stability, boxes, duplicates, crop edges, small regions.

All but `remove_small_regions` run batched on the masks' device.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..processing.thresholds import any_along, count_true, greater
from .crops import uncrop_boxes_xyxy
from .nms import batched_nms


def stability_score(mask_logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks binarized at `mask_threshold + offset` and at `mask_threshold - offset`.

    mask_logits (..., H, W) -> (...,) float32. The high mask lies inside the low one, so the IoU is the
    ratio of their areas (NaN for an empty low mask: it never passes a threshold).
    """
    high = count_true(greater(mask_logits, mask_threshold + offset))  # (...,) int32
    low = count_true(greater(mask_logits, mask_threshold - offset))  # (...,) int32
    return high / low


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes (..., 4) int64 around boolean masks (..., H, W), inclusive of the last pixel; [0, 0, 0, 0] if empty."""
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be a boolean tensor, got dtype {masks.dtype}")
    h, w = masks.shape[-2:]
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, dtype=torch.int64, device=masks.device)
    rows = any_along(masks, -1).to(torch.uint8)  # (..., H): some pixel on this row
    cols = any_along(masks, -2).to(torch.uint8)  # (..., W): some pixel in this column
    top = rows.argmax(dim=-1)  # first maximum: the first occupied row
    bottom = h - 1 - rows.flip(-1).argmax(dim=-1)
    left = cols.argmax(dim=-1)
    right = w - 1 - cols.flip(-1).argmax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)  # (..., 4)
    nonempty = rows.any(dim=-1, keepdim=True)  # (..., 1)
    return boxes * nonempty


def suppress_duplicates(boxes: torch.Tensor, iou_preds: torch.Tensor, stability: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Meta's within-crop NMS: indices (int64) of the masks kept, by descending predicted IoU.

    boxes (N, 4) XYXY, iou_preds (N,), stability (N,) their stability scores. fp32 predicted IoUs are
    visited in Meta's order (equal ones in the given order). Predicted IoUs in a 16-bit float dtype are coarse
    (bf16 keeps 8 significant bits: the 1,000 masks of a 32x32 grid on the shipped model share about 120
    values), so masks of one object often tie; equal ones are visited by descending stability score, SAM's
    other quality estimate of a mask, rather than by grid order (a NaN stability, an empty mask, last).
    """
    if not isinstance(iou_preds, torch.Tensor) or not iou_preds.is_floating_point():
        got = iou_preds.dtype if isinstance(iou_preds, torch.Tensor) else type(iou_preds).__name__
        raise TypeError(f"iou_preds must be a floating-point tensor, got {got}")
    if not isinstance(stability, torch.Tensor) or stability.shape != iou_preds.shape:
        got = tuple(stability.shape) if isinstance(stability, torch.Tensor) else type(stability).__name__
        raise ValueError(f"stability must be a tensor of iou_preds' shape {tuple(iou_preds.shape)}, got {got}")
    if torch.finfo(iou_preds.dtype).bits < 32:
        key = torch.nan_to_num(stability.float(), nan=-torch.inf)
        first = torch.sort(key, descending=True, stable=True).indices  # (N,) ties of the sort below in this order
    else:
        first = torch.arange(iou_preds.shape[0], device=iou_preds.device)
    categories = torch.zeros(iou_preds.shape[0], dtype=torch.int64, device=iou_preds.device)
    return first[batched_nms(boxes[first].float(), iou_preds[first], categories, iou_threshold)]


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: Sequence[int], orig_box: Sequence[int], atol: float = 20.0
) -> torch.Tensor:
    """(N,) bool: the box (crop frame, XYXY) lies within `atol` px of a crop edge that is not an image edge."""
    crop_t = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig_t = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = torch.isclose(boxes, crop_t[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig_t[None, :], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


def box_xyxy_to_xywh(box: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """XYXY -> XYWH for boxes (..., 4)."""
    xywh = box.clone() if isinstance(box, torch.Tensor) else np.array(box, copy=True)
    xywh[..., 2] = box[..., 2] - box[..., 0]
    xywh[..., 3] = box[..., 3] - box[..., 1]
    return xywh


def _connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    try:
        from scipy import ndimage
    except ImportError as err:
        raise ImportError(
            "min_mask_region_area > 0 needs scipy for connected components: install it with "
            "`pip install 'sam-hf[postprocess]'`"
        ) from err
    # 8-connectivity; labels 1..n in raster order of each region's first pixel, 0 for the background.
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return labels, n


def require_scipy() -> None:
    """Fail early, with the extra to install, when scipy is missing."""
    _connected_components(np.zeros((1, 1), dtype=bool))


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (`mode="holes"`) or drop islands (`mode="islands"`) smaller than `area_thresh` pixels.

    Returns the mask and whether it changed. An island mask whose every region is small keeps its largest.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    fill_holes = mode == "holes"
    working = np.logical_xor(mask, fill_holes)  # holes: the background's regions; islands: the mask's
    labels, n = _connected_components(working)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]  # (n,) region areas
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if fill_holes:
        # The mask becomes the background's small regions plus the mask itself (label 0 of `working`).
        return np.isin(labels, np.concatenate([[0], small])), True
    keep = np.setdiff1d(np.arange(1, n + 1), small)
    if keep.size == 0:
        keep = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, keep), True
