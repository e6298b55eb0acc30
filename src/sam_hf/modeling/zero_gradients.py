"""Zero gradients, not none, for weights whose results the original computes and then drops.

Meta's decoder (and transformers') runs all four hypernetwork MLPs and then keeps one mask or three: the dropped MLPs'
weights get zero gradients. sam_hf runs only the kept ones, so without this they would get none, and an optimizer
skips a weight with no gradient: AdamW's weight decay and momentum would then move them in the original and not
here. `with_zero_gradients(x, weights)` is `x` in the forward pass and gives each of `weights` a zero gradient in
the backward pass.
"""

from __future__ import annotations

from typing import Sequence

import torch


class _ZeroGradients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        ctx.weights = [(w.shape, w.dtype, w.device) for w in weights]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (grad, *(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.weights))


def with_zero_gradients(x: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """`x`, tied to `weights` so that a backward pass through it gives each trainable one a zero gradient (where
    autograd records; elsewhere `x` itself)."""
    trainable = [w for w in weights if w.requires_grad]
    if not trainable or not torch.is_grad_enabled():
        return x
    return _ZeroGradients.apply(x, *trainable)
