"""Growing a trained model: deeper (new ViT layers that start as the identity) or a larger input.

A ViT layer is pre-norm, x + proj(attn(LN(x))) then x + lin2(act(lin1(LN(x)))), so with `proj` and `lin2`
zero (weights and biases) it is the identity. `deepen_vision_encoder` appends such layers after the last
one: the grown model's outputs equal the original's, and training then gives the new layers a use (the
zero projections get gradients at once, the layers' inner weights from the next step on).

`resize_image_size` moves a model to another input side with the same patches: a finer embedding grid
and finer low-resolution masks (4 x grid), the usual way to fine-tune a ViT at a higher resolution. The
absolute position embedding is resized bicubically and the global layers' relative-position tables
linearly (the interpolation Meta's `get_rel_pos` applies when sizes differ); windowed layers keep theirs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


@torch.no_grad()
def resize_image_size(model: SamHfModel, *, image_size: int) -> SamHfModel:
    """A new `SamHfModel` for `image_size` x `image_size` inputs (same patch size) with `model`'s weights.

    Only the grid-sized weights change: `pos_embed` (1, g, g, C) -> (1, g', g', C) bicubic, and each
    global layer's `rel_pos_h` / `rel_pos_w` (2g - 1, D) -> (2g' - 1, D) linear. `model` is left unchanged;
    save its processor again with `longest_edge=image_size`.
    """
    old = model.config.vision_config
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < old.patch_size or image_size % old.patch_size:
        raise ValueError(f"image_size must be a positive int multiple of the patch size {old.patch_size}, got {image_size!r}")
    config = SamHfConfig.from_dict(model.config.to_dict())
    config.vision_config.image_size = image_size
    config.prompt_encoder_config.image_size = image_size
    resized = SamHfModel(config).to(dtype=next(model.parameters()).dtype)
    state = model.state_dict()
    targets = resized.state_dict()
    for key, value in state.items():
        shape = targets[key].shape if key in targets else None
        if shape is None or shape == value.shape:
            continue
        if key == "vision_encoder.pos_embed":  # (1, g, g, C)
            grid = F.interpolate(value.permute(0, 3, 1, 2).float(), size=tuple(shape[1:3]), mode="bicubic", align_corners=False)
            state[key] = grid.permute(0, 2, 3, 1).to(value.dtype)
        elif key.endswith((".rel_pos_h", ".rel_pos_w")):  # (2g - 1, D)
            table = F.interpolate(value.t()[None].float(), size=shape[0], mode="linear")
            state[key] = table[0].t().to(value.dtype)
        else:
            raise RuntimeError(f"{key}: cannot resize {tuple(value.shape)} -> {tuple(shape)}")
    resized.load_state_dict(state, strict=True)
    return resized
