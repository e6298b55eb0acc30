"""The ViT image encoder: patch embedding, windowed and global blocks with decomposed relative
positions, absolute position embedding, and the neck that projects to the prompt dimension."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import SamHfVisionConfig
from .attention import attention_with_rel_pos, decomposed_rel_pos
from .layers import SamHfLayerNorm2d, SamHfMLPBlock


class SamHfPatchEmbeddings(nn.Module):
    def __init__(self, config: SamHfVisionConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(pixel_values).permute(0, 2, 3, 1)  # (B, g, g, C)


class SamHfVisionAttention(nn.Module):
    """Multi-head self-attention over a (H, W) grid of tokens with decomposed relative positions."""

    def __init__(self, config: SamHfVisionConfig, *, input_size: int) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        head_dim = config.hidden_size // config.num_attention_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(config.hidden_size, config.hidden_size * 3, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.use_rel_pos = config.use_rel_pos
        if self.use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size - 1, head_dim))
        self.config = config

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, height, width, channels = hidden_states.shape
        length = height * width
        qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, -1)  # (B, L, 3, h, D)
        qkv = qkv.permute(2, 0, 3, 1, 4).reshape(3, batch * self.num_heads, length, -1)  # (3, B*h, L, D)
        query, key, value = qkv.unbind(0)
        if self.use_rel_pos:
            rel_h, rel_w = decomposed_rel_pos(query, self.rel_pos_h, self.rel_pos_w, (height, width))
        else:
            rel_h = query.new_zeros(batch * self.num_heads, length, height)
            rel_w = query.new_zeros(batch * self.num_heads, length, width)
        out, weights = attention_with_rel_pos(
            query, key, value, scale=self.scale, rel_h=rel_h, rel_w=rel_w, size=(height, width),
            implementation=self.config._attn_implementation or "sdpa", output_attentions=output_attentions,
        )
        out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, channels)
        if weights is not None:
            weights = weights.view(batch, self.num_heads, length, length)
        return self.proj(out), weights


def window_partition(hidden_states: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, ws, ws, C), zero-padding H and W up to multiples of the window, as Meta."""
    batch, height, width, channels = hidden_states.shape
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    hidden_states = F.pad(hidden_states, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    hidden_states = hidden_states.view(batch, padded_h // window_size, window_size, padded_w // window_size, window_size, channels)
    windows = hidden_states.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, channels)
    return windows, (padded_h, padded_w)


def window_unpartition(windows: torch.Tensor, window_size: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(B * nW, ws, ws, C) -> (B, H, W, C), dropping the padding."""
    padded_h, padded_w = padded
    height, width = size
    batch = windows.shape[0] // (padded_h * padded_w // window_size // window_size)
    hidden_states = windows.view(batch, padded_h // window_size, padded_w // window_size, window_size, window_size, -1)
    hidden_states = hidden_states.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    return hidden_states[:, :height, :width, :].contiguous()


class SamHfVisionLayer(nn.Module):
    """Pre-norm ViT block; attention within windows (window_size > 0) or over the whole grid."""

    def __init__(self, config: SamHfVisionConfig, *, window_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = SamHfVisionAttention(config, input_size=window_size if window_size > 0 else config.grid_size)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SamHfMLPBlock(hidden_size=config.hidden_size, mlp_dim=config.mlp_dim, hidden_act=config.hidden_act)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        residual = hidden_states  # (B, g, g, C)
        hidden_states = self.layer_norm1(hidden_states)
        if self.window_size > 0:
            size = hidden_states.shape[1:3]
            hidden_states, padded = window_partition(hidden_states, self.window_size)  # (B*nW, ws, ws, C)
        hidden_states, weights = self.attn(hidden_states, output_attentions=output_attentions)
        if self.window_size > 0:
            hidden_states = window_unpartition(hidden_states, self.window_size, padded, size)  # (B, g, g, C)
        hidden_states = residual + hidden_states
        hidden_states = hidden_states + self.mlp(self.layer_norm2(hidden_states))
        return hidden_states, weights


class SamHfVisionNeck(nn.Module):
    def __init__(self, config: SamHfVisionConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(config.hidden_size, config.output_channels, kernel_size=1, bias=False)
        self.layer_norm1 = SamHfLayerNorm2d(config.output_channels, eps=config.layer_norm_eps)
        self.conv2 = nn.Conv2d(config.output_channels, config.output_channels, kernel_size=3, padding=1, bias=False)
        self.layer_norm2 = SamHfLayerNorm2d(config.output_channels, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states.permute(0, 3, 1, 2)  # (B, C, g, g)
        return self.layer_norm2(self.conv2(self.layer_norm1(self.conv1(hidden_states))))


class SamHfVisionEncoder(nn.Module):
    def __init__(self, config: SamHfVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = SamHfPatchEmbeddings(config)
        self.pos_embed = None
        if config.use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, config.grid_size, config.grid_size, config.hidden_size))
        self.layers = nn.ModuleList(
            SamHfVisionLayer(config, window_size=0 if i in config.global_attn_indexes else config.window_size)
            for i in range(config.num_hidden_layers)
        )
        self.neck = SamHfVisionNeck(config)
        self.gradient_checkpointing = False

    def forward(
        self, pixel_values: torch.Tensor, *, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """pixel_values (B, 3, S, S) -> embeddings (B, C_out, g, g), hidden states, attentions."""
        hidden_states = self.patch_embed(pixel_values)  # (B, g, g, C)
        if self.pos_embed is not None:
            hidden_states = hidden_states + self.pos_embed
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden_states, weights = torch.utils.checkpoint.checkpoint(layer, hidden_states, output_attentions, use_reentrant=False)
            else:
                hidden_states, weights = layer(hidden_states, output_attentions=output_attentions)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
            if output_attentions:
                all_attn = all_attn + (weights,)
        return self.neck(hidden_states), all_hidden, all_attn
