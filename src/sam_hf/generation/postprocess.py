"""After generation: small-region clean-up (then NMS again) and Meta's output records."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .filters import batched_mask_to_box, box_xyxy_to_xywh, remove_small_regions
from .mask_data import MaskData
from .nms import batched_nms
from .rle import area_from_rle, coco_encode_rle, mask_to_rle, rle_to_mask


def postprocess_small_regions(mask_data: MaskData, min_area: float, nms_thresh: float) -> MaskData:
    """Fill holes and drop islands smaller than `min_area` pixels in every mask, then NMS again.

    Masks that needed no change are preferred by the NMS (score 1 against 0). Boxes and RLEs of changed
    masks are recomputed. One full-size mask is decoded at a time. Edits `mask_data` (host arrays) in place.
    """
    rles = mask_data["rles"]
    if len(rles) == 0:
        return mask_data
    boxes, unchanged, new_rles = [], [], {}
    for i, rle in enumerate(rles):
        mask, holes_changed = remove_small_regions(rle_to_mask(rle), min_area, mode="holes")
        mask, islands_changed = remove_small_regions(mask, min_area, mode="islands")
        mask_t = torch.from_numpy(np.ascontiguousarray(mask))[None]  # (1, H, W)
        boxes.append(batched_mask_to_box(mask_t))
        changed = holes_changed or islands_changed
        unchanged.append(0.0 if changed else 1.0)
        if changed:
            new_rles[i] = mask_to_rle(mask_t)[0]
    boxes = torch.cat(boxes)  # (N, 4)
    scores = torch.tensor(unchanged)
    keep = batched_nms(boxes.float(), scores, torch.zeros(len(rles)), iou_threshold=nms_thresh)
    for i in keep.tolist():
        if i in new_rles:
            rles[i] = new_rles[i]
            mask_data["boxes"][i] = boxes[i].numpy()
    return mask_data.filter(keep)


def encode_segmentations(rles: list[dict[str, Any]], output_mode: str) -> list[Any]:
    """RLEs -> the `segmentation` of each record: (H, W) bool arrays, uncompressed or COCO RLEs."""
    if output_mode == "binary_mask":
        return [rle_to_mask(rle) for rle in rles]
    if output_mode == "coco_rle":
        return [coco_encode_rle(rle) for rle in rles]
    return rles


def to_records(mask_data: MaskData, output_mode: str) -> list[dict[str, Any]]:
    """Meta's records: segmentation, area, bbox (XYWH), predicted_iou, point_coords, stability_score, crop_box (XYWH)."""
    segmentations = encode_segmentations(mask_data["rles"], output_mode)
    records = []
    for i, segmentation in enumerate(segmentations):
        records.append(
            {
                "segmentation": segmentation,
                "area": area_from_rle(mask_data["rles"][i]),
                "bbox": box_xyxy_to_xywh(mask_data["boxes"][i]).tolist(),
                "predicted_iou": float(mask_data["iou_preds"][i]),
                "point_coords": [mask_data["points"][i].tolist()],
                "stability_score": float(mask_data["stability_score"][i]),
                "crop_box": box_xyxy_to_xywh(mask_data["crop_boxes"][i]).tolist(),
            }
        )
    return records
