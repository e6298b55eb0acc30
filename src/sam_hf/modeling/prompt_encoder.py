"""Prompt encoder: points and boxes -> sparse tokens (B, P, T, C); mask logits -> dense (B, P or 1, C, g, g).

Point labels: 1 positive, 0 negative, -1 Meta's "not a point" (a real token carrying
`not_a_point_embed`), -10 a padding slot. Padding slots get a zero embedding and are reported in the
returned token mask so that the decoder never attends to them: a padded prompt gives exactly the
result of the unpadded one.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..configuration import SamHfPromptEncoderConfig
from .autocast import in_own_dtype
from .layers import SamHfLayerNorm2d, SamHfPositionalEmbedding

PAD_LABEL = -10
NOT_A_POINT_LABEL = -1


class SamHfMaskEmbedding(nn.Module):
    """Low-res mask logits (N, 1, 4g, 4g) -> dense embeddings (N, C, g, g)."""

    def __init__(self, config: SamHfPromptEncoderConfig) -> None:
        super().__init__()
        hidden = config.mask_input_channels // 4
        self.conv1 = nn.Conv2d(1, hidden, kernel_size=2, stride=2)
        self.layer_norm1 = SamHfLayerNorm2d(hidden, eps=config.layer_norm_eps)
        self.conv2 = nn.Conv2d(hidden, config.mask_input_channels, kernel_size=2, stride=2)
        self.layer_norm2 = SamHfLayerNorm2d(config.mask_input_channels, eps=config.layer_norm_eps)
        self.conv3 = nn.Conv2d(config.mask_input_channels, config.hidden_size, kernel_size=1)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        hidden_states = self.act(self.layer_norm1(self.conv1(masks)))  # (N, c/4, 2g, 2g)
        hidden_states = self.act(self.layer_norm2(self.conv2(hidden_states)))  # (N, c, g, g)
        return self.conv3(hidden_states)  # (N, C, g, g)


class SamHfPromptEncoder(nn.Module):
    def __init__(self, config: SamHfPromptEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.mask_embed = SamHfMaskEmbedding(config)
        self.no_mask_embed = nn.Embedding(1, config.hidden_size)
        # 0 negative point, 1 positive point, 2 box top-left, 3 box bottom-right
        self.point_embed = nn.ModuleList(nn.Embedding(1, config.hidden_size) for _ in range(config.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, config.hidden_size)

    def _embed_points(self, points, labels, pe: SamHfPositionalEmbedding, pad: bool):
        """points (B, P, N, 2), labels (B, P, N) -> embeddings (B, P, N', C), valid (B, P, N')."""
        points = points + 0.5  # centre of the pixel
        if pad:  # Meta appends one "not a point" when no box is given
            batch, prompts = points.shape[:2]
            points = torch.cat([points, points.new_zeros(batch, prompts, 1, 2)], dim=2)
            labels = torch.cat([labels, labels.new_full((batch, prompts, 1), NOT_A_POINT_LABEL)], dim=2)
        embedding = pe.encode_points(points, self.config.image_size)  # (B, P, N', C)
        labels = labels[..., None]  # (B, P, N', 1)
        embedding = torch.where(labels == NOT_A_POINT_LABEL, self.not_a_point_embed.weight, embedding)
        embedding = torch.where(labels == PAD_LABEL, torch.zeros_like(embedding), embedding)
        embedding = torch.where(labels == 0, embedding + self.point_embed[0].weight, embedding)
        embedding = torch.where(labels == 1, embedding + self.point_embed[1].weight, embedding)
        return embedding, labels[..., 0] != PAD_LABEL

    def _embed_boxes(self, boxes, pe: SamHfPositionalEmbedding):
        """boxes (B, P, 4) -> corner embeddings (B, P, 2, C)."""
        batch, prompts = boxes.shape[:2]
        corners = (boxes + 0.5).reshape(batch, prompts, 2, 2)  # (B, P, 2, 2)
        embedding = pe.encode_points(corners, self.config.image_size)
        corner_weights = torch.cat([self.point_embed[2].weight, self.point_embed[3].weight])  # (2, C)
        return embedding + corner_weights

    @in_own_dtype
    def forward(
        self,
        *,
        positional_embedding: SamHfPositionalEmbedding,
        batch_size: int,
        input_points: torch.Tensor | None = None,
        input_labels: torch.Tensor | None = None,
        input_boxes: torch.Tensor | None = None,
        input_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns sparse (B, P, T, C), sparse_valid (B, P, T) bool, dense (B, P or 1, C, g, g)."""
        sparse, valid = [], []
        if input_points is not None:
            emb, ok = self._embed_points(input_points, input_labels, positional_embedding, pad=input_boxes is None)
            sparse.append(emb)
            valid.append(ok)
        if input_boxes is not None:
            emb = self._embed_boxes(input_boxes, positional_embedding)
            sparse.append(emb)
            valid.append(torch.ones(emb.shape[:3], dtype=torch.bool, device=emb.device))
        weight = self.no_mask_embed.weight
        if sparse:
            sparse_embeddings, sparse_valid = torch.cat(sparse, dim=2), torch.cat(valid, dim=2)
        else:
            prompts = input_masks.shape[1] if input_masks is not None else 1
            sparse_embeddings = weight.new_zeros(batch_size, prompts, 0, weight.shape[-1])
            sparse_valid = torch.ones(batch_size, prompts, 0, dtype=torch.bool, device=weight.device)

        grid = self.config.image_embedding_size
        if input_masks is not None:
            batch, prompts = input_masks.shape[:2]
            masks = input_masks.reshape(batch * prompts, 1, *input_masks.shape[2:]).to(weight.dtype)
            dense = self.mask_embed(masks).reshape(batch, prompts, -1, grid, grid)  # (B, P or 1, C, g, g)
        else:
            dense = weight.reshape(1, 1, -1, 1, 1).expand(batch_size, 1, -1, grid, grid)  # (B, 1, C, g, g)
        return sparse_embeddings, sparse_valid, dense
