#!/usr/bin/env python
"""Measure a SamHf model on fresh held-out synthetic images: single-point mIoU, box mIoU, and the recall of
objects by automatic mask generation (segment everything) at IoU 0.5.

    python examples/evaluate_shipped_model.py models/sam-hf-shapes-352 --num_images 256 --seed 10000
    python examples/evaluate_shipped_model.py models/sam-hf-shapes-352 --json metrics.json

The images come from `sam_hf.training.build_synthetic_dataset(num_images, seed, image_size)`; the shipped
model was trained on seeds 0 to 4 (its card lists them), so seed 10000 and other unused seeds are held out.
Prompted mIoU: every instance is prompted with its most interior pixel (the candidate with the highest
predicted IoU is kept) and with its tight box; IoU at the original resolution. AMG:
`SamHfAutomaticMaskGenerator` with its default settings (as `sam-hf segment-everything` and
`pipeline("mask-generation")` use them) unless flags say otherwise; an object counts as found when some
generated mask has IoU >= 0.5 with it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sam_hf import SamHfModel, SamHfProcessor
from sam_hf.training import evaluate_amg_recall, evaluate_prompted, synthetic_images


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a saved SamHf model folder")
    p.add_argument("--num_images", type=int, default=256, help="held-out images for point / box mIoU")
    p.add_argument("--amg_images", type=int, default=64, help="held-out images for AMG recall (the first ones)")
    p.add_argument("--seed", type=int, default=10_000, help="synthetic seed of the held-out images (training: 0 to 4)")
    p.add_argument("--image_size", type=int, nargs=2, default=[128, 192], metavar=("MIN", "MAX"))
    p.add_argument("--points_per_side", type=int, default=None, help="AMG grid (default: the generator's, 32)")
    p.add_argument("--pred_iou_thresh", type=float, default=None)
    p.add_argument("--stability_score_thresh", type=float, default=None)
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("--write_card", action="store_true",
                   help="rewrite MODEL/README.md (sam_hf.hub.training_model_card) with these numbers; keeps the "
                        "training command, step count and loss of the card examples/finetune.py wrote")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = SamHfModel.from_pretrained(args.model).eval()
    processor = SamHfProcessor.from_pretrained(args.model)
    data = synthetic_images(num_images=max(args.num_images, args.amg_images), seed=args.seed, image_size=args.image_size)
    start = time.time()
    results = evaluate_prompted(model, processor, data.select(range(args.num_images)))
    knobs = {k: v for k, v in dict(points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
                                   stability_score_thresh=args.stability_score_thresh).items() if v is not None}
    if args.amg_images:
        amg_data = data.select(range(args.amg_images))
        results.update(evaluate_amg_recall(model, processor, amg_data, **knobs))
        if knobs:  # the generator's defaults too, for comparison
            default = evaluate_amg_recall(model, processor, amg_data)
            results.update({f"{key}_default_settings": default[key] for key in ("amg_recall", "amg_precision", "amg_masks_per_image")})
    results.update(seed=args.seed, num_images=args.num_images, amg_images=args.amg_images,
                   image_size=list(args.image_size), amg_settings=knobs or "defaults", seconds=round(time.time() - start, 1))
    print(json.dumps(results, indent=2))
    if args.write_card:
        write_card(args.model, model.config, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


def write_card(folder: str, config, results: dict) -> None:
    """Regenerate the card of a model trained by examples/finetune.py with held-out numbers from this script."""
    import os
    import re

    from sam_hf.hub import training_model_card

    old = open(os.path.join(folder, "README.md")).read()
    command = re.search(r"```bash\n(.*?)\n```", old, re.S).group(1)
    steps = re.search(r"for (\d+) optimizer steps", old)
    loss = re.search(r"optimizer steps: (.*?) and simulated", old, re.S)
    name = re.search(r"^# (.+)$", old, re.M).group(1)
    keys = ("point_miou", "box_miou", "instances", "amg_recall", "amg_precision", "amg_masks_per_image", "objects",
            "amg_recall_default_settings", "amg_precision_default_settings", "amg_masks_per_image_default_settings")
    metrics = {key: results[key] for key in keys if key in results}
    settings = results["amg_settings"]
    seeds = sorted(set(re.findall(r"--synthetic_seed (\d+)", command)), key=int) or ["0"]
    listed = seeds[0] if len(seeds) == 1 else f"{', '.join(seeds[:-1])} and {seeds[-1]}"
    trained_on = f"training used seed{'s' if len(seeds) > 1 else ''} {listed}"
    flags = "" if settings == "defaults" else " " + " ".join(f"--{k} {v}" for k, v in settings.items())
    cli = "" if settings == "defaults" else " " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())
    notes = (f"Numbers measured by `python examples/evaluate_shipped_model.py {folder} --num_images {results['num_images']} "
             f"--amg_images {results['amg_images']} --seed {results['seed']}{flags}` on fresh synthetic images "
             f"(`build_synthetic_dataset(seed={results['seed']}, image_size={tuple(results['image_size'])})`; {trained_on}): "
             "`point_miou` prompts every object with its most interior pixel (the candidate with the "
             "highest predicted IoU is kept), `box_miou` with its tight box, both at the original resolution over "
             f"{results['instances']} objects; `amg_recall` is the fraction of the {results.get('objects', 0)} objects "
             f"of the first AMG images that `SamHfAutomaticMaskGenerator` ({'its default settings' if not flags else 'with ' + str(settings)}) "
             "finds at IoU >= 0.5, `amg_precision` the fraction of its masks that match an object"
             + ("; `*_default_settings`: the same with the generator's defaults (pred_iou_thresh 0.88, "
                "stability_score_thresh 0.95), which this small model's IoU head passes less often. Segment everything "
                f"with `sam-hf segment-everything IMAGE --model {folder.rstrip('/')} --output OUT{cli}`." if flags else "."))
    card = training_model_card(model_name=name, config=config, command=command, metrics=metrics,
                               dataset="synthetic shapes (sam_hf.training.build_synthetic_dataset)", dataset_ids=["synthetic"],
                               training_steps=int(steps.group(1)) if steps else None, notes=notes,
                               loss=" ".join(loss.group(1).split()) if loss else None, repo_id=folder.rstrip("/"))
    card.save(os.path.join(folder, "README.md"))
    print(f"wrote {os.path.join(folder, 'README.md')}")


if __name__ == "__main__":
    main()
