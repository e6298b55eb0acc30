"""SamHfProcessor: images and prompts in the original frame -> model inputs; masks back out."""

from __future__ import annotations

import numpy as np
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing import SamHfImageProcessor, _check_return_tensors
from .masks import _sizes
from .prompts import prepare_prompts


class SamHfProcessor(ProcessorMixin):
    r"""Wraps a `SamHfImageProcessor` and scales/pads point and box prompts.

    `processor(images, input_points=..., input_labels=..., input_boxes=...)` returns a `BatchFeature` with
    - `pixel_values` (B, 3, S, S), `original_sizes` (B, 2), `reshaped_input_sizes` (B, 2);
    - `input_points` (B, P, N, 2) float32 and `input_labels` (B, P, N) int64 when points are given
      (labels default to 1; padded point slots hold (0, 0) and label -10);
    - `input_boxes` (B, P, 4) float32 when boxes are given;
    - `prompt_mask` (B, P) bool when any prompt is given: False marks a prompt added only to pad images with
      fewer prompts to a common P. Its outputs are meaningless; drop them, e.g. `masks[i][prompt_mask[i]]`.
    Coordinates come in the original image frame (x, y in pixels) and go out in the model-input frame.
    Without `images`, pass `original_sizes` ((B, 2) as (H, W)) to process prompts alone.
    """

    attributes = ["image_processor"]

    def __init__(self, image_processor: SamHfImageProcessor | None = None, **kwargs) -> None:
        if image_processor is None:
            image_processor = SamHfImageProcessor()
        if not isinstance(image_processor, SamHfImageProcessor):
            raise TypeError(
                f"image_processor must be a SamHfImageProcessor, got {type(image_processor).__name__}"
            )
        super().__init__(image_processor, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "SamHfProcessor":
        """A saved sam_hf processor, or a transformers `SamProcessor` folder (`facebook/sam-vit-*`): its image
        processor's settings are read as sam_hf's (`transformers_settings.py`). Hub arguments as transformers'."""
        return cls(image_processor=SamHfImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs))

    @property
    def longest_edge(self) -> int:
        return self.image_processor.longest_edge

    def __call__(
        self,
        images=None,
        input_points=None,
        input_labels=None,
        input_boxes=None,
        *,
        segmentation_maps=None,
        original_sizes=None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        if kwargs:
            raise TypeError(
                f"SamHfProcessor got unexpected arguments {sorted(kwargs)}; expected images, input_points, "
                "input_labels, input_boxes, segmentation_maps, original_sizes, return_tensors"
            )
        return_tensors = _check_return_tensors(return_tensors)
        if images is not None:
            if original_sizes is not None:
                raise ValueError("pass either images or original_sizes, not both: sizes are read from the images")
            data = dict(self.image_processor(images, return_tensors="pt"))
            sizes = [tuple(s) for s in data["original_sizes"].tolist()]
        elif original_sizes is not None:
            count = len(original_sizes) if hasattr(original_sizes, "__len__") else -1
            sizes = _sizes(original_sizes, "original_sizes", count)
            for i, (h, w) in enumerate(sizes):
                if min(self.image_processor.get_preprocess_shape(h, w)) < 1:
                    raise ValueError(f"original_sizes[{i}] = ({h}, {w}) has a side of zero pixels once its longest side is "
                                     f"resized to {self.longest_edge}, as images of that size are refused")
            data = {
                "original_sizes": torch.tensor(sizes, dtype=torch.int64),  # (B, 2)
                "reshaped_input_sizes": torch.tensor(
                    [self.image_processor.get_preprocess_shape(h, w) for h, w in sizes], dtype=torch.int64
                ),  # (B, 2)
            }
        else:
            raise ValueError("images (or original_sizes, to process prompts alone) must be given, got neither")

        if segmentation_maps is not None:  # one map of integer labels per image -> labels (B, L, L) int64
            data["labels"] = self.image_processor.segmentation_labels(segmentation_maps, count=len(sizes))
        prompts = prepare_prompts(
            sizes,
            longest_edge=self.longest_edge,
            input_points=input_points,
            input_labels=input_labels,
            input_boxes=input_boxes,
        )
        if prompts is not None:
            for key in ("input_points", "input_labels", "input_boxes", "prompt_mask"):
                value = getattr(prompts, key)
                if value is not None:
                    data[key] = torch.from_numpy(value)
        if return_tensors == "np":
            data = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in data.items()}
        return BatchFeature(data=data)

    def post_process_masks(
        self,
        masks,
        original_sizes,
        reshaped_input_sizes,
        mask_threshold: float = 0.0,
        binarize: bool = True,
        pad_size: int | None = None,
    ) -> list[torch.Tensor]:
        """Low-res logits (B, P, M, L, L) -> list over images of (P, M, H, W); see the image processor."""
        return self.image_processor.post_process_masks(
            masks, original_sizes, reshaped_input_sizes,
            mask_threshold=mask_threshold, binarize=binarize, pad_size=pad_size,
        )

    def preprocess_masks(self, masks, *, binarize: bool = True, return_tensors: str | None = "pt"):
        """Ground-truth masks in the original frame -> the low-res frame; see the image processor."""
        return self.image_processor.preprocess_masks(masks, binarize=binarize, return_tensors=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "original_sizes", "reshaped_input_sizes", "input_points", "input_labels", "input_boxes"]
