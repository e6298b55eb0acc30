"""Reference implementations built from one SamHfConfig: Meta's `segment_anything` and transformers'
`SamModel`, with weights copied from (or to) a sam_hf model, so that parity tests compare the three
on identical random weights."""

from __future__ import annotations

from functools import partial

import torch

from sam_hf.checkpoints import convert_to_meta_state_dict
from sam_hf.configuration import SamHfConfig


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter non-trivial random values (zero-initialised rel-pos and pos-embeds included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 1.0 if param.dim() <= 1 and ("norm" in name or "bias" in name) else 0.2
            noise = torch.randn(param.shape, generator=generator) * scale
            if "norm" in name and name.endswith("weight"):
                noise = 1.0 + 0.1 * noise
            param.copy_(noise)
    return model


def build_meta_sam(config: SamHfConfig):
    """Meta's `Sam` with the sizes of `config` (random weights)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    v, p, d = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    grid = v.image_size // v.patch_size
    encoder = ImageEncoderViT(
        depth=v.num_hidden_layers, embed_dim=v.hidden_size, img_size=v.image_size, mlp_ratio=v.mlp_dim / v.hidden_size,
        norm_layer=partial(torch.nn.LayerNorm, eps=v.layer_norm_eps), num_heads=v.num_attention_heads,
        patch_size=v.patch_size, qkv_bias=v.qkv_bias, use_rel_pos=v.use_rel_pos, global_attn_indexes=v.global_attn_indexes,
        window_size=v.window_size, out_chans=v.output_channels,
    )
    prompt = PromptEncoder(embed_dim=p.hidden_size, image_embedding_size=(grid, grid), input_image_size=(v.image_size, v.image_size),
                           mask_in_chans=p.mask_input_channels)
    decoder = MaskDecoder(
        num_multimask_outputs=d.num_multimask_outputs,
        transformer=TwoWayTransformer(depth=d.num_hidden_layers, embedding_dim=d.hidden_size, mlp_dim=d.mlp_dim,
                                      num_heads=d.num_attention_heads, attention_downsample_rate=d.attention_downsample_rate),
        transformer_dim=d.hidden_size, iou_head_depth=d.iou_head_depth, iou_head_hidden_dim=d.iou_head_hidden_dim,
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()


def meta_from_ours(model) -> torch.nn.Module:
    meta = build_meta_sam(model.config)
    meta.load_state_dict(convert_to_meta_state_dict(model.state_dict()), strict=True)
    return meta


def transformers_config(config: SamHfConfig):
    from transformers import SamConfig

    def fields(sub):
        return {k: v for k, v in sub.to_dict().items() if k not in ("model_type", "transformers_version", "_attn_implementation_autoset")}

    return SamConfig(vision_config=fields(config.vision_config), prompt_encoder_config=fields(config.prompt_encoder_config),
                     mask_decoder_config=fields(config.mask_decoder_config))


def transformers_from_ours(model, attn_implementation: str = "sdpa"):
    from transformers import SamModel

    reference = SamModel(transformers_config(model.config))
    state = dict(model.state_dict())
    state["prompt_encoder.shared_embedding.positional_embedding"] = state["shared_image_embedding.positional_embedding"]
    missing, unexpected = reference.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise AssertionError(f"transformers SamModel keys differ: missing {missing}, unexpected {unexpected}")
    reference.set_attn_implementation(attn_implementation)
    return reference.eval()
