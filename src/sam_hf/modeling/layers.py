"""Small reusable layers: the MLPs, channels-first LayerNorm and the random Fourier position encoding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


class SamHfMLPBlock(nn.Module):
    """Two linear layers with an activation between them (the ViT and two-way-transformer MLP)."""

    def __init__(self, *, hidden_size: int, mlp_dim: int, hidden_act: str) -> None:
        super().__init__()
        self.lin1 = nn.Linear(hidden_size, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, hidden_size)
        self.act = ACT2FN[hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(hidden_states)))


class SamHfFeedForward(nn.Module):
    """`num_layers` linear layers with ReLU between them: the hypernetwork MLPs and the IoU head.

    Weight names follow transformers: `proj_in`, `layers.{i}` (the middle ones), `proj_out`.
    """

    def __init__(self, *, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(input_dim, hidden_dim)
        self.layers = nn.ModuleList([nn.Linear(hidden_dim, hidden_dim) for _ in range(num_layers - 2)])
        self.proj_out = nn.Linear(hidden_dim, output_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = F.relu(self.proj_in(hidden_states))
        for layer in self.layers:
            hidden_states = F.relu(layer(hidden_states))
        return self.proj_out(hidden_states)


class SamHfLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states.permute(0, 2, 3, 1)  # (B, H, W, C)
        hidden_states = F.layer_norm(hidden_states, self.normalized_shape, self.weight, self.bias, self.eps)
        return hidden_states.permute(0, 3, 1, 2)  # (B, C, H, W)


class SamHfPositionalEmbedding(nn.Module):
    """Random Fourier features of 2-D coordinates, shared by the prompt encoder and the image grid.

    `positional_embedding` is the (2, F) Gaussian matrix; an (x, y) in [0, 1]^2 maps to
    [sin(2 pi (2xy - 1) G), cos(...)] of size 2F, the prompt dimension.
    """

    def __init__(self, *, num_pos_feats: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(2, num_pos_feats))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (..., 2) normalised to [0, 1] -> (..., 2F)."""
        coords = (2 * coords - 1).to(self.positional_embedding.dtype) @ self.positional_embedding
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def encode_points(self, points: torch.Tensor, image_size: int) -> torch.Tensor:
        """points (..., 2) as x, y pixels of the square model input -> (..., 2F)."""
        return self(points / image_size)

    def grid(self, size: int) -> torch.Tensor:
        """Encoding of the centres of a size x size grid -> (2F, size, size)."""
        centres = (torch.arange(size, device=self.positional_embedding.device, dtype=torch.float32) + 0.5) / size
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        return self(torch.stack([x, y], dim=-1)).permute(2, 0, 1)  # (2F, size, size)
