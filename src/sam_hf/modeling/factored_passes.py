"""Operands of the decoder kernel's factored passes on a shared image side (`decoder_attention.cpp`: `FactoredAttender`
and `source_factors` of `image_to_tokens`), for the attentions (`SamHfAttention`) that take them.

After the first image -> token attention each prompt's image tokens are y = r (x + sum_j u_j v_j - mu) * g + b: the
image side x shared by the prompts, the pass's softmax weights u over its value rows v_j, its LayerNorm's mean mu
and 1 / std r, weight g and bias b. Products of y with a projection W then split into x (W * g)^T, made once per
image (per head: 16 channels in SAM, not 256), and narrow per-prompt products with u and mu. Two of the decoder's
products take this form: the token -> image attention that the first pass runs on its new tokens
(`next_attention_operands`, `next_attention_output`), and the second pass's logits (`source_operands`). Exact up to
rounding; every operand is fp32, also for bf16 image tokens (the shared products run in the tokens' dtype).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernel_inputs import token_tiles


def _shared(cache: dict | None, key: tuple, image: torch.Tensor, compute):
    """`compute()`, kept in `cache` with the image side (B, 1, HW, C) it was made from."""
    entry = None if cache is None else cache.get(key)
    if entry is None or entry[0] is not image:
        entry = (image, compute())
        if cache is not None:
            cache[key] = entry
    return entry[1]


def _tiles(rows: torch.Tensor) -> torch.Tensor:
    """rows (S, L, D) in any dtype -> the kernel's fp32 tiles (S, ceil(L/16), D, 16)."""
    return token_tiles(rows.float())


def _head_dots(rows: torch.Tensor, vector: torch.Tensor, heads: int) -> torch.Tensor:
    """rows (N, T, h, d) . a vector (h*d,) head by head -> (N, T*h), columns (t, h)."""
    return (rows * vector.view(heads, -1)).sum(-1).flatten(1)


def next_attention_operands(attention, cache: dict | None, image: torch.Tensor, image_pe: torch.Tensor, norm: nn.LayerNorm,
                            values: torch.Tensor, tokens: torch.Tensor, token_pe: torch.Tensor) -> list[torch.Tensor]:
    """The operands of `attention` (a token -> image SamHfAttention) for the kernel's factored form (`factored` of
    `image_to_tokens`), where the image tokens it attends to are `norm(x + sum_j u_j values_j)` of a shared image side
    x (B, 1, HW, C) that the same kernel pass forms: values (B*P, N, C) fp32, that pass's value rows (t, h); tokens,
    token_pe (B, P, T, C) its queries' tokens.
    -> [A tiles (B, ceil(HW/16), C', 16), E tiles (ceil(HW/16), C', 16), B rows (B, HW, C'), queries (B*P, T, C'),
    mixing (B*P, h*T, N + 1)], all fp32: A = (x * g) W_k^T, E = pe W_k^T and B = (x * g) W_v^T are shared (cached),
    and row (h, t) of the mixing is [v_j . (g * Q_(h,t)) for each j, -Q_(h,t) . g] with Q = q_h W_k,h."""
    batch, prompts, length, _ = tokens.shape
    heads, gain, weight = attention.num_heads, norm.weight.float(), attention.k_proj.weight.float()

    def shared():  # (x * g) W^T = x (W * g)^T, in the image's dtype (bf16: at the bf16 rate)
        scaled_k, scaled_v = ((layer.weight.float() * gain).to(image.dtype) for layer in (attention.k_proj, attention.v_proj))
        return (_tiles(F.linear(image[:, 0], scaled_k)), _tiles(F.linear(image_pe, attention.k_proj.weight.to(image_pe.dtype))[None])[0],
                F.linear(image[:, 0], scaled_v).float().contiguous())

    q = attention.project(attention.q_proj, tokens + token_pe) * attention.scale  # (B, P, T, C')
    by_head = q.reshape(batch * prompts, length, heads, -1).float().transpose(1, 2)  # (B*P, h, T, d)
    # Q_(h,t) . w = q_(t,h) . (w W_k,h^T): through the C' columns, head by head
    rows = ((values * gain) @ weight.t()).view(batch * prompts, -1, heads, by_head.shape[-1])  # (B*P, N, h, d)
    mixing = torch.matmul(by_head, rows.permute(0, 2, 3, 1)).flatten(1, 2)  # (B*P, h*T, N): Q_(h,t) . (g * v_j)
    centre = _head_dots(by_head.transpose(1, 2), gain @ weight.t(), heads).view(batch * prompts, length, heads).transpose(1, 2)
    mixing = torch.cat([mixing, -centre.reshape(batch * prompts, -1, 1)], dim=-1)  # rows (h, t)
    return [*_shared(cache, (id(attention), "next_attention"), image, shared), q.reshape(batch * prompts, length, -1).float().contiguous(),
            mixing.contiguous()]


def next_attention_output(attention, sums: torch.Tensor, norm: nn.LayerNorm, values: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The kernel's factored sums (B*P, h*T, d + N + 1) (`next_attention_operands`) -> `attention`'s output (B, P, T, C)
    for tokens of `shape`: per row (h, t) with weights p over the image tokens y = r (z - mu) * g + b,
    sum p y W_v,h^T = sum p r B_h + (sum p r u) (v (g * W_v,h)^T) - (sum p r mu) g W_v,h^T + b W_v,h^T (the weights
    summing to one), then b_v and out_proj."""
    batch, prompts, length, _ = shape
    heads, width, rank = attention.num_heads, attention.internal_dim // attention.num_heads, values.shape[1]
    weight_v, gain, bias = attention.v_proj.weight.float(), norm.weight.float(), norm.bias.float()
    by_values = ((values * gain).flatten(0, 1) @ weight_v.t()).view(-1, rank, heads, width)  # (B*P, N, h, d): v (g * W_v)^T
    weighted = sums[..., width:width + rank].reshape(-1, heads, length, rank)  # (B*P, h, T, N)
    mixed = sums[..., :width].view(-1, heads, length, width) + torch.matmul(weighted, by_values.permute(0, 2, 1, 3))
    mixed = mixed - sums[..., width + rank].view(-1, heads, length, 1) * (gain @ weight_v.t()).view(heads, 1, width)
    mixed = mixed + (bias @ weight_v.t()).view(heads, 1, width)  # (B*P, h, T, d)
    out = mixed.permute(0, 2, 1, 3).reshape(batch, prompts, length, attention.internal_dim).to(attention.v_proj.weight.dtype)
    return attention.out_proj(out + attention.v_proj.bias)


def source_operands(attention, cache: dict | None, image: torch.Tensor, image_pe: torch.Tensor, first, k: torch.Tensor):
    """The logits of `attention` (an image -> token SamHfAttention) for the kernel's factored source (`source_factors`
    of `image_to_tokens`), where its image tokens are those a first pass formed from a shared image side x
    (B, 1, HW, C): y = r (x + sum_j u_j v_j - mu) * g + b (`first`: that pass's LayerNorm and its record: the weights
    r u, the statistics (mu, r), the tokens' value projections and the value rows v). Per image token, with
    Q_(t,h) = k_(t,h) W_q,h (k: the scaled keys (B, P, T, C')), the logit (y + pe) . Q_(t,h) + k . b_q,h is
    r (A_h . k_(t,h)) + E_h . k_(t,h) + [r u, r mu] . G_(t,h) + (k . b_q,h + Q_(t,h) . b)
    with A = x (W_q * g)^T and E = pe W_q^T shared (cached), G_(t,h) = [v_j . (g * Q_(t,h)) for each j, -g . Q_(t,h)].
    -> ([A tiles (B, ceil(HW/16), C', 16), E tiles (ceil(HW/16), C', 16), weights, stats, G (B*P, N' + 1, T*h)], the
    logit bias (B*P, T, h))."""
    norm, (weights, stats, _, values) = first
    batch, prompts, length, _ = k.shape
    heads, gain, shift, weight = attention.num_heads, norm.weight.float(), norm.bias.float(), attention.q_proj.weight.float()

    def shared():  # in the image's dtype (bf16: at the bf16 rate)
        return (_tiles(F.linear(image[:, 0], (weight * gain).to(image.dtype))), _tiles(F.linear(image_pe, attention.q_proj.weight.to(image_pe.dtype))[None])[0])

    by_head = k.reshape(batch * prompts, length, heads, -1).float()  # (B*P, T, h, d)
    # Q_(t,h) . w = k_(t,h) . (w W_q,h^T): through the C' columns, head by head
    rows = ((values * gain) @ weight.t()).view(batch * prompts, -1, heads, by_head.shape[-1]).transpose(1, 2)  # (B*P, h, N', d)
    mixing = torch.matmul(rows, by_head.permute(0, 2, 3, 1))  # (B*P, h, N', T)
    mixing = torch.cat([mixing.permute(0, 2, 3, 1).flatten(2), -_head_dots(by_head, gain @ weight.t(), heads)[:, None]], dim=1)
    bias = _head_dots(by_head, attention.q_proj.bias.float() + shift @ weight.t(), heads).view(batch * prompts, length, heads)
    return [*_shared(cache, (id(attention), "source"), image, shared), weights, stats, mixing.contiguous()], bias
