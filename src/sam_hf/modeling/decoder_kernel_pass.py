"""One block's image -> token attention and LayerNorm by the compiled `decoder_attention` kernel, in one pass over the
image tokens (`normed_image_to_tokens`), with what rides on that pass: the next token -> image attention, the records
that the folded mask upscaling and the factored second pass read. `SamHfTwoWayTransformer._kernel_blocks` calls it;
the PyTorch path of the same attention is `SamHfAttention.image_to_tokens` (decoder_attention.py)."""

from __future__ import annotations

import torch
from torch import nn

from .factored_passes import next_attention_operands, next_attention_output, source_operands
from .layers import workspace


def normed_image_to_tokens(cross, module, image, image_pe, tokens, token_pe, token_mask, norm: nn.LayerNorm, route: str, cache,
                           out=None, next_queries=None, record: list | None = None, factored_next: tuple | None = None,
                           factored_source: tuple | None = None):
    """`norm(cross.image_to_tokens(...))` (B, P, HW, C) for `cross`, a block's image -> token `SamHfAttention`, by the
    compiled kernel `module` (see `decoder_kernel`), written
    into `out` when given (which may be `image` itself where P' = P). Per image token x the kernel forms the
    logits a . w_(t,h) + b_(t,h), softmaxes each head's T tokens, adds sum_(t,h) w v_(t,h) to x and normalises,
    in one pass over cache-sized blocks of tokens. The logits are the same as in `image_to_tokens`: on the
    "shared" route a = the shared query projection of the image side and w_(t,h) = k_(t,h) on head h's columns
    (zero elsewhere); on the others a = x + pe, w_(t,h) = k_(t,h) W_q,h and b_(t,h) = k_(t,h) . b_q,h.
    `next_queries` (B*P, M, C), a token -> image attention's `folded_queries`: that attention to the new image
    tokens runs in the same pass, while each block of them is in cache. Returns the new image tokens and, with
    `next_queries`, that attention's weighted sums of them (B*P, M, C), else None. `factored_next` (attention,
    tokens, token_pe) instead, on a shared image side: that attention in factored form (factored_passes.py), whose
    output (B, P, T, C) is returned in place of the sums. `factored_source` (x, first), on the image tokens that a
    first pass formed from a shared image side x and recorded (`first`: see `factored_passes.source_operands`): the
    logits from those factors. With `record` (a list): appends this attention's softmax weights per image token
    (B*P, HW, h*T) in the image tokens' dtype (from fp32, rounded once; the first recorded attention's times each
    token's LayerNorm 1 / std), that LayerNorm's mean and 1 / std (B*P, HW, 2) in fp32, the tokens' value projections
    (B*P, T, C') and this attention's value rows (B*P, T*h, C) in fp32, for the folded mask upscaling
    (`SamHfMaskDecoder.folded_operands`) and the next pass's factored logits."""
    batch, prompts, length, _ = tokens.shape
    heads, head_dim = cross.num_heads, cross.internal_dim // cross.num_heads
    sides, tokens_hw, channels = batch * image.shape[1], image.shape[2], image.shape[3]
    k = cross.project(cross.k_proj, tokens + token_pe) * cross.scale  # (B, P, T, C')
    source_factors = None
    if factored_source is not None:  # the per-head form on the first pass's factors
        source = None
        source_factors, bias = source_operands(cross, cache, factored_source[0], image_pe, factored_source[1], k)
        weight = k.reshape(batch * prompts, length, cross.internal_dim)  # (B*P, T, C')
    elif route == "shared":  # the kernel's per-head form: head h's columns of the source meet only head h's keys
        source = cross.shared_tiles(cache, image, image_pe)  # (B, ceil(HW/16), C', 16)
        weight = k.reshape(batch * prompts, length, cross.internal_dim)  # (B*P, T, C')
        bias = k.new_zeros(batch * prompts, length, heads)
    else:
        source = None
        folded = cross._per_head_product(k, cross.q_proj.weight)  # (B, P, h*T, C), rows (h, t)
        weight = folded.view(batch * prompts, heads, length, channels).permute(0, 3, 2, 1).reshape(batch * prompts, channels, length * heads)
        by_head = k.reshape(batch * prompts, length, heads, head_dim)  # (B*P, T, h, d)
        bias = (by_head * cross.q_proj.bias.view(heads, head_dim)).sum(-1)  # (B*P, T, h)
    if token_mask is not None:
        bias = bias.masked_fill(~token_mask.reshape(batch * prompts, length, 1), float("-inf"))
    projected = cross.v_proj(tokens)  # (B, P, T, C')
    values = cross.value_rows(projected)  # (B*P, T*h, C)
    residual = image.reshape(sides, tokens_hw, channels)
    flat_out = image.new_empty(batch * prompts, tokens_hw, channels) if out is None else out.view(batch * prompts, tokens_hw, channels)
    weights_out = stats_out = None
    if record is not None:  # this thread's buffers, one pair per recorded layer, rewritten by the next group
        count = (batch * prompts, tokens_hw)
        weights_out = workspace(f"decoder_fold_weights{len(record)}", (*count, length * heads), dtype=image.dtype, device=image.device)
        stats_out = workspace(f"decoder_fold_stats{len(record)}", (*count, 2), dtype=torch.float32, device=image.device)
    factored = None
    if factored_next is not None:
        attention, next_tokens, next_pe = factored_next
        factored = next_attention_operands(attention, cache, image, image_pe, norm, values, next_tokens, next_pe)
    # the image tokens in their dtype (fp32 or bf16), the small per-prompt operands in fp32 (the kernel rounds them)
    mixed = module.image_to_tokens(residual.contiguous(), source, image_pe.contiguous(), weight.float().contiguous(),
                                   bias.reshape(batch * prompts, -1).float().contiguous(), heads, values,
                                   norm.weight.float().contiguous(), norm.bias.float().contiguous(), norm.eps, flat_out,
                                   None if next_queries is None else next_queries.float().contiguous(), weights_out, stats_out,
                                   record is not None and not record,  # the first recorded block's weights times r1
                                   factored, source_factors)
    if factored is not None:
        mixed = next_attention_output(attention, mixed, norm, values, next_tokens.shape)
    if record is not None:
        record.append((weights_out, stats_out, projected.reshape(batch * prompts, length, cross.internal_dim), values))
    return flat_out.view(batch, prompts, tokens_hw, channels), mixed
