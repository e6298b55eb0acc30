"""Growing a trained model without changing what it computes: new ViT layers whose residual branches start at zero.

A ViT layer is pre-norm, x + proj(attn(LN(x))) then x + lin2(act(lin1(LN(x)))), so with `proj` and `lin2`
zero (weights and biases) it is the identity. `deepen_vision_encoder` appends such layers after the last
one: the grown model's outputs equal the original's, and training then gives the new layers a use (the
zero projections get gradients at once, the layers' inner weights from the next step on).
"""

from __future__ import annotations

import torch

from ..configuration import SamHfConfig
from ..modeling.sam import SamHfModel


@torch.no_grad()
def deepen_vision_encoder(model: SamHfModel, *, num_layers: int, global_attention: bool = True,
                          generator: torch.Generator | None = None) -> SamHfModel:
    """A new `SamHfModel` with `num_layers` identity-initialized ViT layers appended to `model`'s encoder.

    global_attention: the new layers attend over the whole grid (their indices join `global_attn_indexes`);
    else they use the encoder's `window_size`. Inner weights (qkv, lin1) are N(0, 1 / fan_in), LayerNorms
    and relative positions at their defaults, `proj` and `lin2` zero. `model` is left unchanged.
    """
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    old = model.config.vision_config
    start = old.num_hidden_layers
    new_indexes = list(range(start, start + num_layers)) if global_attention else []
    config = SamHfConfig.from_dict(model.config.to_dict())  # everything else as it was (top-level fields too)
    config.vision_config.num_hidden_layers = start + num_layers
    config.vision_config.global_attn_indexes = list(old.global_attn_indexes) + new_indexes
    grown = SamHfModel(config).to(dtype=next(model.parameters()).dtype)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    new_prefixes = tuple(f"vision_encoder.layers.{i}." for i in range(start, start + num_layers))
    if unexpected or any(not key.startswith(new_prefixes) for key in missing):
        raise RuntimeError(f"weights do not line up: missing {missing}, unexpected {unexpected}")
    for layer in grown.vision_encoder.layers[start:]:
        for linear in (layer.attn.qkv, layer.mlp.lin1):
            linear.weight.normal_(std=linear.in_features ** -0.5, generator=generator)
            if linear.bias is not None:
                linear.bias.zero_()
        for linear in (layer.attn.proj, layer.mlp.lin2):
            linear.weight.zero_()
            linear.bias.zero_()
    return grown
