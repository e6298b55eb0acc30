"""Bilinear resizing of mask logits by sam_hf's compiled `mask_resize` kernel, where it gives ATen's bits.

`F.interpolate(..., mode="bilinear", align_corners=False)` on float32 CPU tensors evaluates one formula per output
pixel (see `kernels/mask_resize.cpp`); the kernel evaluates the same formula, each source row's horizontal step once
for all the output rows that read it, and can stop at the first rows x cols of the output or give `> threshold`
directly. SAM's 1024 frame, three masks of a 1024 x 683 image, two Zen 4 cores: 1.69 ms in ATen against 0.45 (float)
or 0.40 (binary) here.

That formula is ATen's generic kernel. ATen takes its channels-last kernel instead (other roundings) for outputs whose
height plus width is at most 128, for inputs stored channels-last with more than 3 channels, and on one thread for
3 channels (torch 2.13's `upsample_bilinear2d_kernel_impl_float`); those calls stay with ATen, so the result is
ATen's own bits in every case (measured over random shapes on torch 2.13: none of 539 outputs above 128 differed).
Before its first use in a process the kernel's results are compared with ATen's on probe shapes, bit for bit; any
difference (another torch, another CPU) leaves every call to ATen.
"""

from __future__ import annotations

import torch

from transformers.utils import logging

from ..kernels import kernel_for

logger = logging.get_logger(__name__)

# ATen's upsample_bilinear2d computes outputs with height + width up to this another way: left to it.
_ATEN_ONLY_UP_TO = 128
_AGREES: dict[str, bool] = {}


def _probe_agrees(module) -> bool:
    """Whether `module.resize` equals ATen bit for bit on probe shapes: size- and scale-based, up- and downscaling,
    the smallest size the kernel takes, output rows and columns cut, non-finite values."""
    generator = torch.Generator().manual_seed(0)
    for planes, (h, w), (out_h, out_w), scale, (row0, col0, rows, cols) in (
        (3, (37, 53), (101, 149), None, (0, 0, 101, 149)),
        (2, (16, 24), (64, 96), 4.0, (0, 0, 50, 77)),
        (2, (40, 30), (70, 59), None, (0, 0, 70, 59)),
        (1, (97, 131), (60, 80), None, (0, 0, 60, 80)),
        (2, (35, 52), (683, 1024), None, (101, 333, 250, 417)),
    ):
        source = torch.randn(planes, h, w, generator=generator) * 10
        source[0, 0, 0], source[-1, 1, 2] = float("inf"), float("nan")
        # one channel per image: ATen's generic kernel on any thread count
        expected = torch.ops.aten.upsample_bilinear2d.default(source[:, None], [out_h, out_w], False, scale, scale)[:, 0]
        expected = expected[:, row0 : row0 + rows, col0 : col0 + cols]
        got = module.resize(source, out_h, out_w, scale, scale, rows, cols, None, row0, col0)
        if not bool(((got == expected) | (got.isnan() & expected.isnan())).all()):
            return False
        if not torch.equal(module.resize(source, out_h, out_w, scale, scale, rows, cols, 0.5, row0, col0), expected > 0.5):
            return False
    return True


def _kernel():
    """The `mask_resize` module where it may run (built, and agreeing with ATen here), else None."""
    module = kernel_for("mask_resize", torch.float32)
    if module is None:
        return None
    key = module.__file__
    if key not in _AGREES:
        with torch.inference_mode():
            _AGREES[key] = _probe_agrees(module)
        if not _AGREES[key]:
            logger.warning("sam_hf: the mask_resize kernel differs from ATen's upsample_bilinear2d on this machine; "
                           "ATen's is used")
    return module if _AGREES[key] else None


def _aten_generic_kernel(logits: torch.Tensor, size: tuple[int, int]) -> bool:
    """Whether ATen resizes this (N, C, h, w) tensor to `size` with its generic kernel, the one this kernel matches."""
    channels = logits.shape[1]
    if size[0] + size[1] <= _ATEN_ONLY_UP_TO:
        return False
    if channels > 3 and logits.is_contiguous(memory_format=torch.channels_last):
        return False
    return not (channels == 3 and torch.get_num_threads() == 1)


def resize_with_kernel(
    logits: torch.Tensor, size: tuple[int, int], *, rows: int | None = None, cols: int | None = None,
    row0: int = 0, col0: int = 0, threshold: float | None = None,
) -> torch.Tensor | None:
    """`F.interpolate(logits, size, mode="bilinear", align_corners=False)[..., row0 : row0 + rows, col0 : col0 + cols]`
    (bool `> threshold` when one is given; rows and cols default to the rest of the output) for float32 logits
    (N, C, h, w) on the CPU with nothing recorded by autograd, by the compiled kernel, bit for bit; None where the
    kernel does not serve (the caller then takes ATen's path)."""
    out_h, out_w = size
    rows = out_h - row0 if rows is None else rows
    cols = out_w - col0 if cols is None else cols
    if logits.device.type != "cpu" or logits.dtype != torch.float32 or logits.dim() != 4 or logits.numel() == 0:
        return None
    if not _aten_generic_kernel(logits, size) or (torch.is_grad_enabled() and logits.requires_grad):
        return None
    module = _kernel()
    if module is None:
        return None
    lead = logits.shape[:-2]
    planes = logits.reshape(-1, *logits.shape[-2:])
    if planes.stride(-1) != 1:
        planes = planes.contiguous()
    out = module.resize(planes, out_h, out_w, None, None, rows, cols, threshold, row0, col0)
    return out.view(*lead, rows, cols)


def single_channel_kernel(size: tuple[int, int]):
    """The kernel module for resizing float32 CPU planes to `size` as ATen resizes them one channel at a time (then its
    generic kernel, on any thread count, for height + width above 128), for a caller that asks for windows itself
    (`module.resize(planes, H, W, None, None, rows, cols, threshold, row0, col0)`); else None."""
    return _kernel() if size[0] + size[1] > _ATEN_ONLY_UP_TO else None
