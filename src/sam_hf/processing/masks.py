"""Masks between frames: model low-res logits -> original image, ground truth -> model low-res frame.

Frames: the original image (H, W); the model input, resized to (h, w) with the longest side S and padded
to (S, S); the low-res logits (L, L), L = S / 4, covering the whole padded square.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..real_numbers import is_real, is_whole_number
from .bilinear import resize_with_kernel
from .images import native_byte_order
from .resize import get_preprocess_shape
from .thresholds import greater


def _sizes(value, name: str, batch: int) -> list[tuple[int, int]]:
    """(B, 2) sizes as tensor/array/list -> B (H, W) int tuples, each at least 1x1."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, (list, tuple)) and len(s) == 2 for s in value):
        raise ValueError(f"{name} must be (B, 2) sizes as (H, W), got {value!r}")
    if len(value) != batch:
        raise ValueError(f"{name} must hold one (H, W) per image: {batch} masks, got {len(value)} sizes")
    sizes = []
    for i, (h, w) in enumerate(value):
        if not all(is_whole_number(v) and v >= 1 for v in (h, w)):
            raise ValueError(f"{name}[{i}] must be positive integers (H, W), got ({h!r}, {w!r})")
        sizes.append((int(h), int(w)))
    return sizes


def _pad_side(pad_size) -> int:
    """pad_size as an int: an int, or transformers' {"height": S, "width": S} of a square."""
    if isinstance(pad_size, dict) and set(pad_size) == {"height", "width"} and pad_size["height"] == pad_size["width"]:
        pad_size = pad_size["height"]
    if isinstance(pad_size, (bool, np.bool_)) or not isinstance(pad_size, (int, np.integer)) or pad_size < 1:
        raise TypeError(f"pad_size must be a positive int (the processor's longest_edge) or transformers' "
                        f"{{'height': S, 'width': S}}, got {pad_size!r}")
    return int(pad_size)


def _check_options(mask_threshold, binarize) -> None:
    if not is_real(mask_threshold) or math.isnan(mask_threshold):
        raise TypeError(f"mask_threshold must be a number, got {mask_threshold!r}")
    if not isinstance(binarize, (bool, np.bool_)):
        raise TypeError(f"binarize must be a bool, got {type(binarize).__name__}")


def post_process_masks(
    masks,
    original_sizes,
    reshaped_input_sizes,
    *,
    pad_size: int,
    mask_threshold: float = 0.0,
    binarize: bool = True,
) -> list[torch.Tensor]:
    """Low-res mask logits -> list over images of (P, M, H, W) masks at the original size.

    `masks`: (B, P, M, L, L) tensor or a list of B (P, M, L, L) tensors (P may differ per image). Each is
    upscaled to (S, S) (bilinear, align_corners=False), cropped to the resized image (h, w), then resized
    to (H, W) (bilinear), as Meta's `Sam.postprocess_masks`; computed in float32. With `binarize` the result
    is the bool `logits > mask_threshold`, else the float32 logits.
    """
    pad_size = _pad_side(pad_size)
    _check_options(mask_threshold, binarize)
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(masks)
    if isinstance(masks, torch.Tensor):
        if masks.ndim != 5:
            raise ValueError(f"masks must be (B, P, M, L, L) low-res logits, got shape {tuple(masks.shape)}")
        masks = list(masks.unbind(0))  # B x (P, M, L, L)
    elif not isinstance(masks, (list, tuple)) or not masks:
        raise TypeError(f"masks must be a (B, P, M, L, L) tensor or a list of (P, M, L, L) tensors, got {type(masks).__name__}")
    batch = len(masks)
    originals = _sizes(original_sizes, "original_sizes", batch)
    reshaped = _sizes(reshaped_input_sizes, "reshaped_input_sizes", batch)
    out = []
    for i, (logits, (orig_h, orig_w), (new_h, new_w)) in enumerate(zip(masks, originals, reshaped)):
        logits = torch.as_tensor(logits)
        if logits.ndim != 4:
            raise ValueError(f"masks[{i}] must be (P, M, L, L), got shape {tuple(logits.shape)}")
        if logits.is_complex() or not (logits.is_floating_point() or logits.dtype == torch.bool):
            raise TypeError(f"masks[{i}] must be floating-point logits, got dtype {logits.dtype}")
        if new_h > pad_size or new_w > pad_size:
            raise ValueError(
                f"reshaped_input_sizes[{i}] = ({new_h}, {new_w}) must fit in the padded input side {pad_size}"
            )
        if logits.shape[0] * logits.shape[1] == 0:  # no prompt or no mask: nothing to upscale
            out.append(torch.zeros(*logits.shape[:2], orig_h, orig_w, dtype=torch.bool if binarize else torch.float32))
            continue
        if 0 in logits.shape[2:]:
            raise ValueError(f"masks[{i}] must be (P, M, L, L) logits with L >= 1, got shape {tuple(logits.shape)}")
        threshold = mask_threshold if binarize else None
        full, binary = _at_original_size(logits.to(torch.float32), pad_size, (new_h, new_w), (orig_h, orig_w), threshold)
        out.append(greater(full, mask_threshold) if binarize and not binary else full)
    return out


def _at_original_size(logits: torch.Tensor, pad_size: int, resized: tuple[int, int], original: tuple[int, int],
                      threshold: float | None) -> tuple[torch.Tensor, bool]:
    """float32 logits (P, M, L, L) -> (P, M, H, W) at the original size, and whether that is already `> threshold`
    (the compiled kernel thresholds as it resizes, given a threshold) rather than logits."""
    if original == resized:  # SAM's own size: resizing to the same size is the identity (exact for finite logits)
        fast = resize_with_kernel(logits, (pad_size, pad_size), rows=resized[0], cols=resized[1], threshold=threshold)
        if fast is not None:
            return fast, threshold is not None
        return upscale_and_crop(logits, pad_size, *resized).contiguous(), False
    cropped = upscale_and_crop(logits, pad_size, *resized)  # (P, M, h, w)
    fast = resize_with_kernel(cropped, original, threshold=threshold)
    if fast is not None:
        return fast, threshold is not None
    return F.interpolate(cropped, original, mode="bilinear", align_corners=False), False


def _needed(low: int, scale: int, length: int) -> int:
    """Low-res rows that bilinear upscaling by `scale` (align_corners=False) reads for output rows < length."""
    last = (length - 0.5) / scale - 0.5  # source coordinate of the last output row
    return min(low, max(0, math.floor(last)) + 2)


def upscale_and_crop(logits: torch.Tensor, pad_size: int, height: int, width: int) -> torch.Tensor:
    """F.interpolate(logits, (S, S), bilinear)[..., :height, :width], computing only the rows kept.

    Bit-exact: with an integer scale s = S / L, the upscaled rows below `height` read only the first
    k = `_needed(L, s, height)` low-res rows, and upscaling those k rows with the same scale gives the same source
    rows and weights; the kernel is asked for `height` rows at scale s (its explicit-scale form), so nothing past the
    image is computed and a landscape result needs no copy. (Columns are not cut the same way: the kernel's vectorised
    loop then rounds the last columns differently, by about 1e-7.) A landscape 1024 x 683 image skips a third of the
    work.
    """
    fast = resize_with_kernel(logits, (pad_size, pad_size), rows=height, cols=width)  # the same bits, where it serves
    if fast is not None:
        return fast
    low_h, low_w = logits.shape[-2:]
    if pad_size % low_h or pad_size % low_w:
        upscaled = F.interpolate(logits, (pad_size, pad_size), mode="bilinear", align_corners=False)
        return upscaled[..., :height, :width]
    scale_h, scale_w = pad_size // low_h, pad_size // low_w
    rows = _needed(low_h, scale_h, height)
    # rows * scale_h >= height output rows at scale_h; the first `height` of them, each computed as in the full upscaling
    kept = logits[..., :rows, :]
    upscaled = torch.ops.aten.upsample_bilinear2d.default(kept, [height, pad_size], False, float(scale_h), float(scale_w))
    return upscaled[..., :width]


def masks_to_low_res(
    mask, *, longest_edge: int, low_res_size: int, binarize: bool = True, name: str = "masks"
) -> torch.Tensor:
    """Ground-truth masks (K, H, W) or (H, W) in the original frame -> (K, L, L) float32 in the low-res frame.

    Resize to (h, w) like the image (longest side to S; bilinear with antialiasing on the 0/1 values),
    pad with zeros to (S, S), then average each (S/L x S/L) block down to (L, L): the covered fraction.
    `binarize` thresholds that fraction at 0.5 (values 0.0 / 1.0).
    """
    if isinstance(mask, np.ndarray):
        if mask.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold bool, integer or float values, got dtype {mask.dtype}")
        mask = torch.from_numpy(np.ascontiguousarray(native_byte_order(mask)))
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor of shape (K, H, W) or (H, W), got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask[None]  # (1, H, W)
    if mask.ndim != 3:
        raise ValueError(f"{name} must have shape (K, H, W) or (H, W), got {tuple(mask.shape)}")
    if mask.shape[1] == 0 or mask.shape[2] == 0:
        raise ValueError(f"{name} is empty: (H, W) = ({mask.shape[1]}, {mask.shape[2]})")
    if longest_edge % low_res_size != 0:
        raise ValueError(f"low_res_size ({low_res_size}) must divide longest_edge ({longest_edge})")
    if mask.dtype != torch.bool:
        if mask.is_floating_point():
            bad = ~torch.isfinite(mask) | (mask < 0) | (mask > 1)
        elif mask.is_complex():
            raise TypeError(f"{name} must be bool, integer 0/1 or float in [0, 1], got dtype {mask.dtype}")
        else:
            bad = (mask != 0) & (mask != 1)
        if bool(bad.any()):
            raise ValueError(
                f"{name} must hold bool, 0/1 integers or floats in [0, 1], got values in "
                f"[{mask.min().item()}, {mask.max().item()}]"
            )
    height, width = mask.shape[-2:]
    new_h, new_w = get_preprocess_shape(height, width, longest_edge)
    if min(new_h, new_w) < 1:
        raise ValueError(f"{name}: a mask of (H, W) = ({height}, {width}) has a side of zero pixels after resizing")
    values = mask.detach().to("cpu", torch.float32)[:, None]  # (K, 1, H, W)
    resized = F.interpolate(values, (new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    padded = F.pad(resized, (0, longest_edge - new_w, 0, longest_edge - new_h))  # (K, 1, S, S)
    factor = longest_edge // low_res_size
    low = F.avg_pool2d(padded, kernel_size=factor, stride=factor)[:, 0]  # (K, L, L)
    return (low > 0.5).to(torch.float32) if binarize else low.clamp(0.0, 1.0)
