"""Configs: presets exactly as Meta's builders, validation, transformers config.json field for field."""

import pytest
from transformers import SamConfig

from sam_hf import SamHfConfig, VARIANTS, config_for_variant

# Meta's build_sam_vit_{b,l,h}: embed dim, depth, heads, global attention indexes.
META_BUILDERS = {
    "vit_b": (768, 12, 12, [2, 5, 8, 11]),
    "vit_l": (1024, 24, 16, [5, 11, 17, 23]),
    "vit_h": (1280, 32, 16, [7, 15, 23, 31]),
}


@pytest.mark.parametrize("variant", sorted(META_BUILDERS))
def test_presets_match_meta_builders(variant):
    config = config_for_variant(variant)
    v, p, d = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.global_attn_indexes) == META_BUILDERS[variant]
    assert (v.window_size, v.patch_size, v.image_size, v.output_channels, v.mlp_dim) == (14, 16, 1024, 256, 4 * v.hidden_size)
    assert (v.layer_norm_eps, v.qkv_bias, v.use_rel_pos, v.use_abs_pos) == (1e-6, True, True, True)
    assert (p.hidden_size, p.mask_input_channels, p.image_embedding_size, p.mask_input_size) == (256, 16, 64, 256)
    assert (d.num_hidden_layers, d.mlp_dim, d.num_attention_heads, d.num_multimask_outputs) == (2, 2048, 8, 3)
    assert (d.iou_head_depth, d.iou_head_hidden_dim, d.attention_downsample_rate) == (3, 256, 2)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_builds_and_round_trips(variant, tmp_path):
    config = config_for_variant(variant)
    config.save_pretrained(tmp_path)
    loaded = SamHfConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.model_type == "sam_hf"


def test_non_default_image_size():
    config = config_for_variant("tiny", image_size=256)
    assert config.vision_config.grid_size == 16 and config.prompt_encoder_config.mask_input_size == 64


def test_transformers_config_converts_field_for_field(tmp_path):
    reference = SamConfig(vision_config=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, global_attn_indexes=[5, 11, 17, 23]))
    reference.save_pretrained(tmp_path)
    ours = SamHfConfig.from_pretrained(tmp_path)
    assert ours.model_type == "sam_hf"
    for name in ("vision_config", "prompt_encoder_config", "mask_decoder_config"):
        theirs = getattr(reference, name).to_dict()
        mine = getattr(ours, name).to_dict()
        for key, value in theirs.items():
            if key in ("model_type", "transformers_version", "scale", "image_embedding_size") or key not in type(getattr(ours, name)).__dataclass_fields__:
                continue
            assert mine[key] == (list(value) if isinstance(value, tuple) else value), (name, key)
    # derived values are recomputed, not trusted
    assert ours.vision_config.scale == reference.vision_config.scale
    assert ours.prompt_encoder_config.image_embedding_size == reference.prompt_encoder_config.image_embedding_size
    # and a transformers config object is accepted directly
    direct = SamHfConfig(vision_config=reference.vision_config, prompt_encoder_config=reference.prompt_encoder_config,
                         mask_decoder_config=reference.mask_decoder_config)
    assert direct.vision_config.hidden_size == 1024


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        (dict(vision_config=dict(hidden_size=30, num_attention_heads=4)), ValueError, "num_attention_heads"),
        (dict(vision_config=dict(hidden_size="768")), TypeError, "hidden_size"),
        (dict(vision_config=dict(num_hidden_layers=4, global_attn_indexes=[5])), ValueError, "global_attn_indexes"),
        (dict(vision_config=dict(image_size=1000)), ValueError, "patch_size"),
        (dict(vision_config=dict(hidden_act="tanhh")), ValueError, "hidden_act"),
        (dict(vision_config=dict(window_size=-1)), ValueError, "window_size"),
        (dict(mask_decoder_config=dict(hidden_size=128)), ValueError, "must be equal"),
        (dict(mask_decoder_config=dict(num_multimask_outputs=0)), ValueError, "num_multimask_outputs"),
        (dict(prompt_encoder_config=dict(image_size=512)), ValueError, "image_size"),
        (dict(prompt_encoder_config=dict(mask_input_channels=10)), ValueError, "mask_input_channels"),
        (dict(vision_config=dict(num_pos_feats=64)), ValueError, "num_pos_feats"),
        (dict(vision_config=3), TypeError, "vision_config"),
        (dict(vision_config=dict(mlp_ratio=float("inf"))), ValueError, "mlp_ratio must be a finite number"),
        (dict(vision_config=dict(layer_norm_eps=float("nan"))), ValueError, "layer_norm_eps"),
        (dict(vision_config=dict(attention_dropout=5)), ValueError, "attention_dropout must be a finite number >= 0 and < 1"),
        (dict(vision_config=dict(num_hidden_layers=4, global_attn_indexes=[1.7])), TypeError, "global_attn_indexes must be a list of ints"),
        (dict(vision_config=dict(num_hidden_layers=4, global_attn_indexes=[True])), TypeError, "global_attn_indexes"),
        (dict(vision_config=dict(num_hidden_layers=4, global_attn_indexes=[1, 1])), ValueError, "each layer once"),
        (dict(prompt_encoder_config=dict(num_point_embeddings=4.0)), ValueError, "num_point_embeddings"),
        (dict(mask_decoder_config=dict(attention_downsample_rate=1024)), ValueError, "cross-attention width"),
        (dict(initializer_range=float("nan")), ValueError, "initializer_range"),
        (dict(initializer_range="x"), TypeError, "initializer_range"),
    ],
)
def test_bad_values_raise_naming_the_field(kwargs, error, words):
    with pytest.raises(error, match=words):
        SamHfConfig(**kwargs)


def test_unknown_variant():
    with pytest.raises(ValueError, match="variant must be one of"):
        config_for_variant("vit_x")
