"""The SAM paper's training loss: focal + dice on mask logits (20 : 1) and MSE on the predicted IoU.

For a prompt with M candidate masks (multimask output) only the mask with the lowest mask loss is
backpropagated, as in the paper's treatment of ambiguity. The IoU head is supervised on every candidate
by default (it must rank all of them at inference), or only on the selected one.

All functions take logits and targets of the same spatial size; `SamHfLoss` upsamples the model's
low-resolution logits to the target's size first (bilinear, as the processor does for outputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .metrics import mask_iou


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Per-mask focal loss averaged over pixels: (..., H, W) -> (...).

    Per pixel: -alpha_t * (1 - p_t) ** gamma * log(p_t), with p_t the probability of the true class and
    alpha_t = alpha on foreground, 1 - alpha on background (alpha < 0 disables the weighting).
    """
    targets = targets.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # -log(p_t)
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, *, smooth: float = 1.0) -> torch.Tensor:
    """Per-mask soft dice loss on sigmoid probabilities: (..., H, W) -> (...).

    1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth).
    """
    p = torch.sigmoid(logits).flatten(-2)
    t = targets.to(p.dtype).flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + smooth) / (p.sum(-1) + t.sum(-1) + smooth)


@dataclass
class SamHfLossOutput:
    """The loss and its parts, each a scalar tensor; `selected` is (B, P), the backpropagated mask index."""

    loss: torch.Tensor
    focal: torch.Tensor
    dice: torch.Tensor
    iou: torch.Tensor
    mask_iou: torch.Tensor
    selected: torch.Tensor


class SamHfLoss(torch.nn.Module):
    """`focal_weight * focal + dice_weight * dice` on the lowest-loss mask, plus `iou_weight * MSE(iou)`.

    Call with `pred_masks` (B, P, M, h, w) logits, `iou_scores` (B, P, M), `targets` (B, P, H, W) binary
    and optionally `weights` (B, P) (0 for padded prompts). Logits are upsampled to (H, W) when h, w differ.
    """

    def __init__(
        self,
        *,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        iou_on_all_masks: bool = True,
        mask_threshold: float = 0.0,
    ):
        super().__init__()
        for name, value in (("focal_weight", focal_weight), ("dice_weight", dice_weight), ("iou_weight", iou_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"SamHfLoss: {name} must be a number >= 0, got {value!r}")
        self.focal_weight = float(focal_weight)
        self.dice_weight = float(dice_weight)
        self.iou_weight = float(iou_weight)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.iou_on_all_masks = bool(iou_on_all_masks)
        self.mask_threshold = float(mask_threshold)

    def forward(
        self,
        pred_masks: torch.Tensor,
        iou_scores: torch.Tensor,
        targets: torch.Tensor,
        *,
        weights: torch.Tensor | None = None,
    ) -> SamHfLossOutput:
        if pred_masks.dim() != 5:
            raise ValueError(f"pred_masks must be (B, P, M, h, w) logits, got shape {tuple(pred_masks.shape)}")
        b, p, m, h, w = pred_masks.shape
        if iou_scores.shape != (b, p, m):
            raise ValueError(f"iou_scores must have shape {(b, p, m)} (B, P, M), got {tuple(iou_scores.shape)}")
        if targets.dim() != 4 or targets.shape[:2] != (b, p):
            raise ValueError(f"targets must be (B, P, H, W) with B, P = {b}, {p}, got shape {tuple(targets.shape)}")
        height, width = targets.shape[-2:]
        logits = pred_masks.float()
        if (h, w) != (height, width):
            logits = F.interpolate(logits.flatten(0, 1), size=(height, width), mode="bilinear", align_corners=False)
            logits = logits.unflatten(0, (b, p))  # (B, P, M, H, W)
        target = targets.to(logits.dtype).unsqueeze(2).expand_as(logits)  # (B, P, M, H, W)

        focal = sigmoid_focal_loss(logits, target, alpha=self.focal_alpha, gamma=self.focal_gamma)  # (B, P, M)
        dice = dice_loss(logits, target)  # (B, P, M)
        per_mask = self.focal_weight * focal + self.dice_weight * dice
        selected = per_mask.detach().argmin(dim=-1)  # (B, P)
        pick = selected.unsqueeze(-1)  # (B, P, 1)

        with torch.no_grad():
            actual_iou = mask_iou(logits > self.mask_threshold, target > 0.5)  # (B, P, M)
        iou_error = (iou_scores.float() - actual_iou) ** 2  # (B, P, M)
        if self.iou_on_all_masks:
            iou_error = iou_error.mean(-1)
        else:
            iou_error = iou_error.gather(-1, pick).squeeze(-1)

        if weights is None:
            weights = torch.ones(b, p, dtype=logits.dtype, device=logits.device)
        elif weights.shape != (b, p):
            raise ValueError(f"weights must have shape {(b, p)} (B, P), got {tuple(weights.shape)}")
        weights = weights.to(logits.dtype)
        denominator = weights.sum().clamp(min=1.0)

        def reduce(values: torch.Tensor) -> torch.Tensor:  # (B, P) -> scalar, padded prompts excluded
            return (values * weights).sum() / denominator

        focal_sel = reduce(focal.gather(-1, pick).squeeze(-1))
        dice_sel = reduce(dice.gather(-1, pick).squeeze(-1))
        iou_loss = reduce(iou_error)
        loss = self.focal_weight * focal_sel + self.dice_weight * dice_sel + self.iou_weight * iou_loss
        return SamHfLossOutput(
            loss=loss,
            focal=focal_sel.detach(),
            dice=dice_sel.detach(),
            iou=iou_loss.detach(),
            mask_iou=reduce(actual_iou.gather(-1, pick).squeeze(-1)),
            selected=selected,
        )


def sam_loss(pred_masks, iou_scores, targets, *, weights=None, **loss_kwargs) -> SamHfLossOutput:
    """Functional form of `SamHfLoss` (same arguments; keyword arguments configure the loss)."""
    return SamHfLoss(**loss_kwargs)(pred_masks, iou_scores, targets, weights=weights)
