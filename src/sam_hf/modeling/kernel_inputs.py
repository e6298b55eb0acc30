"""When the mask decoder takes its compiled attention kernel (`sam_hf.kernels`, "decoder_attention"), and the tiled
layout in which that kernel reads per-head projections of the image tokens."""

from __future__ import annotations

import torch

from ..kernels import kernel_for
from .layers import records_nothing


def decoder_kernel(cache: dict | None, output_attentions: bool, image: torch.Tensor, *tensors: torch.Tensor, head_width: int | None = None):
    """The compiled `decoder_attention` module (`sam_hf.kernels`) for an attention over the image tokens `image`
    (B, P', HW, C) inside a decoder call (`cache` given), when it may take it: on CPU, no attention weights asked
    for, autograd recording nothing on `image` and `tensors` (every other input and parameter involved), and either
    fp32 or bf16 throughout (`image` and `tensors`) where the CPU runs oneDNN's bf16 products, with an even C and
    `head_width` (the attention's C' / heads); else None, and the PyTorch path runs."""
    if cache is None or output_attentions or image.device.type != "cpu" or image.dtype not in (torch.float32, torch.bfloat16):
        return None
    if image.dtype == torch.bfloat16:
        if any(t.dtype != image.dtype for t in tensors) or image.shape[-1] % 2 or (head_width or 0) % 2:
            return None
    return kernel_for("decoder_attention", image.dtype) if records_nothing(image, *tensors) else None


def token_tiles(rows: torch.Tensor) -> torch.Tensor:
    """rows (S, L, D) -> (S, ceil(L/16), D, 16): tiles of 16 rows, channel-major (each channel's 16 values
    contiguous), zero past L; the compiled kernel's per-head logit source (`decoder_attention.image_to_tokens`)."""
    sides, length, depth = rows.shape
    tiles = -(-length // 16)
    padded = rows if length == 16 * tiles else torch.nn.functional.pad(rows, (0, 0, 0, 16 * tiles - length))
    return padded.reshape(sides, tiles, 16, depth).transpose(2, 3).contiguous()
