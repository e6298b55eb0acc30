"""Pictures of results: masks and prompts drawn over the image (PIL only).

    from sam_hf.visualize import overlay
    overlay(image, records).save("everything.png")                      # generator records
    overlay(image, masks[None, best], points=[[500, 375]], labels=[1]).save("prompted.png")

Masks may be (H, W) bool arrays/tensors, a (K, H, W) stack, or generator records (binary, uncompressed
RLE or COCO RLE segmentations). Larger masks are drawn first so that small ones stay visible.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

POSITIVE = (46, 204, 64)  # green
NEGATIVE = (255, 65, 54)  # red
BOX = (0, 116, 217)  # blue


def mask_colors(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) uint8 distinct-looking random colors (seeded, so that pictures are reproducible)."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, 3)) * 200 + 55).astype(np.uint8)


def _as_mask(item: Any, name: str) -> np.ndarray:
    if isinstance(item, dict):
        segmentation = item.get("segmentation", item)
        if isinstance(segmentation, dict):
            if isinstance(segmentation.get("counts"), (str, bytes)):
                from .generation.rle import require_pycocotools

                require_pycocotools()
                from pycocotools import mask as mask_utils

                return mask_utils.decode(segmentation).astype(bool)
            from .generation.rle import rle_to_mask

            return rle_to_mask(segmentation)
        item = segmentation
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    mask = np.asarray(item)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) mask, got shape {mask.shape}")
    return mask.astype(bool)


def _mask_list(masks: Any) -> list[np.ndarray]:
    if masks is None:
        return []
    if isinstance(masks, (np.ndarray, torch.Tensor)) and masks.ndim == 3:
        masks = list(masks)  # (K, H, W) -> K x (H, W)
    elif isinstance(masks, (np.ndarray, torch.Tensor, dict)):
        masks = [masks]
    return [_as_mask(m, f"masks[{i}]") for i, m in enumerate(masks)]


def overlay(
    image,
    masks: Any = None,
    *,
    points: Sequence[Sequence[float]] | np.ndarray | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    boxes: Sequence[Sequence[float]] | np.ndarray | None = None,
    alpha: float = 0.5,
    outline: bool = True,
    seed: int = 0,
) -> Image.Image:
    """The image (any form the processor reads) with colored masks, points (green +, red -) and boxes."""
    from .processing.images import to_rgb_uint8

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    canvas = to_rgb_uint8(image, name="image").astype(np.float32)  # (H, W, 3)
    mask_list = _mask_list(masks)
    order = np.argsort([-int(m.sum()) for m in mask_list], kind="stable")  # largest first
    colors = mask_colors(len(mask_list), seed)
    edges = []
    for rank, i in enumerate(order):
        mask = mask_list[i]
        if mask.shape != canvas.shape[:2]:
            raise ValueError(f"masks[{i}] must have the image's size {canvas.shape[:2]}, got {mask.shape}")
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colors[rank]
        if outline:
            inner = mask.copy()
            inner[1:, :] &= mask[:-1, :]
            inner[:-1, :] &= mask[1:, :]
            inner[:, 1:] &= mask[:, :-1]
            inner[:, :-1] &= mask[:, 1:]
            edges.append(mask & ~inner)
    for edge in edges:
        canvas[edge] = 255.0
    picture = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    return draw_prompts(picture, points=points, labels=labels, boxes=boxes)


def draw_prompts(
    image: Image.Image,
    *,
    points: Sequence[Sequence[float]] | np.ndarray | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    boxes: Sequence[Sequence[float]] | np.ndarray | None = None,
) -> Image.Image:
    """Points as crosses in circles (label 1 green, 0 red; default all 1) and XYXY boxes, on a copy."""
    picture = image.convert("RGB")
    draw = ImageDraw.Draw(picture)
    radius = max(3, round(min(picture.size) / 80))
    if points is not None:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        labels = np.ones(len(points), dtype=int) if labels is None else np.asarray(labels).reshape(-1)
        if len(labels) != len(points):
            raise ValueError(f"labels must hold one label per point ({len(points)}), got {len(labels)}")
        for (x, y), label in zip(points, labels):
            color = POSITIVE if label == 1 else NEGATIVE
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=(255, 255, 255), fill=color, width=1)
    if boxes is not None:
        for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            draw.rectangle([x0, y0, x1, y1], outline=BOX, width=max(2, radius // 2))
    return picture
