"""Prompt simulation from ground-truth masks, as in the SAM paper's training (section 3 and appendix A).

- The first prompt is a foreground point sampled uniformly inside the mask, or the mask's box with noise
  whose standard deviation is 10% of the box side (capped at 20 pixels), optionally with negative points
  sampled outside the mask.
- Each refinement round samples the next point uniformly from the error region between the previous
  prediction and the ground truth: a false-negative pixel becomes a positive point, a false-positive pixel
  a negative one. The previous low-resolution logits (of the mask with the highest predicted IoU) are fed
  back as the mask prompt.

Masks are (K, H, W) in the frame the points are wanted in (the model-input frame for training); points
are (x, y) pixel indices as floats, boxes (x0, y0, x1, y1) with inclusive pixel indices, as in Meta's code.
Every random choice is drawn from the `generator` argument, so a seeded generator reproduces a run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..processing.thresholds import any_along


@dataclass
class SimulatedPrompts:
    """Prompts for K masks: `points` (K, N, 2) and `labels` (K, N) or None, `boxes` (K, 4) or None,
    `mask_inputs` (K, 1, h, w) low-resolution logits or None. Maps onto the model's `input_points`,
    `input_labels`, `input_boxes` and `input_masks` after adding the image dimension."""

    points: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    mask_inputs: torch.Tensor | None = None

    @property
    def num_points(self) -> int:
        return 0 if self.points is None else self.points.shape[1]


def _check_masks(masks: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"{name} must be a (K, H, W) tensor of binary masks, got {shape}")
    return masks if masks.dtype == torch.bool else masks > 0.5


def _rand_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes (K, 4) as x0, y0, x1, y1 inclusive pixel indices; an empty mask gives zeros."""
    masks = _check_masks(masks, "masks")
    k, h, w = masks.shape
    rows = any_along(masks, 2)  # (K, H)
    cols = any_along(masks, 1)  # (K, W)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ys, h).amin(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1)
    x0 = torch.where(cols, xs, w).amin(dim=1)
    x1 = torch.where(cols, xs, -1).amax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()  # (K, 4)
    empty = ~rows.any(dim=1)
    return torch.where(empty[:, None], torch.zeros_like(boxes), boxes)


def jitter_boxes(
    boxes: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    noise_std: float = 0.1,
    max_noise: float = 20.0,
    image_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Add Gaussian noise to each coordinate: std = min(noise_std * box side, max_noise) pixels.

    The side is the box width for x coordinates and its height for y. With `image_size` (H, W) the
    result is clipped to the image; corners are kept ordered (x0 <= x1, y0 <= y1).
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (K, 4), got {tuple(boxes.shape)}")
    if noise_std < 0 or max_noise < 0:
        raise ValueError(f"noise_std and max_noise must be >= 0, got {noise_std} and {max_noise}")
    boxes = boxes.float()
    width = boxes[:, 2] - boxes[:, 0] + 1
    height = boxes[:, 3] - boxes[:, 1] + 1
    std = torch.stack([width, height, width, height], dim=1) * noise_std  # (K, 4)
    std = std.clamp(max=max_noise)
    noise = torch.randn(boxes.shape, generator=generator, device=_rand_device(generator)).to(boxes.device)
    out = boxes + noise * std
    x0, x1 = torch.minimum(out[:, 0], out[:, 2]), torch.maximum(out[:, 0], out[:, 2])
    y0, y1 = torch.minimum(out[:, 1], out[:, 3]), torch.maximum(out[:, 1], out[:, 3])
    out = torch.stack([x0, y0, x1, y1], dim=1)
    if image_size is not None:
        h, w = image_size
        out = torch.stack([out[:, 0].clamp(0, w - 1), out[:, 1].clamp(0, h - 1),
                           out[:, 2].clamp(0, w - 1), out[:, 3].clamp(0, h - 1)], dim=1)
    return out


def sample_points(regions: torch.Tensor, *, num_points: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Points (K, num_points, 2) as (x, y), sampled uniformly (with replacement) inside each region (K, H, W)."""
    regions = _check_masks(regions, "regions")
    k, h, w = regions.shape
    weights = regions.flatten(1).float()  # (K, H*W)
    empty = (weights.sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"cannot sample points from empty regions: regions {empty} (of {k}) have no pixel")
    weights = weights.to(_rand_device(generator))
    flat = torch.multinomial(weights, num_points, replacement=True, generator=generator).to(regions.device)  # (K, n)
    return torch.stack([flat % w, flat // w], dim=-1).float()  # (K, n, 2) as x, y


def _valid_or_all(valid: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if valid is None:
        return torch.ones_like(like)
    valid = _check_masks(valid, "valid") if valid.dim() == 3 else (valid if valid.dtype == torch.bool else valid > 0.5)
    return valid.expand_as(like)


def initial_prompts(
    masks: torch.Tensor,
    *,
    mode: str,
    generator: torch.Generator | None = None,
    num_positive: int = 1,
    num_negative: int = 0,
    box_noise_std: float = 0.1,
    box_max_noise: float = 20.0,
    valid: torch.Tensor | None = None,
) -> SimulatedPrompts:
    """The first prompt for each mask (K, H, W): `mode="point"` or `"box"`.

    `num_positive` points inside the mask (point mode), `num_negative` points outside it but inside `valid`
    (H, W) or (K, H, W) (the unpadded image area; default everywhere). Box mode jitters the tight box.
    """
    masks = _check_masks(masks, "masks")
    if mode not in ("point", "box"):
        raise ValueError(f"mode must be 'point' or 'box', got {mode!r}")
    if num_negative < 0 or num_positive < 0:
        raise ValueError(f"num_positive and num_negative must be >= 0, got {num_positive} and {num_negative}")
    prompts = SimulatedPrompts()
    points, labels = [], []
    if mode == "box":
        prompts.boxes = jitter_boxes(boxes_from_masks(masks), generator=generator, noise_std=box_noise_std,
                                     max_noise=box_max_noise, image_size=tuple(masks.shape[-2:]))
    elif num_positive > 0:
        points.append(sample_points(masks, num_points=num_positive, generator=generator))
        labels.append(torch.ones(masks.shape[0], num_positive, dtype=torch.long, device=masks.device))
    if mode == "point" and num_positive == 0 and num_negative == 0:
        raise ValueError("point mode needs num_positive or num_negative > 0")
    if num_negative > 0:
        outside = ~masks & _valid_or_all(valid, masks)
        points.append(sample_points(outside, num_points=num_negative, generator=generator))
        labels.append(torch.zeros(masks.shape[0], num_negative, dtype=torch.long, device=masks.device))
    if points:
        prompts.points = torch.cat(points, dim=1)  # (K, N, 2)
        prompts.labels = torch.cat(labels, dim=1)  # (K, N)
    return prompts


def error_points(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per mask: points (K, 1, 2) and labels (K, 1).

    The point is uniform over the error region (pred XOR target, inside `valid`); label 1 where the pixel
    is a false negative, 0 where it is a false positive. A perfect prediction gets a positive point
    inside the target instead.
    """
    pred, target = _check_masks(pred, "pred"), _check_masks(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    error = (pred ^ target) & _valid_or_all(valid, target)  # (K, H, W)
    perfect = ~error.flatten(1).any(dim=1)  # (K,)
    region = torch.where(perfect[:, None, None], target, error)
    points = sample_points(region, num_points=1, generator=generator)  # (K, 1, 2)
    x, y = points[:, 0, 0].long(), points[:, 0, 1].long()
    on_target = target[torch.arange(target.shape[0], device=target.device), y, x]  # (K,)
    return points, on_target.long()[:, None]


def refine_prompts(
    prompts: SimulatedPrompts,
    *,
    pred_logits: torch.Tensor,
    iou_scores: torch.Tensor,
    target: torch.Tensor,
    generator: torch.Generator | None = None,
    valid: torch.Tensor | None = None,
    add_point: bool = True,
    mask_threshold: float = 0.0,
) -> SimulatedPrompts:
    """The next round's prompts: the previous prompts, one error-region click, the best logits as mask input.

    `pred_logits` (K, M, h, w) are the previous low-resolution logits and `iou_scores` (K, M) their predicted
    IoU; the candidate with the highest score is kept. It is upsampled (bilinear) to the target's (H, W) to
    find the error region. `add_point=False` feeds back the mask only (the paper's rounds without a click).
    """
    if pred_logits.dim() != 4 or iou_scores.shape != pred_logits.shape[:2]:
        raise ValueError(f"pred_logits must be (K, M, h, w) and iou_scores (K, M), got {tuple(pred_logits.shape)} "
                         f"and {tuple(iou_scores.shape)}")
    best = iou_scores.argmax(dim=1)  # (K,)
    logits = pred_logits[torch.arange(pred_logits.shape[0], device=pred_logits.device), best][:, None]  # (K, 1, h, w)
    out = replace(prompts, mask_inputs=logits.detach())
    if not add_point:
        return out
    target = _check_masks(target, "target")
    up = torch.nn.functional.interpolate(logits.detach().float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    points, labels = error_points(up[:, 0] > mask_threshold, target, generator=generator, valid=valid)
    if prompts.points is None:
        out.points, out.labels = points, labels
    else:
        out.points = torch.cat([prompts.points, points.to(prompts.points.dtype)], dim=1)  # (K, N + 1, 2)
        out.labels = torch.cat([prompts.labels, labels.to(prompts.labels.dtype)], dim=1)  # (K, N + 1)
    return out


def interior_points(masks: torch.Tensor) -> torch.Tensor:
    """The pixel farthest from each mask's boundary, (K, 1, 2) as (x, y): the usual evaluation click.

    Distances are Euclidean to the nearest background pixel, with the image border counting as background;
    ties go to the first pixel in row-major order. Needs scipy (`pip install sam-hf[training]`).
    """
    try:
        from scipy.ndimage import distance_transform_edt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("interior_points needs scipy: pip install sam-hf[training]") from error
    masks = _check_masks(masks, "masks")
    k, h, w = masks.shape
    points = torch.zeros(k, 1, 2)
    for i, mask in enumerate(masks.cpu().numpy()):
        if not mask.any():
            raise ValueError(f"masks[{i}] is empty: no interior point")
        distance = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]  # (H, W)
        flat = int(distance.argmax())
        points[i, 0] = torch.tensor([flat % w, flat // w], dtype=torch.float32)
    return points.to(masks.device)
