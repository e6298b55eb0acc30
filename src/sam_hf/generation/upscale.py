"""Masks at image size from low-res logits, computed only where a mask can be: segment everything on a CPU.

Segment everything needs three things of each candidate at image size: the binary mask (`logits > t`) and the
two pixel counts of its stability score (`logits > t + offset`, `logits > t - offset`). Meta computes every
pixel of the upscaled logits for that. But the second bilinear step (the model's resized frame (h, w) -> the
image (H, W)) makes each pixel a convex combination of 2 x 2 pixels of the first step's output, so a pixel
whose four sources all lie below the lowest of the three thresholds is below it too, and is False in all
three masks. A candidate mask covers about an eighth of its image (mean bounding box, shipped model, 1024 x 683):
only the rectangle of pixels with some source above that threshold is interpolated and thresholded here.

The first step (low-res -> (h, w)) is `processing.masks`' own, bit for bit. Inside the rectangle the second is
sam_hf's `mask_resize` kernel where it serves (`processing/bilinear.py`): a window of `F.interpolate`'s output (one
mask per channel), bit for bit. Elsewhere (no kernel, or a crop whose height + width is at most 128) it is this
module's separable bilinear interpolation (align_corners=False, PyTorch's source coordinates and weights
`x0 (1 - w) + x1 w`, so infinities and NaNs spread as in `F.interpolate`): each pixel is computed from its own
sources by the same formula whatever the rectangle, within a few float32 ulps of `F.interpolate`, which can
flip a pixel only where a logit lies that close to a threshold (tests/generation/test_upscale.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

# Relative margin on the sources' magnitude: larger than the rounding of one bilinear step (a few ulps), so a
# pixel left outside the rectangle is below the lowest threshold however its logits are rounded.
_MARGIN = 2.0**-18


@dataclass(frozen=True)
class _Axis:
    """Bilinear resampling of one axis, in -> out: out[i] = src[low[i]] * (1 - weight[i]) + src[high[i]] * weight[i]."""

    low: torch.Tensor  # (out,) int64, non-decreasing
    high: torch.Tensor  # (out,) int64, low or low + 1
    weight: torch.Tensor  # (out,) float32 in [0, 1]

    def span(self, first: int, last: int) -> tuple[int, int]:
        """The output range [a, b) of the outputs reading some source in [first, last] (both monotone)."""
        a = int(torch.searchsorted(self.high, first, side="left"))
        b = int(torch.searchsorted(self.low, last, side="right"))
        return a, b

    def resample(self, source: torch.Tensor, dim: int, start: int, stop: int, first: int = 0) -> torch.Tensor:
        """Outputs start:stop along `dim` of `source`, whose index 0 along `dim` is source index `first`."""
        shape = [1] * source.dim()
        shape[dim] = stop - start
        weight = self.weight[start:stop].view(shape)
        low = source.index_select(dim, self.low[start:stop] - first)
        high = source.index_select(dim, self.high[start:stop] - first)
        return low.mul_(1 - weight).addcmul_(high, weight)


@lru_cache(maxsize=64)
def _axis(size_in: int, size_out: int) -> _Axis:
    """PyTorch's align_corners=False source coordinates: max(s (i + 0.5) - 0.5, 0), s = in / out, clamped."""
    scale = size_in / size_out
    source = ((torch.arange(size_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_(min=0)
    low = source.floor().long().clamp_(max=size_in - 1)
    high = (low + 1).clamp_(max=size_in - 1)
    weight = (source - low).clamp_(0, 1).to(torch.float32)
    return _Axis(low, high, weight)


@dataclass
class UpscaledMask:
    """One candidate at image size: its binary mask inside the box whose top-left pixel is (y0, x0), and the pixel
    counts above `t + offset` and `t - offset`; every pixel outside the box is False in all three."""

    mask: torch.Tensor  # (box height, box width) bool; (0, 0) when no pixel can pass
    y0: int
    x0: int
    high: int
    low: int


def upscale_in_boxes(resized: torch.Tensor, size: tuple[int, int], threshold: float, offset: float) -> list[UpscaledMask]:
    """resized (n, h, w) float32 logits in the model's resized frame -> each mask at `size` (H, W) and its counts.

    `threshold` binarizes; the counts use `threshold +- offset` (any sign of offset).
    """
    from ..processing.bilinear import single_channel_kernel
    from ..processing.thresholds import any_along, count_true, greater

    height, width = size
    lowest = min(threshold, threshold - offset, threshold + offset)
    # the finite magnitude sets the rounding margin (an infinite source is simply `possible`, a NaN never)
    magnitude = resized.abs().nan_to_num_(0.0, 0.0, 0.0).amax(dim=(1, 2), keepdim=True) if resized.numel() else 0.0
    possible = resized > lowest - _MARGIN * (abs(lowest) + magnitude)  # (n, h, w): sources that may reach `lowest`
    rows, cols = _extent(any_along(possible, 2)), _extent(any_along(possible, 1))  # per mask: first and last, or None
    same_size = (height, width) == tuple(resized.shape[1:])  # the image is the model's own size: no second step
    kernel = None if same_size or resized.dtype != torch.float32 or resized.device.type != "cpu" else single_channel_kernel(size)
    if kernel is None:
        vertical, horizontal = _axis(resized.shape[1], height), _axis(resized.shape[2], width)
    else:  # the boxes from the indices the kernel reads (float32, as ATen's)
        vertical, horizontal = _Axis(*kernel.axis_table(resized.shape[1], height)), _Axis(*kernel.axis_table(resized.shape[2], width))
    out = []
    for source, row_span, col_span in zip(resized, rows, cols):
        if row_span is not None and not same_size:
            (y0, y1), (x0, x1) = vertical.span(*row_span), horizontal.span(*col_span)
            if y0 >= y1 or x0 >= x1:  # shrinking (a small crop): no pixel reads a source that can pass
                row_span = None
        if row_span is None:  # nothing can pass any threshold
            out.append(UpscaledMask(torch.zeros(0, 0, dtype=torch.bool), 0, 0, 0, 0))
            continue
        if same_size:
            (y0, y1), (x0, x1) = (row_span[0], row_span[1] + 1), (col_span[0], col_span[1] + 1)
            logits = source[y0:y1, x0:x1]
        elif kernel is not None:  # F.interpolate's window, bit for bit
            logits = kernel.resize(source[None], height, width, None, None, y1 - y0, x1 - x0, None, y0, x0)[0]
        else:
            first = int(vertical.low[y0])  # the first source row read by the box
            band = source[first : int(vertical.high[y1 - 1]) + 1]  # (r, w): the source rows read
            across = horizontal.resample(band, 1, x0, x1)  # (r, x1 - x0)
            logits = vertical.resample(across, 0, y0, y1, first)  # (y1 - y0, x1 - x0)
        high = int(count_true(greater(logits, threshold + offset)))
        low = int(count_true(greater(logits, threshold - offset)))
        out.append(UpscaledMask(greater(logits, threshold), y0, x0, high, low))
    return out


def _extent(occupied: torch.Tensor) -> list[tuple[int, int] | None]:
    """(n, L) bool -> per row the first and last True index, or None where there is none."""
    length = occupied.shape[1]
    flags = occupied.to(torch.uint8)
    first = flags.argmax(dim=1).tolist()
    last = (length - 1 - flags.flip(1).argmax(dim=1)).tolist()
    return [(f, l) if any_ else None for f, l, any_ in zip(first, last, occupied.any(dim=1).tolist())]
