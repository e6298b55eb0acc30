"""Non-maximum suppression in pure torch, with torchvision's semantics (no torchvision needed).

Semantics (those of `torchvision.ops.nms` / `batched_nms`): boxes are visited by descending score, ties
in their given order; a box is dropped when its IoU with an already kept box of the same category is
strictly greater than the threshold. The result holds the kept indices by descending score.

The greedy pass is computed without a Python loop per box: with `S[i, j]` = "box i would suppress box j"
(i before j in score order, same category, IoU > threshold), the kept set is the fixed point of
`keep[j] = not any_i(keep[i] and S[i, j])`. Iterating from "keep all" reaches exactly the greedy result
after as many rounds as the longest chain of suppressions (a handful in practice), each round one
boolean matrix-vector product.
"""

from __future__ import annotations

import torch

# Boxes per block when building the suppression matrix (bounds the float temporaries to block x n).
_BLOCK = 1024


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of XYXY boxes (N, 4) -> (N,), as torchvision computes it (no +1)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _check(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> None:
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
        got = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a (N, 4) tensor of XYXY boxes, got {got}")
    if not isinstance(scores, torch.Tensor) or scores.shape != boxes.shape[:1]:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a ({boxes.shape[0]},) tensor, got {got}")
    if not isinstance(iou_threshold, (int, float)):
        raise TypeError(f"iou_threshold must be a float, got {type(iou_threshold).__name__}")


def _suppression_matrix(boxes: torch.Tensor, categories: torch.Tensor | None, iou_threshold: float) -> torch.Tensor:
    """(N, N) bool: S[i, j] = i < j, same category and IoU(i, j) > threshold, for boxes in visit order."""
    n = boxes.shape[0]
    boxes = boxes.double()  # IoU as an exact reference computes it; boxes are few
    areas = box_area(boxes)
    later = torch.ones(n, n, dtype=torch.bool, device=boxes.device).triu_(1)
    for start in range(0, n, _BLOCK):
        rows = slice(start, min(start + _BLOCK, n))
        top_left = torch.maximum(boxes[rows, None, :2], boxes[None, :, :2])  # (b, N, 2)
        bottom_right = torch.minimum(boxes[rows, None, 2:], boxes[None, :, 2:])  # (b, N, 2)
        wh = (bottom_right - top_left).clamp_(min=0)
        inter = wh[..., 0] * wh[..., 1]  # (b, N)
        union = areas[rows, None] + areas[None, :] - inter
        iou = torch.where(union > 0, inter / union.where(union > 0, torch.ones_like(union)), torch.zeros_like(union))
        later[rows] &= iou > iou_threshold
        if categories is not None:
            later[rows] &= categories[rows, None] == categories[None, :]
    return later


def _greedy_keep(suppress: torch.Tensor) -> torch.Tensor:
    """Fixed point of keep[j] = not any(keep[i] and S[i, j]): the greedy NMS result, as a bool (N,)."""
    n = suppress.shape[0]
    weights = suppress.to(torch.float32)  # exact: counts of at most N ones
    keep = torch.ones(n, dtype=torch.bool, device=suppress.device)
    for _ in range(n + 1):
        new_keep = (keep.to(torch.float32) @ weights) == 0
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def _nms_in_order(boxes: torch.Tensor, categories: torch.Tensor | None, order: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    if order.numel() == 0:
        return order
    keep = _greedy_keep(_suppression_matrix(boxes[order], None if categories is None else categories[order], iou_threshold))
    return order[keep]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices (int64) of the boxes kept by NMS, by descending score. boxes (N, 4) XYXY, scores (N,)."""
    _check(boxes, scores, iou_threshold)
    order = torch.sort(scores.to(boxes.device), descending=True, stable=True).indices
    return _nms_in_order(boxes, None, order, float(iou_threshold))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS done independently per category `idxs` (N,); kept indices (int64) by descending score.

    Equal scores across categories come out by ascending category, then by index.
    """
    _check(boxes, scores, iou_threshold)
    if not isinstance(idxs, torch.Tensor) or idxs.shape != scores.shape:
        got = tuple(idxs.shape) if isinstance(idxs, torch.Tensor) else type(idxs).__name__
        raise ValueError(f"idxs must be a ({boxes.shape[0]},) tensor of categories, got {got}")
    idxs, scores = idxs.to(boxes.device), scores.to(boxes.device)
    by_category = torch.sort(idxs, stable=True).indices
    order = by_category[torch.sort(scores[by_category], descending=True, stable=True).indices]
    return _nms_in_order(boxes, idxs, order, float(iou_threshold))
