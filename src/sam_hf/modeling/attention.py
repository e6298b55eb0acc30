"""One attention function family, selected by `config._attn_implementation` ("eager" or "sdpa").

`attention(query, key, value, scale=..., mask=..., implementation=...)` is used by the ViT blocks and by
the two-way transformer. The ViT's decomposed relative positions (Meta's `add_decomposed_rel_pos`) are
either added to the explicit logits (eager) or folded into augmented query/key vectors so that SDPA
computes them without a dense bias tensor:
    q' = [q, rel_h / s, rel_w / s],  k' = [k, onehot(k_row), onehot(k_col)]
    s * q'.k' = s * q.k + rel_h[q, k_row] + rel_w[q, k_col]
which is exact up to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMPLEMENTATIONS = ("eager", "sdpa")


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scale: float,
    mask: torch.Tensor | None = None,
    implementation: str = "sdpa",
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention over (..., L, D) tensors.

    mask: boolean, broadcastable to (..., Lq, Lk), True where a key may be attended to.
    Returns the output (..., Lq, Dv) and, for eager with `output_attentions`, the weights (..., Lq, Lk).
    """
    if implementation == "sdpa" and not output_attentions:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale), None
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    logits = (query * scale) @ key.transpose(-2, -1)  # (..., Lq, Lk)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    return weights @ value, (weights if output_attentions else None)


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) pair along one axis -> (q_size, k_size, D).

    A table trained for another length is resized linearly, as Meta does.
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear")
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)  # (max_rel_dist, D)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def decomposed_rel_pos(
    query: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column relative-position terms of every query.

    query (B, H*W, D) unscaled -> rel_h (B, H*W, H), rel_w (B, H*W, W) (query and key grids are equal).
    """
    height, width = size
    table_h = relative_position_table(height, height, rel_pos_h).to(query.dtype)  # (H, H, D)
    table_w = relative_position_table(width, width, rel_pos_w).to(query.dtype)  # (W, W, D)
    batch, _, dim = query.shape
    grid_query = query.reshape(batch, height, width, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", grid_query, table_h).reshape(batch, height * width, height)
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid_query, table_w).reshape(batch, height * width, width)
    return rel_h, rel_w


def attention_with_rel_pos(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scale: float,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    size: tuple[int, int],
    implementation: str = "sdpa",
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention over a (H, W) grid with decomposed relative positions.

    query/key/value (B, L, D) with L = H*W; rel_h (B, L, H), rel_w (B, L, W) from `decomposed_rel_pos`.
    """
    height, width = size
    if implementation == "sdpa" and not output_attentions:
        batch, length, dim = query.shape
        key_rows = torch.eye(height, device=key.device, dtype=key.dtype).repeat_interleave(width, dim=0)  # (L, H)
        key_cols = torch.eye(width, device=key.device, dtype=key.dtype).repeat(height, 1)  # (L, W)
        key_extra = torch.cat([key_rows, key_cols], dim=-1)  # (L, H + W): key k is in row k // W, column k % W
        query_aug = torch.cat([query, rel_h / scale, rel_w / scale], dim=-1)  # (B, L, D + H + W)
        key_aug = torch.cat([key, key_extra.expand(batch, -1, -1)], dim=-1)  # (B, L, D + H + W)
        value_aug = F.pad(value, (0, height + width))  # (B, L, D + H + W): SDPA wants one head width
        out = F.scaled_dot_product_attention(query_aug, key_aug, value_aug, scale=scale)
        return out[..., :dim], None
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    batch, length, _ = query.shape
    logits = (query * scale) @ key.transpose(-2, -1)  # (B, L, L)
    logits = logits.view(batch, length, height, width) + rel_h[:, :, :, None] + rel_w[:, :, None, :]
    weights = torch.softmax(logits.view(batch, length, length), dim=-1)
    return weights @ value, (weights if output_attentions else None)
