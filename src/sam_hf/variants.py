"""One table of presets: Meta's ViT-B / ViT-L / ViT-H builders, and a tiny model for tests.

Every preset shares Meta's prompt encoder and decoder (256-d prompts, 16 mask channels, decoder depth 2,
MLP 2048, 8 heads, 3 multimask outputs) unless it says otherwise. `config_for_variant("vit_b")` builds a
`SamHfConfig`; `image_size=` (and other vision fields) can be overridden for non-standard inputs.
"""

from __future__ import annotations

from .configuration import SamHfConfig

VARIANTS: dict[str, dict] = {
    "vit_b": dict(vision=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11])),
    "vit_l": dict(vision=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, global_attn_indexes=[5, 11, 17, 23])),
    "vit_h": dict(vision=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31])),
    # Tiny seeded model for tests: 128-pixel input (8x8 grid), windows of 4, two blocks, 32-d prompts.
    "tiny": dict(
        vision=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=[1],
                    image_size=128, window_size=4, output_channels=32, num_pos_feats=16),
        prompt=dict(hidden_size=32, image_size=128),
        decoder=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    ),
}

# Meta's checkpoint file names, for the conversion script and model cards.
META_CHECKPOINTS = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}


def config_for_variant(variant: str, *, image_size: int | None = None, **vision_overrides) -> SamHfConfig:
    """Build the `SamHfConfig` of a preset; `image_size` changes the input side of every part."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    spec = VARIANTS[variant]
    vision = dict(spec.get("vision", {}), **vision_overrides)
    prompt = dict(spec.get("prompt", {}))
    if image_size is not None:
        vision["image_size"] = image_size
        prompt["image_size"] = image_size
    return SamHfConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=dict(spec.get("decoder", {})))
