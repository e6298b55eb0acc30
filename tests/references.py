"""Reference implementations built from one SamHfConfig: Meta's `segment_anything` and transformers'
`SamModel`, with weights copied from (or to) a sam_hf model, so that parity tests compare the three
on identical random weights."""

from __future__ import annotations

import torch

from sam_hf.checkpoints import convert_to_meta_state_dict
from sam_hf.configuration import SamHfConfig, SamHfMaskDecoderConfig
from sam_hf.meta_reference import build_meta_sam  # noqa: F401  (re-exported for tests)


def random_mask_decoder(channels: int):
    """A mask decoder of width `channels` (4 heads) with every parameter drawn from N(0, 0.5^2), seeded by the width:
    LayerNorm weights and biases too, nothing left at its default (the upscaling kernels' tests)."""
    from sam_hf.modeling.mask_decoder import SamHfMaskDecoder

    torch.manual_seed(channels)
    decoder = SamHfMaskDecoder(SamHfMaskDecoderConfig(hidden_size=channels, mlp_dim=2 * channels, num_attention_heads=4)).eval()
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.normal_(std=0.5)
    return decoder


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
