#!/usr/bin/env python
"""Convert Meta's `sam_vit_{b,l,h}_*.pth` into a saved sam_hf model (config, safetensors, processor, card).

    python conversion/convert_meta_checkpoint.py sam_vit_b_01ec64.pth --variant vit_b --output sam-hf-vit-base

The checkpoint is read with `torch.load(weights_only=True)`; anything but a plain state dict is refused.
Conversion is strict (every source key used, every model key filled, every shape equal) and then verified
numerically: the converted model and Meta's own `segment_anything` model (when installed) are run on the
same random image and prompts and compared with `torch.testing.assert_close`.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from sam_hf import SamHfModel, config_for_variant, infer_meta_config
from sam_hf.checkpoints import read_meta_checkpoint
from sam_hf.hub import conversion_model_card
from sam_hf.meta_reference import build_meta_sam


def verify_against_meta(model: SamHfModel, state_dict: dict, *, seed: int = 0) -> str:
    """Run Meta's model (if importable) and ours on one random input; raise if they differ."""
    try:
        meta = build_meta_sam(model.config)
    except ImportError as error:
        return f"numerical check skipped: {error}"
    meta.load_state_dict(state_dict, strict=True)
    size = model.config.vision_config.image_size
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, 3, size, size, generator=generator)
    points = torch.rand(1, 2, 2, 2, generator=generator) * size
    labels = torch.tensor([[[1, 0], [1, 1]]])
    with torch.no_grad():
        ours = model(pixels, input_points=points, input_labels=labels)
        embeddings = meta.image_encoder(pixels)
        sparse, dense = meta.prompt_encoder(points=(points[0], labels[0]), boxes=None, masks=None)
        masks, iou = meta.mask_decoder(image_embeddings=embeddings, image_pe=meta.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True)
    torch.testing.assert_close(ours.image_embeddings, embeddings, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.pred_masks[0], masks, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ours.iou_scores[0], iou, rtol=1e-4, atol=1e-4)
    error = (ours.pred_masks[0] - masks).abs().max().item()
    return f"numerical check passed: max |mask logit difference| = {error:.2e}"


def _preset_of(config) -> str | None:
    """The Meta preset a config equals, if any (the card is written for Meta's ViT-B/L/H)."""
    for variant in ("vit_b", "vit_l", "vit_h"):
        if config_for_variant(variant).to_dict() == config.to_dict():
            return variant
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="Meta's .pth file")
    parser.add_argument("--output", required=True, help="folder to save the converted model into")
    parser.add_argument("--variant", choices=["vit_b", "vit_l", "vit_h"], help="preset; default: read off the checkpoint's shapes")
    parser.add_argument("--no-verify", action="store_true", help="skip the numerical comparison with Meta's code")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also push the converted model to this Hub repo")
    args = parser.parse_args(argv)

    state_dict = read_meta_checkpoint(args.checkpoint)
    config = config_for_variant(args.variant) if args.variant else infer_meta_config(state_dict)
    model = SamHfModel.from_meta_state_dict(state_dict, config)
    print(f"converted {len(state_dict)} tensors ({sum(v.numel() for v in state_dict.values()) / 1e6:.1f} M parameters)")
    check = None if args.no_verify else verify_against_meta(model, state_dict)
    if check:
        print(check)
    if not args.variant and _preset_of(config) is None:
        # the check builds Meta's model from the same config, so it cannot tell a wrong assumption
        print("note: the config was read off the checkpoint's shapes; the mask decoder's head count (8) and GELU "
              "activations cannot be read from shapes and were assumed, as in every checkpoint Meta published")
    model.save_pretrained(args.output)
    variant = args.variant or _preset_of(config)
    if variant:
        command = "python conversion/convert_meta_checkpoint.py " + " ".join(sys.argv[1:] if argv is None else argv)
        card = conversion_model_card(variant=variant, config=config, command=command,
                                     checkpoint=os.path.basename(args.checkpoint), metrics={"numerical check": check} if check else None,
                                     repo_id=args.push_to_hub)
        card.save(os.path.join(args.output, "README.md"))
    print(f"saved to {args.output}")
    if args.push_to_hub:
        model.push_to_hub(args.push_to_hub)
        print(f"pushed to {args.push_to_hub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
