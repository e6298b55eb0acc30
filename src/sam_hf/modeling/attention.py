"""One attention function family, selected by `config._attn_implementation` ("eager" or "sdpa").

`attention(query, key, value, scale=..., mask=..., implementation=...)` serves the two-way transformer.
The ViT's decomposed relative positions (Meta's `add_decomposed_rel_pos`) are either added to the
explicit logits (eager) or folded into augmented query/key vectors so that SDPA computes them without
a dense bias tensor:
    q' = [q, rel_h / s, rel_w / s, 0],  k' = [k, onehot(k_row), onehot(k_col), 0],  v' = [v, 0]
    s * q'.k' = s * q.k + rel_h[q, k_row] + rel_w[q, k_col]
which is exact up to rounding. SDPA's fused CPU kernel wants 4-D (B, heads, L, D) inputs with one head
width (3-D inputs fall back to the unfused path, 10x slower here), hence the zero-padded value.

Two forms of the ViT attention: `grid_attention` (out of place, autograd-safe, eager or SDPA: the
reference; with SDPA on a CPU, `rel_pos_attention` (relpos_training.py) instead, which keeps the head width
in the forward and backward passes) and, for inference, `augmented_buffers` + `write_rel_pos_columns` + `sdpa_on_buffers`, where
the augmented tensors live in the thread's workspace and only what varies is rewritten per call. In fp32,
where the wider augmented heads would cost more matmul time than they save, the relative positions are
added to explicit logits instead: `sdpa_with_rel_pos_mask` (windows: a dense bias per chunk of query rows)
and `row_blocked_attention_with_rel_pos` (global grids: a few query rows of one head at a time, logits
kept in cache, no bias written to memory). In bf16 and fp32 on CPUs with AVX512-BF16,
`kernel_attention_with_rel_pos` runs sam_hf's compiled flash kernel (`sam_hf.kernels`), which adds the two terms
to each block of logits in cache and keeps the head width: faster than the augmented SDPA (bf16) and the
explicit logits (fp32), which are then the fallbacks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..kernels import kernel, kernel_for
from .relpos_training import rel_pos_attention, rel_pos_attention_usable
from .layers import onednn_fp32, onednn_linear, workspace

IMPLEMENTATIONS = ("eager", "sdpa")
AUGMENTED_WIDTH_MULTIPLE = 32  # SDPA's CPU kernel is faster on head widths that are multiples of 32


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scale: float,
    mask: torch.Tensor | None = None,
    implementation: str = "sdpa",
    output_attentions: bool = False,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention over (..., L, D) tensors.

    mask: boolean, broadcastable to (..., Lq, Lk), True where a key may be attended to. bias: added to the logits
    (float, broadcastable to (..., Lq, Lk); PerSAM's attention similarity), with the mask's -inf where both are given.
    Returns the output (..., Lq, Dv) and, for eager with `output_attentions`, the weights (..., Lq, Lk).
    """
    if bias is not None:  # one additive mask: the bias, -inf where the boolean mask forbids
        mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
    if implementation == "sdpa" and not output_attentions:
        if query.dim() > 4 and torch.compiler.is_exporting():  # 4-D, as ONNX's exporter takes SDPA: (B*P, h, L, D)
            lead = torch.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3], () if mask is None else mask.shape[:-3])
            query, key, value = (t.expand(*lead, *t.shape[-3:]).reshape(-1, *t.shape[-3:]) for t in (query, key, value))
            if mask is not None:
                mask = mask.expand(*lead, *mask.shape[-3:]).reshape(-1, *mask.shape[-3:])
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
            return out.view(*lead, *out.shape[-3:]), None
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale), None
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    logits = (query * scale) @ key.transpose(-2, -1)  # (..., Lq, Lk)
    if mask is not None:
        logits = logits + mask if mask.is_floating_point() else logits.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    return weights @ value, (weights if output_attentions else None)


# Relative positions ---------------------------------------------------------------------------------
def resized_rel_pos(length: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """The (L, D) table resized linearly to `length` rows when trained for another size, as Meta does."""
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=length, mode="linear")
    return resized.reshape(-1, length).permute(1, 0)  # (length, D)


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) pair along one axis -> (q_size, k_size, D)."""
    rel_pos = resized_rel_pos(2 * max(q_size, k_size) - 1, rel_pos)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def decomposed_rel_pos(
    query: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column relative-position terms of every query (Meta's formula).

    query (..., H*W, D) unscaled -> rel_h (..., H*W, H), rel_w (..., H*W, W) (query and key grids are equal).
    """
    height, width = size
    table_h = relative_position_table(height, height, rel_pos_h).to(query.dtype)  # (H, H, D)
    table_w = relative_position_table(width, width, rel_pos_w).to(query.dtype)  # (W, W, D)
    lead = query.shape[:-2]
    grid_query = query.unflatten(-2, (height, width))  # (..., H, W, D)
    rel_h = torch.einsum("...hwc,hkc->...hwk", grid_query, table_h).reshape(*lead, height * width, height)
    rel_w = torch.einsum("...hwc,wkc->...hwk", grid_query, table_w).reshape(*lead, height * width, width)
    return rel_h, rel_w


def augmented_width(head_dim: int, size: tuple[int, int]) -> int:
    """Head width of the SDPA inputs with folded relative positions: D + H + W, rounded up."""
    return -(-(head_dim + sum(size)) // AUGMENTED_WIDTH_MULTIPLE) * AUGMENTED_WIDTH_MULTIPLE


def _key_extension(size: tuple[int, int], extra: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(H*W, extra): key k's row one-hot in columns [0, H), its column one-hot in [H, H + W), then zeros."""
    height, width = size
    extension = torch.zeros(height, width, extra, dtype=dtype, device=device)
    extension[..., :height] = torch.eye(height, dtype=dtype, device=device)[:, None, :]
    extension[..., height : height + width] = torch.eye(width, dtype=dtype, device=device)
    return extension.view(height * width, extra)


# Reference form: out of place ---------------------------------------------------------------------
def eager_attention_with_rel_pos(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scale: float,
    rel_h: torch.Tensor | None,
    rel_w: torch.Tensor | None,
    size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit softmax attention over a (H, W) grid, Meta's formula.

    query/key/value (..., L, D) with L = H*W; rel_h (..., L, H), rel_w (..., L, W) from `decomposed_rel_pos`.
    Returns the output (..., L, D) and the weights (..., L, L).
    """
    height, width = size
    logits = (query * scale) @ key.transpose(-2, -1)  # (..., L, L)
    if rel_h is not None:
        grid_logits = logits.unflatten(-1, (height, width)) + rel_h[..., :, :, None] + rel_w[..., :, None, :]  # (..., L, H, W)
        logits = grid_logits.flatten(-2)  # (..., L, L)
    weights = torch.softmax(logits, dim=-1)
    return weights @ value, weights


def grid_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scale: float,
    size: tuple[int, int],
    rel_pos_h: torch.Tensor | None,
    rel_pos_w: torch.Tensor | None,
    implementation: str = "sdpa",
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention within (H, W) grids of tokens (windows or whole images), relative positions when the
    tables are given. query/key/value (B', heads, H*W, D) -> output (B', heads, H*W, D) and, with
    `output_attentions`, the weights (B', heads, H*W, H*W)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "eager" or output_attentions:
        rel_h = rel_w = None
        if rel_pos_h is not None:
            rel_h, rel_w = decomposed_rel_pos(query, rel_pos_h, rel_pos_w, size)
        out, weights = eager_attention_with_rel_pos(query, key, value, scale=scale, rel_h=rel_h, rel_w=rel_w, size=size)
        return out, (weights if output_attentions else None)
    if rel_pos_h is None:
        return F.scaled_dot_product_attention(query, key, value, scale=scale), None
    if rel_pos_attention_usable(query):  # CPU: head width kept in both passes, fp32 at least (relpos_training.py)
        rel_h, rel_w = decomposed_rel_pos(query, rel_pos_h, rel_pos_w, size)
        return rel_pos_attention(query, key, value, rel_h, rel_w, scale=scale, size=size), None
    head_dim, width_aug = query.shape[-1], augmented_width(query.shape[-1], size)
    rel_h, rel_w = decomposed_rel_pos(query, rel_pos_h, rel_pos_w, size)
    padding = query.new_zeros(*query.shape[:-1], width_aug - head_dim - sum(size))
    query = torch.cat([query, rel_h / scale, rel_w / scale, padding], dim=-1)  # (B', heads, L, D')
    extension = _key_extension(size, width_aug - head_dim, dtype=key.dtype, device=key.device)
    key = torch.cat([key, extension.expand(*key.shape[:-1], -1)], dim=-1)  # (B', heads, L, D')
    value = F.pad(value, (0, width_aug - head_dim))  # (B', heads, L, D')
    return F.scaled_dot_product_attention(query, key, value, scale=scale)[..., :head_dim], None


# Inference form: SDPA inputs in the workspace --------------------------------------------------------
def augmented_buffers(
    batch: int, heads: int, head_dim: int, size: tuple[int, int], *, rel_pos: bool, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Query, key, value stacked (3, B', heads, H*W, D') in the thread's workspace, for code where
    autograd records nothing (one tensor, so one copy fills all three). D' = `augmented_width` with
    relative positions, else D. The key's one-hot columns and all zero padding are written once;
    callers write the first D columns and `write_rel_pos_columns`."""
    width_aug = augmented_width(head_dim, size) if rel_pos else head_dim
    shape = (batch, heads, math.prod(size), width_aug)
    kwargs = dict(dtype=dtype, device=device)

    def init(stacked: torch.Tensor) -> None:  # (3, B', heads, L, D'): zeros, then the key's one-hots
        stacked.zero_()
        if rel_pos:
            stacked[1, ..., head_dim:] = _key_extension(size, width_aug - head_dim, **kwargs)

    tag = f"attention_qkv/{head_dim}/{size if rel_pos else 'plain'}"  # what init wrote is part of the key
    return workspace(tag, (3, *shape), **kwargs, init=init)


def rel_pos_terms(
    query: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, *, size: tuple[int, int], head_dim: int, factor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta's decomposed relative-position terms times `factor`, from the first `head_dim` columns of
    query (B', heads, H*W, D') -> rel_h (B', heads, H, W, H), rel_w (B', heads, H, W, W), strided views.

    Meta's table[y, k] = P[y - k + H - 1] (equal query and key grids), so with P flipped every term is
    one product of q with the flipped tables, U = q @ [flip(P_h), flip(P_w)]^T, read at a sliding
    offset: rel_h[y, x, k] = U[y, x, H - 1 - y + k] and rel_w[y, x, k] = U[y, x, 2H - 1 + W - 1 - x + k].
    One matmul, no per-row batching, no copy of q.
    """
    height, width = size
    tables = torch.cat([resized_rel_pos(2 * height - 1, rel_pos_h).flip(0), resized_rel_pos(2 * width - 1, rel_pos_w).flip(0)])
    tables = (tables.float() * factor).to(query.dtype)  # (2H - 1 + 2W - 1, D)
    batch, heads, extent = query.shape[0], query.shape[1], tables.shape[0]
    rows = batch * heads * height * width
    products = workspace("rel_pos_products", (rows, extent), dtype=query.dtype, device=query.device)
    torch.mm(query[..., :head_dim].reshape(rows, head_dim), tables.t(), out=products)  # (B'*heads*L, E), q read in place
    s_b, s_n, s_y, s_x = heads * height * width * extent, height * width * extent, width * extent, extent
    base = products.storage_offset()
    rel_h = products.as_strided((batch, heads, height, width, height), (s_b, s_n, s_y - 1, s_x, 1), base + height - 1)
    rel_w = products.as_strided((batch, heads, height, width, width), (s_b, s_n, s_y, s_x - 1, 1), base + 2 * height + width - 2)
    return rel_h, rel_w


def write_rel_pos_columns(query: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, *, size: tuple[int, int], head_dim: int, scale: float) -> None:
    """Write rel_h / s and rel_w / s into columns [D, D + H + W) of the query buffer (B', heads, H*W, D')."""
    height, width = size
    rel_h, rel_w = rel_pos_terms(query, rel_pos_h, rel_pos_w, size=size, head_dim=head_dim, factor=1 / scale)
    columns = query.view(*query.shape[:2], height, width, query.shape[-1])  # (B', heads, H, W, D')
    columns[..., head_dim : head_dim + height].copy_(rel_h)
    columns[..., head_dim + height : head_dim + height + width].copy_(rel_w)


MASK_CHUNK_BYTES = 64 * 2**20  # largest dense bias chunk of `sdpa_with_rel_pos_mask` on a CPU
ACCELERATOR_MASK_CHUNK_BYTES = 2**30  # on a GPU: a whole 64 x 64 grid per call (16 heads, fp32), few launches


def mask_chunk_bytes(device: torch.device) -> int:
    return MASK_CHUNK_BYTES if device.type == "cpu" else ACCELERATOR_MASK_CHUNK_BYTES


def sdpa_with_rel_pos_mask(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, *, size: tuple[int, int], scale: float
) -> torch.Tensor:
    """SDPA with the relative positions as a dense bias, built per chunk of query rows in the workspace:
    query/key/value (B', heads, H*W, D) -> (B', heads, H*W, D). Faster than the augmented form in fp32,
    where the matmuls (not the softmax) dominate and the augmented width would triple them."""
    height, width = size
    batch, heads, length, head_dim = query.shape
    rel_h, rel_w = rel_pos_terms(query, rel_pos_h, rel_pos_w, size=size, head_dim=head_dim, factor=1.0)
    row_bytes = heads * width * length * query.element_size()  # bias of one query row of one grid
    chunk_bytes = mask_chunk_bytes(query.device)
    rows = max(1, min(height, chunk_bytes // row_bytes))
    grids = max(1, min(batch, chunk_bytes // (row_bytes * height))) if rows == height else 1
    kwargs = dict(dtype=query.dtype, device=query.device)
    out = workspace("rel_pos_mask_out", query.shape, **kwargs)
    chunk = workspace("rel_pos_mask", (grids, heads, rows, width, height, width), **kwargs)
    for b in range(0, batch, grids):
        count = min(grids, batch - b)
        for y in range(0, height, rows):
            span = min(rows, height - y)
            mask = chunk[:count, :, :span]  # (grids, heads, rows, W, H, W)
            torch.add(rel_h[b : b + count, :, y : y + span, :, :, None], rel_w[b : b + count, :, y : y + span, :, None, :], out=mask)
            tokens = slice(y * width, (y + span) * width)
            out[b : b + count, :, tokens] = F.scaled_dot_product_attention(
                query[b : b + count, :, tokens], key[b : b + count], value[b : b + count],
                attn_mask=mask.view(count, heads, span * width, length), scale=scale,
            )
    return out


ROW_BLOCK_BYTES = 2 * 2**20  # logits of one block of query rows: about one core's L2 cache
ROW_BLOCKED_MIN_TOKENS = 1024  # grids at least this long (global attention) take `row_blocked_attention_with_rel_pos`


def row_blocked_usable(*, device: torch.device, tokens: int) -> bool:
    """Whether fp32 attention over `tokens` grid tokens takes `row_blocked_attention_with_rel_pos`: on a CPU, for
    global attention. Its small per-head blocks are cache-sized work for a CPU core and thousands of tiny
    launches on a GPU (ViT-H fp32 on an H200: 2.1 img/s vs 6.2 for transformers' dense bias)."""
    return device.type == "cpu" and tokens >= ROW_BLOCKED_MIN_TOKENS


def row_blocked_attention_with_rel_pos(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, *, size: tuple[int, int], scale: float
) -> torch.Tensor:
    """Attention with relative positions over a large grid, a few query rows of one head at a time:
    query/key/value (B', heads, H*W, D) -> (B', heads, H*W, D) in the workspace.

    Per block the logits (rows * W, H*W) fit in cache: s * q k^T by one matmul, the row and column terms added
    as broadcasts, softmax in place, then the matmul with v. Nothing of size L x L is written to memory, where
    `sdpa_with_rel_pos_mask` writes a dense bias and SDPA reads it back (fp32: about 25% slower here).
    """
    height, width = size
    batch, heads, length, head_dim = query.shape
    rel_h, rel_w = rel_pos_terms(query, rel_pos_h, rel_pos_w, size=size, head_dim=head_dim, factor=1.0)
    rows = max(1, min(height, ROW_BLOCK_BYTES // (width * length * query.element_size())))
    kwargs = dict(dtype=query.dtype, device=query.device)
    out = workspace("rel_pos_rows_out", query.shape, **kwargs)
    block = workspace("rel_pos_rows_logits", (rows * width, length), **kwargs)
    onednn = onednn_fp32(query, key, value)  # oneDNN's fp32 products (about twice MKL's on AMD CPUs), else MKL's
    for b in range(batch):
        for h in range(heads):
            keys, values = key[b, h].contiguous(), value[b, h]  # (L, D), (L, D)
            for y in range(0, height, rows):
                span = min(rows, height - y)
                tokens = slice(y * width, (y + span) * width)
                if onednn:  # a fresh block of about ROW_BLOCK_BYTES: reused heap memory
                    logits = onednn_linear(query[b, h, tokens] * scale, keys)  # (span * W, L)
                else:
                    logits = block[: span * width]
                    torch.addmm(logits, query[b, h, tokens], keys.t(), beta=0, alpha=scale, out=logits)
                grid = logits.view(span, width, height, width)  # (query row, query column, key row, key column)
                grid.add_(rel_h[b, h, y : y + span, :, :, None]).add_(rel_w[b, h, y : y + span, :, None, :])
                logits.sub_(logits.amax(-1, keepdim=True)).exp_()
                total = logits.sum(-1, keepdim=True)  # (span * W, 1)
                result = out[b, h, tokens]
                if onednn:
                    result.copy_(onednn_linear(logits, values.t()))
                else:
                    torch.mm(logits, values, out=result)
                result.div_(total)
    return out


def relpos_kernel_usable(*, dtype: torch.dtype, device: torch.device, head_dim: int) -> bool:
    """Whether `kernel_attention_with_rel_pos` takes such queries here: fp32 (CPUs with AVX-512 or AVX2) or bf16 (with
    AVX512-BF16 too) on CPU, even head width, oneDNN enabled (the kernel's matmuls are its brgemm) and the kernel
    built for this machine. fp32, one ViT-B global attention on one Zen 4 core: 0.59 s against 0.85-0.99 for
    `row_blocked_attention_with_rel_pos`; on two cores 0.29 against 0.46-0.50 (the kernel spreads blocks of query
    rows of every head over the threads, where the row-blocked loop runs small ops one after another)."""
    return (
        dtype in (torch.bfloat16, torch.float32) and device.type == "cpu" and head_dim % 2 == 0 and torch.backends.mkldnn.enabled
        and kernel_for("relpos_attention", dtype) is not None
    )


def kernel_attention_with_rel_pos(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    *,
    size: tuple[int, int],
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention with relative positions by the compiled kernel (see `relpos_kernel_usable`):
    query/key/value (B', heads, H*W, D) bf16 or fp32, any strides with the last dim contiguous (views into the qkv
    projection need no copy) -> `out` (B', heads, H*W, D), written in place when given (any strides with
    the last dim contiguous, e.g. a view of the (B, H, W, C) grid), else a new tensor."""
    height, width = size
    batch, heads, length, head_dim = query.shape
    rel_h, rel_w = rel_pos_terms(query, rel_pos_h, rel_pos_w, size=size, head_dim=head_dim, factor=1.0)
    groups = batch * heads
    return kernel("relpos_attention").relpos_attention(
        query, key, value, rel_h.reshape(groups, height, width, height), rel_w.reshape(groups, height, width, width), scale, out,
    )  # the terms are strided views of one matmul's output, read in place


def sdpa_on_buffers(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, scale: float, head_dim: int) -> torch.Tensor:
    """SDPA over `augmented_buffers` -> (B', heads, L, D), a strided view of a fresh tensor."""
    return F.scaled_dot_product_attention(query, key, value, scale=scale)[..., :head_dim]
