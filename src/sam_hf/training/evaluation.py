"""Held-out quality of a SamHf model on fresh synthetic images: prompted mIoU and segment-everything recall.

`evaluate_prompted` measures single-point mIoU (each instance's most interior pixel, the candidate with
the highest predicted IoU) and box mIoU (tight box) with `evaluate_batch`, at the original resolution.
`evaluate_amg_recall` runs `SamHfAutomaticMaskGenerator` on whole images and counts the ground-truth
objects matched by some generated mask at IoU >= `iou_threshold` (recall); it also reports the fraction
of generated masks that match an object (precision) and the mean number of masks per image.
The images come from `build_synthetic_dataset(num_images, seed, image_size)`: pick a seed that training
did not use (training uses `--synthetic_seed`, its evaluation that seed + 10000).
"""

from __future__ import annotations

import numpy as np
import torch

from .annotations import decode_instance_masks
from .data import SamHfSegmentationCollator
from .loop import evaluate_batch
from .synthetic import build_synthetic_dataset


def synthetic_images(*, num_images: int, seed: int, image_size=(128, 192)):
    """The held-out `datasets.Dataset` (columns image, masks, shapes)."""
    size = image_size if isinstance(image_size, int) else tuple(image_size)
    return build_synthetic_dataset(num_images=num_images, seed=seed, image_size=size)


@torch.no_grad()
def evaluate_prompted(model, processor, data, *, batch_size: int = 16, max_instances: int = 32) -> dict:
    """{"point_miou", "box_miou", "instances"} over every instance of `data` (a synthetic dataset)."""
    model.eval()
    collate = SamHfSegmentationCollator(processor=processor, keep_original_masks=True, max_instances=max_instances)
    totals = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(data), batch_size):
        batch = collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
        totals += evaluate_batch(model, batch, processor=processor).sum(0).cpu()
    count = max(float(totals[2]), 1.0)
    return {"point_miou": float(totals[0]) / count, "box_miou": float(totals[1]) / count, "instances": int(totals[2])}


def _iou_matrix(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(K, H, W) x (M, H, W) bool -> (K, M) IoU."""
    if len(truth) == 0 or len(pred) == 0:
        return np.zeros((len(truth), len(pred)))
    t = torch.from_numpy(truth).flatten(1).float()
    p = torch.from_numpy(pred).flatten(1).float()
    inter = t @ p.T
    union = t.sum(1)[:, None] + p.sum(1)[None] - inter
    return (inter / union.clamp(min=1)).numpy()


@torch.no_grad()
def evaluate_amg_recall(model, processor, data, *, iou_threshold: float = 0.5, **generator_kwargs) -> dict:
    """{"amg_recall", "amg_precision", "amg_masks_per_image", "objects"}: segment everything on each image.

    `generator_kwargs` go to `SamHfAutomaticMaskGenerator` (its defaults otherwise, as the CLI and the
    pipeline use them).
    """
    from ..generation.generator import SamHfAutomaticMaskGenerator

    model.eval()
    generator = SamHfAutomaticMaskGenerator(model, processor, output_mode="binary_mask", **generator_kwargs)
    found = objects = matched = generated = 0
    for example in data:
        image = np.asarray(example["image"].convert("RGB"))
        truth = decode_instance_masks(example["masks"], height=image.shape[0], width=image.shape[1])  # (K, H, W)
        records = generator.generate(image)
        pred = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0,) + image.shape[:2], bool)
        iou = _iou_matrix(truth.astype(bool), pred.astype(bool))
        if iou.size:
            found += int((iou.max(1) >= iou_threshold).sum())
            matched += int((iou.max(0) >= iou_threshold).sum())
        objects += len(truth)
        generated += len(pred)
    return {"amg_recall": found / max(objects, 1), "amg_precision": matched / max(generated, 1),
            "amg_masks_per_image": generated / max(len(data), 1), "objects": objects}
