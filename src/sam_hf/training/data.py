"""Dataset rows -> training batches: images through the processor, instance masks to the model frame."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .annotations import decode_instance_masks, get_column
from .targets import masks_to_model_frame


class SamHfSegmentationCollator:
    """Collate rows with an image column and one or more instance-mask columns into a batch.

    The batch has the processor's `pixel_values` (B, 3, S, S), `original_sizes` and `reshaped_input_sizes`
    (B, 2), and `gt_masks` (B, K, S, S) bool in the model-input frame with `gt_valid` (B, K) bool (K is the
    largest instance count of the batch; missing instances are empty and invalid). Instances that vanish
    when resized (fewer than `min_area` pixels in the model frame) are dropped; at most `max_instances`
    are kept per image, the largest first. `keep_original_masks=True` adds `original_masks`, a list of
    (K_i, H_i, W_i) bool tensors, for evaluation at the original resolution.
    """

    def __init__(
        self,
        *,
        processor,
        image_column: str = "image",
        mask_columns: Sequence[str] = ("masks",),
        max_instances: int = 32,
        min_area: int = 1,
        keep_original_masks: bool = False,
    ) -> None:
        if isinstance(mask_columns, str):
            mask_columns = [mask_columns]
        if not mask_columns:
            raise ValueError("mask_columns must name at least one column, got none")
        if max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances}")
        self.processor = processor
        self.image_column = image_column
        self.mask_columns = list(mask_columns)
        self.max_instances = int(max_instances)
        self.min_area = int(min_area)
        self.keep_original_masks = bool(keep_original_masks)

    def _masks(self, example, height: int, width: int) -> np.ndarray:
        parts = [decode_instance_masks(get_column(example, column), height=height, width=width)
                 for column in self.mask_columns]
        return np.concatenate(parts) if parts else np.zeros((0, height, width), dtype=bool)

    def __call__(self, examples: list[dict]) -> dict:
        images = [get_column(example, self.image_column) for example in examples]
        images = [image.convert("RGB") if hasattr(image, "convert") else image for image in images]
        batch = dict(self.processor(images=images, return_tensors="pt"))
        size = batch["pixel_values"].shape[-1]
        frames, originals = [], []
        for example, (height, width) in zip(examples, batch["original_sizes"].tolist()):
            masks = torch.from_numpy(self._masks(example, height, width))  # (K, H, W) bool
            frame = masks_to_model_frame(masks, image_size=size)  # (K, S, S)
            areas = frame.flatten(1).sum(1)
            keep = (areas >= self.min_area).nonzero().flatten()
            keep = keep[areas[keep].argsort(descending=True, stable=True)][: self.max_instances]
            frames.append(frame[keep])
            originals.append(masks[keep])
        k = max(1, max(len(f) for f in frames))
        gt = torch.zeros(len(examples), k, size, size, dtype=torch.bool)
        valid = torch.zeros(len(examples), k, dtype=torch.bool)
        for i, frame in enumerate(frames):
            gt[i, : len(frame)] = frame
            valid[i, : len(frame)] = True
        batch["gt_masks"] = gt  # (B, K, S, S)
        batch["gt_valid"] = valid  # (B, K)
        if self.keep_original_masks:
            batch["original_masks"] = originals
        return batch
