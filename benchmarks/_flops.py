"""FLOPs (2 x multiply-adds) of SAM's encoder and mask decoder as the original computes them, from a config: what
the benchmarks' "GFLOP/s" and "% matmul peak" columns divide by.

The counts follow Meta's formulation (transformers' is the same): every projection of every token once, the
windowed blocks' projections over the padded windows, all mask tokens upscaled and multiplied out. sam_hf does
less of the decoder's work (the image side is shared across prompts until it first differs, the image tokens'
projections are folded into the token side, only the returned masks' tokens attend in the last step), so its
decoder rows can read above 100% of the matmul peak: the columns measure speed on the common work.
"""

from __future__ import annotations


def encoder_gflop(config) -> float:
    """One image through the ViT image encoder and its neck (ViT-B 972, ViT-L 2,986, ViT-H 5,961)."""
    vision = config.vision_config
    grid, channels, window = vision.grid_size, vision.hidden_size, vision.window_size
    tokens = grid * grid
    flop = tokens * vision.num_channels * vision.patch_size**2 * channels  # patch embedding
    for index in range(vision.num_hidden_layers):
        if window and index not in vision.global_attn_indexes:
            windows, side = (-(-grid // window)) ** 2, window  # padded to whole windows
        else:
            windows, side = 1, grid
        attended = windows * side * side  # tokens the attention's projections see
        flop += attended * 4 * channels * channels  # q, k, v and output projections
        flop += windows * 2 * (side * side) ** 2 * channels  # logits and weighted sum
        if vision.use_rel_pos:
            flop += attended * 2 * side * channels  # the decomposed relative positions (height and width terms)
        flop += tokens * 2 * channels * vision.mlp_dim  # MLP
    out = vision.output_channels
    flop += tokens * channels * out + tokens * out * out * 9  # neck: 1x1 and 3x3 convolutions
    return 2 * flop / 1e9


def decoder_gflop(config, point_tokens: int = 2) -> float:
    """One prompt through the mask decoder, image positional encoding aside (computed once per image; ViT presets:
    3.62); `point_tokens`: the prompt's sparse tokens (one point
    and the padding point Meta adds without a box)."""
    decoder = config.mask_decoder_config
    grid = config.prompt_encoder_config.image_embedding_size
    image, channels = grid * grid, decoder.hidden_size
    inner = channels // decoder.attention_downsample_rate
    masks = decoder.num_multimask_outputs + 1
    tokens = 1 + masks + point_tokens

    def cross(queries: int, keys: int) -> int:  # q, k, v projections, logits, weighted sum, output projection
        return queries * channels * inner + 2 * keys * channels * inner + 2 * queries * keys * inner + queries * inner * channels

    self_attention = 4 * tokens * channels * channels + 2 * tokens * tokens * channels
    block = self_attention + cross(tokens, image) + 2 * tokens * channels * decoder.mlp_dim + cross(image, tokens)
    transformer = decoder.num_hidden_layers * block + cross(tokens, image)
    hypernetworks = masks * (2 * channels * channels + channels * channels // 8)
    hidden = decoder.iou_head_hidden_dim
    iou_head = channels * hidden + (decoder.iou_head_depth - 2) * hidden * hidden + hidden * masks
    upscaling = image * channels * channels + image * channels * channels // 2 + masks * channels // 8 * 16 * image
    return 2 * (transformer + hypernetworks + iou_head + upscaling) / 1e9
