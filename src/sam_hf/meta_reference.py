"""Meta's own `segment_anything` model built with the sizes of a `SamHfConfig`.

Used to verify conversions numerically and by the parity tests. Needs the `segment-anything` package
(which imports torchvision at import time).
"""

from __future__ import annotations

from functools import partial

import torch

from .configuration import SamHfConfig


def build_meta_sam(config: SamHfConfig) -> torch.nn.Module:
    """An untrained `segment_anything.modeling.Sam` with the sizes of `config`, in eval mode."""
    try:
        from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    except ImportError as error:
        raise ImportError("build_meta_sam needs Meta's package: pip install segment-anything (and torchvision)") from error

    v, p, d = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    encoder = ImageEncoderViT(
        depth=v.num_hidden_layers, embed_dim=v.hidden_size, img_size=v.image_size, mlp_ratio=v.mlp_dim / v.hidden_size,
        norm_layer=partial(torch.nn.LayerNorm, eps=v.layer_norm_eps), num_heads=v.num_attention_heads,
        patch_size=v.patch_size, qkv_bias=v.qkv_bias, use_abs_pos=v.use_abs_pos, use_rel_pos=v.use_rel_pos,
        global_attn_indexes=v.global_attn_indexes, window_size=v.window_size, out_chans=v.output_channels,
    )
    prompt = PromptEncoder(
        embed_dim=p.hidden_size, image_embedding_size=(v.grid_size, v.grid_size),
        input_image_size=(v.image_size, v.image_size), mask_in_chans=p.mask_input_channels,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=d.num_multimask_outputs,
        transformer=TwoWayTransformer(depth=d.num_hidden_layers, embedding_dim=d.hidden_size, mlp_dim=d.mlp_dim,
                                      num_heads=d.num_attention_heads, attention_downsample_rate=d.attention_downsample_rate),
        transformer_dim=d.hidden_size, iou_head_depth=d.iou_head_depth, iou_head_hidden_dim=d.iou_head_hidden_dim,
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()
