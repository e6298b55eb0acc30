"""The ViT's attention with decomposed relative positions where autograd records, on a CPU: head width kept.

`grid_attention`'s SDPA form folds the relative positions into query/key vectors of width D + H + W, rounded up
(192 instead of 64 for ViT-B's global attention): three times the matmul work in the forward and backward passes.
`RelPosAttention` keeps the width D, in fp32 (fp64 for gradient checks; bf16 and fp16 inputs are computed in fp32). Its forward pass is sam_hf's compiled flash kernel where usable (fp32 on CPUs
with AVX512-BF16), else blocks of explicit logits; its backward pass recomputes blocks of logits, as
flash-attention's does, and never holds the (L, L) weights of a head:

    S = s q.k + rel_h[q, k_row] + rel_w[q, k_col],  P = softmax(S),  O = P V
    dV = P^T dO,  dP = dO V^T,  dS = P (dP - rowsum(dO * O)),  dQ = s dS K,  dK = s dS^T Q,
    d rel_h[q, y] = sum_x dS[q, (y, x)],  d rel_w[q, x] = sum_y dS[q, (y, x)]

`rel_h`/`rel_w` come from `decomposed_rel_pos`, whose own backward pass (autograd's) carries their gradients on to
the query and the relative-position tables. One block holds about `BLOCK_ELEMENTS` logits (groups x rows x L):
one row block of one head for global attention, every row of tens of heads for 14 x 14 windows.
"""

from __future__ import annotations

import torch

from ..kernels import kernel

BLOCK_ELEMENTS = 1 << 21  # logits per block: 8 MB in fp32, about L3-sized per core pair
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# bf16/fp16 inputs are computed in fp32 (the output cast back): their logits would round before the softmax, and fp32
# on native widths is faster here than bf16 SDPA on the widened ones (ViT-B global attention, forward + backward,
# two Zen 4 cores: 1.7 against 2.6 s)
COMPUTE_DTYPE = {torch.bfloat16: torch.float32, torch.float16: torch.float32}


def rel_pos_attention_usable(query: torch.Tensor) -> bool:
    """Whether `rel_pos_attention` serves this query: on a CPU, in any of `DTYPES`, and not while `torch.compile` traces
    the call (its blocks write into slices of one output, where the compiler would break its graph; the augmented SDPA
    form it replaces is plain operators)."""
    return query.device.type == "cpu" and query.dtype in DTYPES and not torch.compiler.is_compiling()


def rel_pos_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    *,
    scale: float,
    size: tuple[int, int],
) -> torch.Tensor:
    """Softmax attention with relative positions over (H, W) grids, differentiable in every tensor argument.

    query/key/value (B', heads, H*W, D), rel_h (B', heads, H*W, H), rel_w (B', heads, H*W, W), unscaled terms as
    `decomposed_rel_pos` gives them -> (B', heads, H*W, D).
    """
    height, width = size
    if query.shape[-2] != height * width or rel_h.shape[-1] != height or rel_w.shape[-1] != width:
        raise ValueError(
            f"query (..., {height * width}, D), rel_h (..., {height}) and rel_w (..., {width}) expected for a grid of {size}, "
            f"got {tuple(query.shape)}, {tuple(rel_h.shape)} and {tuple(rel_w.shape)}"
        )
    compute = COMPUTE_DTYPE.get(query.dtype)
    if compute is not None:
        tensors = [t.to(compute) for t in (query, key, value, rel_h, rel_w)]
        return RelPosAttention.apply(*tensors, float(scale), (int(height), int(width))).to(query.dtype)
    return RelPosAttention.apply(query, key, value, rel_h, rel_w, float(scale), (int(height), int(width)))


def _blocks(groups: int, length: int):
    """(group slice, row slice) pairs covering (groups, length) query rows, about BLOCK_ELEMENTS logits each."""
    rows = max(1, min(length, BLOCK_ELEMENTS // length))
    group_step = max(1, BLOCK_ELEMENTS // (rows * length)) if rows == length else 1
    for g in range(0, groups, group_step):
        for r in range(0, length, rows):
            yield slice(g, g + group_step), slice(r, r + rows)


def _probabilities(query, key, rel_h, rel_w, scale, size, gs, rs) -> torch.Tensor:
    """softmax(s q.k + rel_h + rel_w) of query rows `rs` in groups `gs` -> (g, rows, L), a new tensor."""
    logits = torch.matmul(query[gs, rs], key[gs].transpose(-2, -1)).mul_(scale)  # (g, rows, L)
    grid = logits.view(*logits.shape[:-1], *size)  # (g, rows, H, W)
    grid.add_(rel_h[gs, rs, :, None]).add_(rel_w[gs, rs, None, :])
    return torch.softmax(logits, dim=-1)


class RelPosAttention(torch.autograd.Function):
    """See the module's docstring. Inputs are flattened to (G, L, ...) groups inside; outputs keep the input shape."""

    @staticmethod
    def forward(ctx, query, key, value, rel_h, rel_w, scale: float, size: tuple[int, int]):
        with torch.autocast(query.device.type, enabled=False):  # its products in the inputs' dtype, inside autocast too
            return RelPosAttention._forward(ctx, query, key, value, rel_h, rel_w, scale, size)

    @staticmethod
    def _forward(ctx, query, key, value, rel_h, rel_w, scale: float, size: tuple[int, int]):
        shape = query.shape  # (B', heads, L, D)
        flat = [t.reshape(-1, *t.shape[-2:]) for t in (query, key, value, rel_h, rel_w)]  # (G, L, .)
        compiled = kernel("relpos_attention") if query.dtype == torch.float32 and torch.backends.mkldnn.enabled else None
        if compiled is not None and shape[-1] % 2 == 0:
            q, k, v, h, w = flat
            out = compiled.relpos_attention(
                q[None], k[None], v[None], h.view(-1, *size, size[0]), w.view(-1, *size, size[1]), scale, None
            )[0]  # (G, L, D)
        else:
            out = torch.empty_like(flat[0])
            for gs, rs in _blocks(*flat[0].shape[:2]):
                probabilities = _probabilities(*flat[:2], *flat[3:], scale, size, gs, rs)
                torch.matmul(probabilities, flat[2][gs], out=out[gs, rs])
        ctx.save_for_backward(*flat, out)
        ctx.scale, ctx.size, ctx.shapes = scale, size, [t.shape for t in (query, key, value, rel_h, rel_w)]
        return out.view(shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return RelPosAttention._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        query, key, value, rel_h, rel_w, out = ctx.saved_tensors  # (G, L, .)
        scale, size = ctx.scale, ctx.size
        grad_out = grad_out.reshape(out.shape).contiguous()  # (G, L, D)
        grad_query, grad_rel_h, grad_rel_w = torch.empty_like(query), torch.empty_like(rel_h), torch.empty_like(rel_w)
        grad_key, grad_value = torch.zeros_like(key), torch.zeros_like(value)
        delta = (grad_out * out).sum(-1, keepdim=True)  # (G, L, 1): rowsum(dO * O) = rowsum(dP * P)
        for gs, rs in _blocks(*query.shape[:2]):
            probabilities = _probabilities(query, key, rel_h, rel_w, scale, size, gs, rs)  # (g, rows, L)
            block_grad = grad_out[gs, rs]  # (g, rows, D)
            grad_value[gs].baddbmm_(probabilities.transpose(-2, -1), block_grad)
            grad_logits = torch.matmul(block_grad, value[gs].transpose(-2, -1))  # (g, rows, L) = dP
            grad_logits.sub_(delta[gs, rs]).mul_(probabilities)  # dS
            grid = grad_logits.view(*grad_logits.shape[:-1], *size)  # (g, rows, H, W)
            torch.sum(grid, dim=-1, out=grad_rel_h[gs, rs])
            torch.sum(grid, dim=-2, out=grad_rel_w[gs, rs])
            torch.matmul(grad_logits, key[gs], out=grad_query[gs, rs])
            grad_key[gs].baddbmm_(grad_logits.transpose(-2, -1), query[gs, rs])
        grad_query.mul_(scale)
        grad_key.mul_(scale)
        grads = [g.view(s) for g, s in zip((grad_query, grad_key, grad_value, grad_rel_h, grad_rel_w), ctx.shapes)]
        return (*grads, None, None)
