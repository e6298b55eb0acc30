"""Mask quality in torch, batched over any leading dimensions.

Inputs are binary masks (bool, or numbers where > 0.5 counts as foreground) of shape (..., H, W).
Two empty masks agree perfectly: their IoU and Dice are 1.
"""

from __future__ import annotations

import torch


def _binary(masks: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (..., H, W), got {type(masks).__name__}")
    if masks.dim() < 2:
        raise ValueError(f"{name} must have shape (..., H, W), got shape {tuple(masks.shape)}")
    return masks if masks.dtype == torch.bool else masks > 0.5


def _counts(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pred, target = _binary(pred, "pred"), _binary(target, "target")
    if pred.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"pred and target must share (H, W), got {tuple(pred.shape[-2:])} and {tuple(target.shape[-2:])}")
    intersection = (pred & target).flatten(-2).sum(-1)
    return intersection, pred.flatten(-2).sum(-1), target.flatten(-2).sum(-1)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union, (..., H, W) x (..., H, W) -> (...) float (broadcasting leading dims)."""
    intersection, pred_area, target_area = _counts(pred, target)
    union = pred_area + target_area - intersection
    iou = intersection.float() / union.clamp(min=1).float()
    return torch.where(union == 0, torch.ones_like(iou), iou)


def dice_score(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice coefficient 2|A∩B| / (|A| + |B|), (..., H, W) x (..., H, W) -> (...) float."""
    intersection, pred_area, target_area = _counts(pred, target)
    total = pred_area + target_area
    dice = 2 * intersection.float() / total.clamp(min=1).float()
    return torch.where(total == 0, torch.ones_like(dice), dice)


class MeanMetric:
    """Running mean of per-item values (for example per-mask IoU) across batches."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().flatten().double()
        self.total += float(values.sum())
        self.count += values.numel()

    def compute(self) -> float:
        return self.total / self.count if self.count else float("nan")
