"""Mask decoder: output tokens + prompt tokens through the two-way transformer, then mask upscaling,
hypernetwork MLPs (one per mask token) and the IoU head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import SamHfMaskDecoderConfig
from .layers import SamHfFeedForward, SamHfLayerNorm2d
from .two_way_transformer import SamHfTwoWayTransformer


class SamHfMaskDecoder(nn.Module):
    def __init__(self, config: SamHfMaskDecoderConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, hidden)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, hidden)
        self.transformer = SamHfTwoWayTransformer(config)
        self.upscale_conv1 = nn.ConvTranspose2d(hidden, hidden // 4, kernel_size=2, stride=2)
        self.upscale_layer_norm = SamHfLayerNorm2d(hidden // 4, eps=config.layer_norm_eps)
        self.upscale_conv2 = nn.ConvTranspose2d(hidden // 4, hidden // 8, kernel_size=2, stride=2)
        self.output_hypernetworks_mlps = nn.ModuleList(
            SamHfFeedForward(input_dim=hidden, hidden_dim=hidden, output_dim=hidden // 8, num_layers=3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = SamHfFeedForward(
            input_dim=hidden, hidden_dim=config.iou_head_hidden_dim, output_dim=self.num_mask_tokens, num_layers=config.iou_head_depth
        )

    def forward(
        self,
        *,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_embeddings: torch.Tensor,
        sparse_valid: torch.Tensor,
        dense_embeddings: torch.Tensor,
        multimask_output: bool,
        output_attentions: bool = False,
    ):
        """image_embeddings (B, C, g, g), image_pe (C, g, g), sparse (B, P, T, C), sparse_valid (B, P, T),
        dense (B, P or 1, C, g, g) -> masks (B, P, M, 4g, 4g), iou (B, P, M), attention weights."""
        batch, prompts, num_sparse, channels = sparse_embeddings.shape
        grid = image_embeddings.shape[-1]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])  # (1 + M', C)
        tokens = torch.cat([output_tokens.expand(batch, prompts, -1, -1), sparse_embeddings.to(output_tokens.dtype)], dim=2)
        tokens = tokens.reshape(batch * prompts, -1, channels)  # (B*P, T', C)
        token_mask = None
        if not bool(sparse_valid.all()):
            output_valid = sparse_valid.new_ones(batch, prompts, output_tokens.shape[0])
            token_mask = torch.cat([output_valid, sparse_valid], dim=2).reshape(batch * prompts, -1)  # (B*P, T')

        image = image_embeddings[:, None] + dense_embeddings  # (B, P or 1, C, g, g)
        image = image.expand(batch, prompts, -1, -1, -1).reshape(batch * prompts, channels, grid * grid)
        image = image.transpose(1, 2)  # (B*P, g*g, C)
        pe = image_pe.reshape(1, channels, grid * grid).transpose(1, 2).to(image.dtype)  # (1, g*g, C)

        tokens, image, weights = self.transformer(tokens, image, pe, token_mask, output_attentions)
        iou_token_out = tokens[:, 0]  # (B*P, C)
        mask_tokens_out = tokens[:, 1 : 1 + self.num_mask_tokens]  # (B*P, M', C)

        image = image.transpose(1, 2).reshape(batch * prompts, channels, grid, grid)  # (B*P, C, g, g)
        upscaled = F.gelu(self.upscale_layer_norm(self.upscale_conv1(image)))  # (B*P, C/4, 2g, 2g)
        upscaled = F.gelu(self.upscale_conv2(upscaled))  # (B*P, C/8, 4g, 4g)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B*P, M', C/8)
        side = upscaled.shape[-1]
        masks = hyper_in @ upscaled.flatten(2)  # (B*P, M', 4g*4g)
        masks = masks.reshape(batch, prompts, self.num_mask_tokens, side, side)
        iou_pred = self.iou_prediction_head(iou_token_out).reshape(batch, prompts, self.num_mask_tokens)

        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, :, mask_slice], iou_pred[:, :, mask_slice], weights
