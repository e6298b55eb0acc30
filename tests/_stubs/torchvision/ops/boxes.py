"""Brute-force reference of torchvision.ops NMS semantics (test only, O(n^2), no tricks)."""
import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    ix0, iy0 = max(a[0], b[0]), max(a[1], b[1])
    ix1, iy1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(ix1 - ix0, 0.0) * max(iy1 - iy0, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    # torchvision: visit boxes by descending score (stable for ties); drop any box whose IoU with an
    # already kept box is strictly greater than the threshold.
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    b = boxes.double().tolist()
    keep = []
    for i in order:
        if all(_iou(b[i], b[j]) <= iou_threshold for j in keep):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int64)


def batched_nms(boxes, scores, idxs, iou_threshold):
    keep = []
    for c in torch.unique(idxs).tolist():
        sel = torch.nonzero(idxs == c).flatten()
        keep.extend(sel[nms(boxes[sel], scores[sel], iou_threshold)].tolist())
    keep = torch.tensor(keep, dtype=torch.int64)
    if keep.numel() == 0:
        return keep
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]
