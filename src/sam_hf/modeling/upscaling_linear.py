"""The mask upscaling's linear form: both 2x2 stride-2 transposed convolutions as products on channels-last pixels.

The PyTorch path of `SamHfMaskDecoder.upscale_masks` (GPUs, training, CPUs without the compiled kernel) and the form
that `torch.export` programs hold (`export_form.py`); the compiled `mask_upscaling` kernel takes the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import linear_activation, matmul_nt


def conv_transpose_weight(conv: nn.ConvTranspose2d, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2x2 stride-2 ConvTranspose2d as a linear layer on one channels-last pixel: weight ([a, b, C_out], C_in)
    (contiguous, as F.linear takes it) and bias; with `rows` = a, only the outputs of that kernel row: ([b, C_out], C_in)."""
    weight = conv.weight.permute(2, 3, 1, 0)  # (a, b, C_out, C_in)
    if rows is not None:
        weight = weight[rows]
    c_in, c_out = weight.shape[-1], weight.shape[-2]
    return weight.reshape(-1, c_in).contiguous(), conv.bias.repeat(weight[..., 0].numel() // c_out)


def linear_weights(conv1: nn.ConvTranspose2d, conv2: nn.ConvTranspose2d) -> tuple:
    """As `upscale` takes them: the first conv's (weight, bias), then the second conv's for each of its two kernel rows."""
    return (conv_transpose_weight(conv1), *(conv_transpose_weight(conv2, rows=c) for c in range(2)))


def upscale(norm: nn.LayerNorm, image: torch.Tensor, hyper_in: torch.Tensor, grid: int, weights) -> torch.Tensor:
    """image tokens (N, R*g, C) of R whole grid rows, hypernetwork weights (N, M, C/8) -> logits (N, M, 4R, 4g);
    `weights`: `linear_weights`; `norm`: the LayerNorm between the convolutions.

    Output pixel (4i + 2a + c, 4j + 2b + d) comes from token (i, j), first-conv offset (a, b), second-conv
    offset (c, d). The first conv's pixels are put in raster order (i, a, j, b) as their LayerNorm reads
    them; the second conv then runs once per row offset c, so the hypernetwork product of each c is already
    a set of whole output rows (4i + 2a + c, all columns) in raster order: no permutation of single pixels.
    """
    batch, tokens, _ = image.shape
    rows, masks = tokens // grid, hyper_in.shape[1]
    up = linear_activation(image, *weights[0], None)  # (N, R*g, [a, b, C/4])
    up = up.view(batch, rows, grid, 2, 2, -1).transpose(2, 3)  # (N, i, a, j, b, C/4) as a view
    up = F.gelu(F.layer_norm(up, norm.normalized_shape, norm.weight, norm.bias, norm.eps))  # contiguous, raster order
    up = up.view(batch, 4 * tokens, -1)  # (N, 2R * 2g, C/4)
    out = image.new_empty(batch, masks, 2 * rows, 2, 4 * grid)  # (N, M, [i, a], c, [j, b, d])
    for c in range(2):
        features = linear_activation(up, *weights[1 + c], "gelu")  # (N, 2R * 2g, [d, C/8])
        out[:, :, :, c] = matmul_nt(hyper_in, features.view(batch, 8 * tokens, -1)).view(batch, masks, 2 * rows, -1)
    return out.view(batch, masks, 4 * rows, 4 * grid)
