"""What transformers' stock `MaskGenerationPipeline` asks of an image processor, without torchvision.

transformers 5's `pipeline("mask-generation")` calls, on the image processor: `size["longest_edge"]`,
`generate_crop_boxes` (crops, grid points in the model-input frame, labels), `post_process_masks`
(ours already has it), `filter_masks` (per batch of points) and `post_process_for_mask_generation` (the
final NMS; transformers' own version imports torchvision for it). `MaskGenerationSupportMixin` provides
them with sam_hf's pure-torch crops, filters, RLE and NMS, with Meta's semantics where transformers'
differ (stability kept at `>=` the threshold, as Meta's generator does). It is mixed into
`SamHfImageProcessor`; the host class must provide `longest_edge`.

The stock pipeline does one NMS across everything by predicted IoU, with no NMS within a crop and no
small-region clean-up: for Meta's full algorithm use `SamHfMaskGenerationPipeline` or the generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..processing.thresholds import greater
from .crops import build_all_layer_point_grids, generate_crop_boxes
from .filters import batched_mask_to_box, is_box_near_crop_edge, stability_score
from .nms import batched_nms
from .rle import boundaries_to_rles, rle_to_mask, run_boundaries


class MaskGenerationSupportMixin:
    """Methods of transformers' SAM image processor used by the stock mask-generation pipeline."""

    @property
    def size(self) -> dict[str, int]:
        """transformers' size dict: the pipeline reads `size["longest_edge"]`."""
        return {"longest_edge": int(self.longest_edge)}

    def generate_crop_boxes(
        self,
        image,
        target_size: int,
        crop_n_layers: int = 0,
        overlap_ratio: float = 512 / 1500,
        points_per_crop: int | None = 32,
        crop_n_points_downscale_factor: int = 1,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray], torch.Tensor]:
        """Crops of `image` and their grid points, as transformers lays them out.

        Returns `crop_boxes` (n_crops, 4) float32 XYXY, `points` (1, K, n_crops, 2) float64 in each crop's
        model-input frame, the cropped (h, w, 3) uint8 images, and `labels` (1, K, n_crops) int64 ones.
        """
        from ..processing.images import to_rgb_uint8
        from ..processing.resize import get_preprocess_shape

        rgb = to_rgb_uint8(image, name="image")  # (H, W, 3)
        grids = build_all_layer_point_grids(points_per_crop, crop_n_layers, crop_n_points_downscale_factor)
        if len({len(g) for g in grids}) > 1:
            raise ValueError(
                "crop_n_points_downscale_factor must be 1 with the stock mask-generation pipeline (it stacks one "
                f"grid per crop), got {crop_n_points_downscale_factor}; use sam_hf.SamHfMaskGenerationPipeline"
            )
        boxes, layers = generate_crop_boxes(rgb.shape[:2], crop_n_layers, overlap_ratio)
        crops, points = [], []
        for (x0, y0, x1, y1), layer in zip(boxes, layers):
            crop = rgb[y0:y1, x0:x1]  # (h, w, 3)
            h, w = crop.shape[:2]
            new_h, new_w = get_preprocess_shape(h, w, int(target_size))
            pixels = grids[layer] * np.array([w, h], dtype=np.float64)  # (K, 2) in the crop
            points.append(pixels * np.array([new_w / w, new_h / h]))  # (K, 2) in the model-input frame
            crops.append(crop)
        points = torch.from_numpy(np.stack(points, axis=1)[None]).to(device or "cpu")  # (1, K, n_crops, 2)
        labels = torch.ones(points.shape[:3], dtype=torch.int64, device=points.device)  # (1, K, n_crops)
        crop_boxes = torch.tensor(boxes, dtype=torch.float32, device=points.device)  # (n_crops, 4)
        return crop_boxes, points, crops, labels

    def filter_masks(
        self,
        masks: torch.Tensor,
        iou_scores: torch.Tensor,
        original_size,
        cropped_box_image,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        mask_threshold: float = 0.0,
        stability_score_offset: float = 1.0,
    ) -> tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor]:
        """Meta's per-batch filters on upscaled logits (P, M, h, w) of one crop.

        Returns the survivors' uncompressed RLEs in the full image frame, their scores and their XYXY
        boxes (image frame, int64). The RLEs' `counts` are int64 numpy arrays: the pipeline passes each batch's
        outputs through `_ensure_tensor_on_device`, which walks Python lists item by item (about 0.5 s for the
        RLEs of a 32 x 32 grid); `post_process_for_mask_generation` returns them as lists, Meta's form.
        """
        height, width = (int(v) for v in original_size)
        crop_box = [int(v) for v in torch.as_tensor(cropped_box_image).tolist()]
        iou_scores = iou_scores.flatten(0, 1).to(masks.device)  # (P * M,)
        masks = masks.flatten(0, 1)  # (P * M, h, w)
        if masks.shape[0] != iou_scores.shape[0]:
            raise ValueError(f"masks and iou_scores must hold as many masks, got {masks.shape[0]} and {iou_scores.shape[0]}")
        # by predicted IoU first, then the stability scores (two passes over each mask) of the masks it keeps, each
        # mask read in place: copying the survivors' float logits cost more than the filters (about 45 ms per 40)
        kept = torch.arange(len(iou_scores), device=iou_scores.device)
        if pred_iou_thresh > 0.0:
            kept = kept[iou_scores > pred_iou_thresh]
        if stability_score_thresh > 0.0 and len(kept) > 0:
            stability = torch.stack([stability_score(masks[i], mask_threshold, stability_score_offset) for i in kept.tolist()])
            kept = kept[stability >= stability_score_thresh]
        scores = iou_scores[kept]  # (n,)
        binary = [greater(masks[i], mask_threshold) for i in kept.tolist()]
        binary = torch.stack(binary) if binary else masks.new_zeros((0, *masks.shape[-2:]), dtype=torch.bool)  # (n, h, w)
        boxes = batched_mask_to_box(binary)  # (n, 4) crop frame
        inner = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, width, height])
        scores, binary, boxes = scores[inner], binary[inner], boxes[inner]
        boundaries, per_mask = run_boundaries(binary, (height, width), offset=(crop_box[0], crop_box[1]))
        rles = boundaries_to_rles(boundaries, per_mask, (height, width), counts_as_arrays=True)
        offset = torch.tensor([crop_box[0], crop_box[1]] * 2, device=boxes.device)
        return rles, scores, boxes + offset

    def post_process_for_mask_generation(self, all_masks, all_scores, all_boxes, crops_nms_thresh):
        """NMS (pure torch) over every mask; returns (binary masks, scores, RLEs, boxes) of the kept."""
        keep = batched_nms(all_boxes.float(), all_scores, torch.zeros(len(all_scores), device=all_scores.device), crops_nms_thresh)
        # Meta's form (lists) for the kept: filter_masks leaves the counts as arrays
        rles = [{"size": list(all_masks[i]["size"]), "counts": np.asarray(all_masks[i]["counts"]).tolist()}
                for i in keep.tolist()]
        return [rle_to_mask(rle) for rle in rles], all_scores[keep], rles, all_boxes[keep]
