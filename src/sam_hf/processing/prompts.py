"""Prompts: validate, scale from the original frame to the model-input frame, pad to one array.

Forms (nested lists, numpy arrays or torch tensors; lists may be ragged):
- input_points  [image][prompt][point][x, y]  (B, P, N, 2), or [image][point][x, y] (B, N, 2) for one
  prompt per image;
- input_labels  [image][prompt][point] (B, P, N), or [image][point] (B, N): 1 positive, 0 negative,
  -1 "not a point" (Meta's); defaults to 1 for every given point;
- input_boxes   [image][prompt][x0, y0, x1, y1] (B, P, 4).
When points and boxes are both given, prompt j of image i is points[i][j] together with boxes[i][j].
Ragged point counts are padded with coordinates (0, 0) and label -10 (the model masks those slots);
ragged prompt counts are padded too, and `prompt_mask` (B, P) says which prompts are real.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..real_numbers import is_real
from .resize import scale_coords

PAD_LABEL = -10
VALID_LABELS = (1, 0, -1)


@dataclass
class PromptBatch:
    """Prompts of B images, padded: arrays are None where that prompt kind was not given."""

    input_points: np.ndarray | None  # (B, P, N, 2) float32, model-input frame
    input_labels: np.ndarray | None  # (B, P, N) int64, PAD_LABEL in padded slots
    input_boxes: np.ndarray | None  # (B, P, 4) float32, model-input frame
    prompt_mask: np.ndarray  # (B, P) bool, False for padded prompts


# coordinates beyond this (float32's range, less the most a model side scales them by) cannot reach the model
COORDINATE_LIMIT = float(np.finfo(np.float32).max) / 2**16


def _nested(value, name: str):
    """Arrays and tensors anywhere in the structure -> nested Python lists."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must contain only real numbers, got a tensor of dtype {value.dtype}")
        return _nested(value.detach().cpu().tolist(), name)  # the leaves checked too
    if isinstance(value, np.ndarray):
        return _nested(value.tolist(), name)
    if isinstance(value, (list, tuple)):
        return [_nested(v, name) for v in value]
    if not is_real(value):
        raise TypeError(f"{name} must contain only numbers, got {type(value).__name__} ({value!r})")
    return value


def _depth(value) -> int:
    depth = 0
    while isinstance(value, list) and value:
        value, depth = value[0], depth + 1
    return depth + (1 if isinstance(value, list) else 0)


def _check_structure(value, path: str, levels: list[str], leaf_len: int | None) -> None:
    """Every entry down `levels` is a non-empty list; the innermost lists have `leaf_len` numbers."""
    if not isinstance(value, list):
        raise ValueError(f"{path} must be a list of {levels[0]}s, got {value!r}")
    if not value:
        raise ValueError(f"{path} must hold at least one {levels[0]}, got an empty list")
    if len(levels) == 1:
        if leaf_len is not None and len(value) != leaf_len:
            raise ValueError(f"{path} must hold {leaf_len} numbers ({levels[0]}s), got {len(value)}: {value!r}")
        if any(isinstance(v, list) for v in value):
            raise ValueError(f"{path} must hold numbers, got a nested list: {value!r}")
        return
    for i, item in enumerate(value):
        _check_structure(item, f"{path}[{i}]", levels[1:], leaf_len)


def _check_finite(value: list, path: str) -> None:
    """Finite, and within float32's range (the model's coordinates are float32, scaled by at most the model side)."""
    for i, v in enumerate(value):
        try:
            finite = math.isfinite(v) and abs(v) < COORDINATE_LIMIT
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite:
            raise ValueError(f"{path}[{i}] must be a finite coordinate within float32's range, got {v}")


def parse_points(input_points, name: str = "input_points") -> list[list[np.ndarray]]:
    """-> per image, per prompt, an (N, 2) float64 array of x, y."""
    nested = _nested(input_points, name)
    depth = _depth(nested)
    if depth == 3:
        nested = [[image] for image in nested]  # [image][point][xy] -> one prompt per image
    elif depth != 4:
        raise ValueError(
            f"{name} must be nested as [image][prompt][point][x, y] (B, P, N, 2) or [image][point][x, y] "
            f"(B, N, 2), e.g. [[[450, 600]]] for one point on one image; got {depth} levels of nesting"
        )
    _check_structure(nested, name, ["image", "prompt", "point", "coordinate"], 2)
    out = []
    for i, image in enumerate(nested):
        for j, prompt in enumerate(image):
            for k, point in enumerate(prompt):
                _check_finite(point, f"{name}[{i}][{j}][{k}]")
        out.append([np.asarray(prompt, dtype=np.float64) for prompt in image])  # P x (N, 2)
    return out


def parse_labels(input_labels, points: list[list[np.ndarray]], name: str = "input_labels") -> list[list[np.ndarray]]:
    """-> per image, per prompt, an (N,) int64 array; its structure must match the points'."""
    nested = _nested(input_labels, name)
    depth = _depth(nested)
    if depth == 2:
        nested = [[image] for image in nested]  # [image][point] -> one prompt per image
    elif depth != 3:
        raise ValueError(
            f"{name} must be nested as [image][prompt][point] (B, P, N) or [image][point] (B, N), "
            f"matching input_points; got {depth} levels of nesting"
        )
    _check_structure(nested, name, ["image", "prompt", "label"], None)
    if len(nested) != len(points):
        raise ValueError(f"{name} must have one entry per image like input_points ({len(points)}), got {len(nested)}")
    out = []
    for i, (image_labels, image_points) in enumerate(zip(nested, points)):
        if len(image_labels) != len(image_points):
            raise ValueError(
                f"{name}[{i}] must have one entry per prompt like input_points[{i}] ({len(image_points)}), "
                f"got {len(image_labels)}"
            )
        for j, (labels, pts) in enumerate(zip(image_labels, image_points)):
            if len(labels) != len(pts):
                raise ValueError(
                    f"{name}[{i}][{j}] must have one label per point ({len(pts)}), got {len(labels)}"
                )
            bad = [v for v in labels if v not in VALID_LABELS]
            if bad:
                raise ValueError(
                    f"{name}[{i}][{j}] must hold labels in {{1, 0, -1}} (positive, negative, not a point), got {bad}"
                )
        out.append([np.asarray(labels, dtype=np.int64) for labels in image_labels])  # P x (N,)
    return out


def parse_boxes(input_boxes, name: str = "input_boxes") -> list[np.ndarray]:
    """-> per image a (P, 4) float64 array of x0, y0, x1, y1 with x0 <= x1 and y0 <= y1."""
    nested = _nested(input_boxes, name)
    depth = _depth(nested)
    if depth != 3:
        raise ValueError(
            f"{name} must be nested as [image][box][x0, y0, x1, y1] (B, P, 4), e.g. [[[x0, y0, x1, y1]]] "
            f"for one box on one image; got {depth} levels of nesting"
        )
    _check_structure(nested, name, ["image", "box", "coordinate"], 4)
    out = []
    for i, image in enumerate(nested):
        for j, (x0, y0, x1, y1) in enumerate(image):
            _check_finite([x0, y0, x1, y1], f"{name}[{i}][{j}]")
            if x1 < x0 or y1 < y0:
                raise ValueError(
                    f"{name}[{i}][{j}] must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {[x0, y0, x1, y1]}"
                )
        out.append(np.asarray(image, dtype=np.float64))  # (P, 4)
    return out


def prepare_prompts(
    original_sizes: list[tuple[int, int]],
    *,
    longest_edge: int,
    input_points=None,
    input_labels=None,
    input_boxes=None,
) -> PromptBatch | None:
    """Validate prompts for B images of `original_sizes` (H, W), scale them, pad them. None if no prompt."""
    if input_labels is not None and input_points is None:
        raise ValueError("input_labels were given without input_points; pass both, or neither")
    if input_points is None and input_boxes is None:
        return None
    batch = len(original_sizes)
    points = labels = boxes = None
    if input_points is not None:
        points = parse_points(input_points)
        if len(points) != batch:
            raise ValueError(f"input_points must have one entry per image ({batch} images), got {len(points)}")
        if input_labels is None:
            labels = [[np.ones(len(p), dtype=np.int64) for p in image] for image in points]
        else:
            labels = parse_labels(input_labels, points)
    if input_boxes is not None:
        boxes = parse_boxes(input_boxes)
        if len(boxes) != batch:
            raise ValueError(f"input_boxes must have one entry per image ({batch} images), got {len(boxes)}")
    if points is not None and boxes is not None:
        for i, (image_points, image_boxes) in enumerate(zip(points, boxes)):
            if len(image_points) != len(image_boxes):
                raise ValueError(
                    f"input_points[{i}] and input_boxes[{i}] must describe the same prompts, got "
                    f"{len(image_points)} point prompts and {len(image_boxes)} boxes"
                )

    counts = [len(image) for image in points] if points is not None else [len(b) for b in boxes]
    num_prompts = max(counts)
    prompt_mask = np.zeros((batch, num_prompts), dtype=bool)  # (B, P)
    for i, count in enumerate(counts):
        prompt_mask[i, :count] = True

    out_points = out_labels = out_boxes = None
    if points is not None:
        num_points = max(len(p) for image in points for p in image)
        out_points = np.zeros((batch, num_prompts, num_points, 2), dtype=np.float32)  # (B, P, N, 2)
        out_labels = np.full((batch, num_prompts, num_points), PAD_LABEL, dtype=np.int64)  # (B, P, N)
        for i, size in enumerate(original_sizes):
            for j, (pts, lbl) in enumerate(zip(points[i], labels[i])):
                out_points[i, j, : len(pts)] = scale_coords(pts, size, longest_edge)
                out_labels[i, j, : len(lbl)] = lbl
    if boxes is not None:
        out_boxes = np.zeros((batch, num_prompts, 4), dtype=np.float32)  # (B, P, 4)
        for i, size in enumerate(original_sizes):
            corners = scale_coords(boxes[i].reshape(-1, 2, 2), size, longest_edge)  # (P_i, 2, 2)
            out_boxes[i, : len(boxes[i])] = corners.reshape(-1, 4)
    return PromptBatch(out_points, out_labels, out_boxes, prompt_mask)
