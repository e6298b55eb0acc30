"""Checks of SamHfModel's inputs: every wrong shape, dtype or value raises with the argument's name,
what was expected and what came. Nothing is silently corrected."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..real_numbers import is_real
from .prompt_encoder import PAD_LABEL

VALID_LABELS = (1, 0, -1, PAD_LABEL)


def _tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _require(ok: torch.Tensor, message: str) -> None:
    """Raises a ValueError with `message` unless the boolean tensor `ok` holds True. While `torch.export` traces, where
    values are unknown, the check goes into the exported program as a runtime assertion with the same message (which
    raises a RuntimeError there)."""
    if torch.compiler.is_exporting():
        torch._assert_async(ok, message)
    elif not bool(ok):
        raise ValueError(message)


def _finite(name: str, value: torch.Tensor) -> None:
    _floating(name, value)
    message = f"{name} must contain only finite values, got NaN or inf"
    if torch.compiler.is_compiling() or value.numel() == 0:  # traced (exported: a runtime assertion), or nothing to read
        _require(torch.isfinite(value).all(), message)
    elif not all(math.isfinite(bound) for bound in torch.aminmax(value)):  # NaN propagates to both
        # one reduction instead of a bool tensor: ViT-B embeddings on 2 cores 0.15 against 2.1 ms (isfinite().all())
        raise ValueError(message)


def _floating(name: str, value: torch.Tensor, what: str = "") -> None:
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor{what}, got dtype {value.dtype}")


def check_pixel_values(pixel_values, image_size: int, num_channels: int) -> None:
    pixel_values = _tensor("pixel_values", pixel_values)
    _floating("pixel_values", pixel_values, " (normalised images, as the processor makes them)")
    expected = (num_channels, image_size, image_size)
    if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
        raise ValueError(
            f"pixel_values must have shape (B, {num_channels}, {image_size}, {image_size}) "
            f"(the processor resizes and pads to the model size), got {tuple(pixel_values.shape)}"
        )
    if pixel_values.shape[0] == 0:
        raise ValueError("pixel_values must hold at least one image, got batch size 0")
    _finite("pixel_values", pixel_values)  # a pass over the input: nothing next to the encoder's work


def check_image_embeddings(image_embeddings, channels: int, grid: int) -> None:
    image_embeddings = _tensor("image_embeddings", image_embeddings)
    if image_embeddings.dim() != 4 or tuple(image_embeddings.shape[1:]) != (channels, grid, grid):
        raise ValueError(f"image_embeddings must have shape (B, {channels}, {grid}, {grid}), got {tuple(image_embeddings.shape)}")
    _floating("image_embeddings", image_embeddings)
    if image_embeddings.shape[0] == 0:
        raise ValueError("image_embeddings must hold at least one image, got batch size 0")


def check_finite_embeddings(image_embeddings: torch.Tensor) -> None:
    """NaN or inf in given image embeddings raise. One reduction over them (ViT-B, 2 cores: about 0.15 ms), which the
    decoder makes once per embeddings it keeps work for (`image_cache.call_cache`): clicks on a kept `image_cache` do
    not repeat it."""
    _finite("image_embeddings", image_embeddings)


def check_decoding_options(multimask_output, mask_iou_threshold) -> None:
    if not isinstance(multimask_output, (bool, np.bool_)):
        raise TypeError(f"multimask_output must be a bool, got {type(multimask_output).__name__}")
    if mask_iou_threshold is None:
        return
    if not is_real(mask_iou_threshold):
        raise TypeError(f"mask_iou_threshold must be a float or None, got {type(mask_iou_threshold).__name__}")
    if math.isnan(mask_iou_threshold):  # +-inf are meaningful: no prompt's masks upscaled, or every prompt's
        raise ValueError(f"mask_iou_threshold must be a number (+-inf included) or None, got {mask_iou_threshold}")


def check_prompts(*, batch_size: int, input_points, input_labels, input_boxes, input_masks, mask_size: int) -> int:
    """Shapes as in the model's docstring; batch sizes must match the images'. Returns the number of prompts per image
    (P; 1 when no prompt is given: the image alone)."""
    prompts = None
    if input_labels is not None and input_points is None:
        raise ValueError("input_labels were given without input_points")
    if input_points is not None:
        input_points = _tensor("input_points", input_points)
        if input_points.dim() != 4 or input_points.shape[-1] != 2:
            raise ValueError(f"input_points must have shape (B, P, N, 2), got {tuple(input_points.shape)}")
        _finite("input_points", input_points)
        if input_points.shape[0] != batch_size:
            raise ValueError(f"input_points has {input_points.shape[0]} images but the image batch has {batch_size}")
        prompts = input_points.shape[1]
        if input_labels is not None:
            input_labels = _tensor("input_labels", input_labels)
            if tuple(input_labels.shape) != tuple(input_points.shape[:3]):
                raise ValueError(f"input_labels must have shape (B, P, N) = {tuple(input_points.shape[:3])}, got {tuple(input_labels.shape)}")
            if input_labels.is_floating_point() or input_labels.dtype == torch.bool:
                raise TypeError(f"input_labels must be an integer tensor, got dtype {input_labels.dtype}")
            valid = (input_labels[..., None] == torch.tensor(VALID_LABELS, device=input_labels.device)).any(-1)  # (ONNX has no isin)
            expected = f"input_labels must be in {VALID_LABELS} (1 positive, 0 negative, -1 not a point, -10 padding)"
            if torch.compiler.is_exporting():
                _require(valid.all(), expected)
            elif not bool(valid.all()):
                raise ValueError(f"{expected}, got {sorted(set(input_labels[~valid].tolist()))}")
    if input_boxes is not None:
        input_boxes = _tensor("input_boxes", input_boxes)
        if input_boxes.dim() != 3 or input_boxes.shape[-1] != 4:
            raise ValueError(f"input_boxes must have shape (B, P, 4), got {tuple(input_boxes.shape)}")
        _finite("input_boxes", input_boxes)
        if input_boxes.shape[0] != batch_size:
            raise ValueError(f"input_boxes has {input_boxes.shape[0]} images but the image batch has {batch_size}")
        _require(((input_boxes[..., 2] >= input_boxes[..., 0]) & (input_boxes[..., 3] >= input_boxes[..., 1])).all(),
                 "input_boxes must be (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0, got a box with x1 < x0 or y1 < y0")
        if prompts is not None and input_boxes.shape[1] != prompts:
            raise ValueError(f"input_boxes has {input_boxes.shape[1]} prompts per image but input_points has {prompts}")
        prompts = input_boxes.shape[1]
    if input_masks is not None:
        input_masks = _tensor("input_masks", input_masks)
        if input_masks.dim() != 4 or tuple(input_masks.shape[2:]) != (mask_size, mask_size):
            raise ValueError(f"input_masks must have shape (B, 1 or P, {mask_size}, {mask_size}), got {tuple(input_masks.shape)}")
        _finite("input_masks", input_masks)
        if input_masks.shape[0] != batch_size:
            raise ValueError(f"input_masks has {input_masks.shape[0]} images but the image batch has {batch_size}")
        if prompts is not None and input_masks.shape[1] not in (1, prompts):
            raise ValueError(f"input_masks must have 1 or P={prompts} masks per image, got {input_masks.shape[1]}")
        if prompts is None:
            prompts = input_masks.shape[1]
    return 1 if prompts is None else prompts
