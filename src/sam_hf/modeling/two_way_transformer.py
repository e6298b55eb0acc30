"""The two-way transformer: prompt tokens and image tokens attend to each other.

Each block: token self-attention, tokens -> image cross-attention, token MLP, image -> tokens
cross-attention; a final tokens -> image attention closes the stack. Key-padding masks keep padded
prompt slots invisible to every other token.
"""

from __future__ import annotations

import torch
from torch import nn

from ..configuration import SamHfMaskDecoderConfig
from .attention import attention
from .layers import SamHfMLPBlock


class SamHfAttention(nn.Module):
    """Multi-head attention with an optional down-projection of the embedding width."""

    def __init__(self, config: SamHfMaskDecoderConfig, *, downsample_rate: int = 1) -> None:
        super().__init__()
        self.config = config
        self.internal_dim = config.hidden_size // downsample_rate
        self.num_heads = config.num_attention_heads
        self.scale = (self.internal_dim // self.num_heads) ** -0.5
        self.q_proj = nn.Linear(config.hidden_size, self.internal_dim)
        self.k_proj = nn.Linear(config.hidden_size, self.internal_dim)
        self.v_proj = nn.Linear(config.hidden_size, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, config.hidden_size)

    def _heads(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        return hidden_states.reshape(batch, length, self.num_heads, -1).transpose(1, 2)  # (N, h, L, d)

    def forward(self, query, key, value, key_mask: torch.Tensor | None = None, output_attentions: bool = False):
        """query (N, Lq, C), key/value (N, Lk, C), key_mask (N, Lk) bool -> (N, Lq, C), weights."""
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (N, 1, 1, Lk)
        out, weights = attention(
            q, k, v, scale=self.scale, mask=mask,
            implementation=self.config._attn_implementation or "sdpa", output_attentions=output_attentions,
        )
        batch, _, length, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, length, self.internal_dim)  # (N, Lq, internal)
        return self.out_proj(out), weights


class SamHfTwoWayAttentionBlock(nn.Module):
    def __init__(self, config: SamHfMaskDecoderConfig, *, skip_first_layer_pe: bool) -> None:
        super().__init__()
        eps = config.layer_norm_eps
        self.self_attn = SamHfAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.cross_attn_token_to_image = SamHfAttention(config, downsample_rate=config.attention_downsample_rate)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = SamHfMLPBlock(hidden_size=config.hidden_size, mlp_dim=config.mlp_dim, hidden_act=config.hidden_act)
        self.layer_norm3 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.layer_norm4 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.cross_attn_image_to_token = SamHfAttention(config, downsample_rate=config.attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe, token_mask, output_attentions=False):
        """queries (N, T, C) tokens, keys (N, HW, C) image, query_pe (N, T, C), key_pe (1 or N, HW, C)."""
        if self.skip_first_layer_pe:
            queries, w_self = self.self_attn(queries, queries, queries, token_mask, output_attentions)
        else:
            q = queries + query_pe
            out, w_self = self.self_attn(q, q, queries, token_mask, output_attentions)
            queries = queries + out
        queries = self.layer_norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        out, w_t2i = self.cross_attn_token_to_image(q, k, keys, None, output_attentions)
        queries = self.layer_norm2(queries + out)
        queries = self.layer_norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        out, w_i2t = self.cross_attn_image_to_token(k, q, queries, token_mask, output_attentions)
        keys = self.layer_norm4(keys + out)
        return queries, keys, (w_self, w_t2i, w_i2t)


class SamHfTwoWayTransformer(nn.Module):
    def __init__(self, config: SamHfMaskDecoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SamHfTwoWayAttentionBlock(config, skip_first_layer_pe=i == 0) for i in range(config.num_hidden_layers)
        )
        self.final_attn_token_to_image = SamHfAttention(config, downsample_rate=config.attention_downsample_rate)
        self.layer_norm_final_attn = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, tokens, image, image_pe, token_mask=None, output_attentions=False):
        """tokens (N, T, C), image (N, HW, C), image_pe (1 or N, HW, C), token_mask (N, T) or None.

        Returns tokens (N, T, C), image (N, HW, C) and the attention weights when asked for.
        """
        queries, keys = tokens, image
        weights = ()
        for layer in self.layers:
            queries, keys, layer_weights = layer(queries, keys, tokens, image_pe, token_mask, output_attentions)
            weights += layer_weights
        out, w_final = self.final_attn_token_to_image(queries + tokens, keys + image_pe, keys, None, output_attentions)
        queries = self.layer_norm_final_attn(queries + out)
        return queries, keys, (weights + (w_final,) if output_attentions else None)
