"""PerSAM's two decoder inputs, as transformers' `SamModel.forward` takes them (`attention_similarity`,
`target_embedding`; PerSAM: https://huggingface.co/papers/2305.03048).

- `attention_similarity`: added to the logits of every two-way block's token -> image attention (not the final one),
  as transformers passes it as that attention's additive mask; broadcastable to (B*P, heads, T, HW) with T the
  decoder's tokens (IoU token, mask tokens, then the prompt's) and HW the image tokens.
- `target_embedding`: added to the tokens before every two-way block; broadcastable to (B, P, T, C). transformers
  adds it in place to the tokens it also uses as their positional encoding, so after the first block the tokens'
  positional encoding holds it too (in that block's attentions, every later one and the final attention); sam_hf
  gives that same computation.

A decoder call with either input runs sam_hf's reference path (every layer called, no compiled kernel, no kept image
work) in one group of prompts: a personalisation call decodes a few prompts at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .module_calls import calling_modules


@dataclass(frozen=True)
class PerSamInputs:
    """attention_bias: broadcastable to (B, P, heads, T, HW), the decoder attention's 5-D layout; target: to (B, P, T, C)."""

    attention_bias: torch.Tensor | None
    target: torch.Tensor | None


def _broadcasts(shape: torch.Size, expected: tuple[int, ...]) -> bool:
    try:
        return len(shape) <= len(expected) and torch.broadcast_shapes(shape, expected) == expected
    except RuntimeError:
        return False


def _below_inf(values: torch.Tensor) -> bool:
    """No NaN and no +inf among `values` (the max propagates NaN)."""
    top = float(values.max())
    return not math.isnan(top) and top != math.inf


def _floating(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def persam_inputs(attention_similarity, target_embedding, *, batch: int, prompts: int, tokens: int, heads: int,
                  image_tokens: int, channels: int, dtype: torch.dtype) -> PerSamInputs | None:
    """The checked inputs in the decoder's layout and dtype, or None when neither is given."""
    if attention_similarity is None and target_embedding is None:
        return None
    bias = target = None
    if attention_similarity is not None:
        bias = _floating("attention_similarity", attention_similarity)
        expected = (batch * prompts, heads, tokens, image_tokens)
        if not _broadcasts(bias.shape, expected):
            raise ValueError(f"attention_similarity must be broadcastable to (B*P, heads, T, HW) = {expected}, got {tuple(bias.shape)}")
        if bias.numel() and not _below_inf(bias):  # -inf is a mask value there: it leaves a key out
            raise ValueError("attention_similarity must hold numbers below +inf (-inf masks a key), got NaN or +inf")
        bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))  # (B*P or 1, h or 1, T or 1, HW or 1)
        bias = bias[None] if bias.shape[0] == 1 else bias.reshape(batch, prompts, *bias.shape[1:])
        bias = bias.to(dtype)
    if target_embedding is not None:
        target = _floating("target_embedding", target_embedding)
        expected = (batch, prompts, tokens, channels)
        if not _broadcasts(target.shape, expected):
            raise ValueError(f"target_embedding must be broadcastable to the tokens (B, P, T, C) = {expected}, got {tuple(target.shape)}")
        if target.numel() and not all(math.isfinite(bound) for bound in torch.aminmax(target)):
            raise ValueError("target_embedding must contain only finite values, got NaN or inf")
        target = target.to(dtype)
    return PerSamInputs(attention_bias=bias, target=target)


def on_reference_path():
    """The context a decoder call with PerSAM's inputs runs in: every layer called (`module_calls.calling_modules`), so no
    compiled kernel, fused product or kept image work, whose forms have no place for them."""
    return calling_modules()
