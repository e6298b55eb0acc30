"""SamHfImageProcessor: images in, `pixel_values` out, exactly as Meta's SAM prepares them.

Steps (Meta's `SamPredictor.set_image` + `Sam.preprocess`):
1. any supported image -> (H, W, 3) uint8 RGB (see `images.py`);
2. resize the longest side to `longest_edge` with Meta's rounding and PIL's bilinear filter on uint8;
3. normalize in float32 with SAM's pixel mean/std on 0..255 values;
4. pad bottom-right with zeros to (longest_edge, longest_edge).
It also maps masks back (`post_process_masks`) and ground-truth masks forward (`preprocess_masks`).
"""

from __future__ import annotations

import math
from typing import TypedDict

import numpy as np
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from ..generation.pipeline_support import MaskGenerationSupportMixin
from ..real_numbers import is_real
from .images import make_image_list, to_rgb_uint8
from .masks import masks_to_low_res, post_process_masks
from .resize import get_preprocess_shape, resize_uint8_rgb
from .segmentation_maps import segmentation_labels
from .transformers_settings import TRANSFORMERS_KEYS, read_transformers_settings

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)  # Meta's Sam.pixel_mean, on 0..255 values
SAM_PIXEL_STD = (58.395, 57.12, 57.375)  # Meta's Sam.pixel_std
_RETURN_TENSORS = ("pt", "np")
# Keys transformers itself writes into (or passes back from) a saved image-processor config.
_METADATA_KEYS = ("image_processor_type", "processor_class", "feature_extractor_type", "auto_map", "_processor_class")


class SamHfImageProcessorKwargs(TypedDict, total=False):
    """The settings `from_pretrained(..., **overrides)` may change."""

    longest_edge: int
    pixel_mean: list[float]
    pixel_std: list[float]
    mask_input_size: int


def _check_triplet(name: str, value) -> tuple[float, float, float]:
    values = tuple(value.tolist()) if isinstance(value, np.ndarray) else tuple(value) if isinstance(value, (list, tuple)) else None
    if values is None or len(values) != 3 or not all(is_real(v) for v in values):
        raise TypeError(f"{name} must be a list of 3 numbers (R, G, B on 0..255 values), got {value!r}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must hold finite numbers, got {list(values)}")
    return tuple(float(v) for v in values)


def _same_setting(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(a, b))
    return a == b


def normalize_and_pad(
    images: torch.Tensor, *, pad_size: int, pixel_mean=SAM_PIXEL_MEAN, pixel_std=SAM_PIXEL_STD
) -> torch.Tensor:
    """(B, 3, h, w) resized images on 0..255 (any dtype) -> (B, 3, pad_size, pad_size) float32.

    `(x - mean) / std` in float32, then zeros bottom-right: Meta's `Sam.preprocess`, to the bit.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, h, w), got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h > pad_size or w > pad_size:
        raise ValueError(f"images must fit in the padded square {pad_size}x{pad_size}, got (h, w) = ({h}, {w})")
    mean = torch.tensor(pixel_mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    normalized = (images.to(torch.float32) - mean) / std  # (B, 3, h, w)
    return torch.nn.functional.pad(normalized, (0, pad_size - w, 0, pad_size - h))  # (B, 3, S, S)


class SamHfImageProcessor(MaskGenerationSupportMixin, BaseImageProcessor):
    r"""Prepares images for `SamHfModel` the way Meta's `SamPredictor` does.

    Args:
        longest_edge: side of the model's square input (`config.vision_config.image_size`; 1024 for Meta's
            models). Images are resized so their longest side is this, then padded to a square of this side.
        pixel_mean, pixel_std: per-channel normalization on 0..255 values (SAM's by default).
        mask_input_size: the model's low-resolution mask side (`config.prompt_encoder_config.mask_input_size`), for
            `preprocess_masks`; default longest_edge // 4, right for 16-pixel patches (`for_model` sets it).

    Calling it returns a `BatchFeature` with `pixel_values` (B, 3, S, S) float32, `original_sizes` (B, 2)
    and `reshaped_input_sizes` (B, 2) as (H, W) int64.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = SamHfImageProcessorKwargs

    def __init__(
        self,
        *,
        longest_edge: int | None = None,
        pixel_mean: list[float] | tuple[float, ...] | None = None,
        pixel_std: list[float] | tuple[float, ...] | None = None,
        mask_input_size: int | None = None,
        **kwargs,
    ) -> None:
        unknown = sorted(k for k in kwargs if k not in _METADATA_KEYS and k not in TRANSFORMERS_KEYS)
        if unknown:
            raise TypeError(
                f"SamHfImageProcessor got unexpected settings {unknown}; expected longest_edge, pixel_mean, pixel_std, mask_input_size "
                f"(or transformers' SamImageProcessor settings: {sorted(TRANSFORMERS_KEYS)})"
            )
        theirs = {k: kwargs.pop(k) for k in list(kwargs) if k in TRANSFORMERS_KEYS}
        if theirs:  # a transformers-format config (transformers_settings.py): the same settings in its terms
            ours = dict(longest_edge=longest_edge, pixel_mean=pixel_mean, pixel_std=pixel_std, mask_input_size=mask_input_size)
            for name, value in read_transformers_settings(theirs).items():
                if ours[name] is not None and not _same_setting(ours[name], value):
                    raise ValueError(f"{name}={ours[name]!r} and transformers' settings {theirs} disagree (they give {value!r})")
                ours[name] = value
            longest_edge, pixel_mean, pixel_std, mask_input_size = (
                ours["longest_edge"], ours["pixel_mean"], ours["pixel_std"], ours["mask_input_size"])
        longest_edge = 1024 if longest_edge is None else longest_edge
        pixel_mean = SAM_PIXEL_MEAN if pixel_mean is None else pixel_mean
        pixel_std = SAM_PIXEL_STD if pixel_std is None else pixel_std
        metadata = {k: v for k, v in kwargs.items() if k != "image_processor_type"}
        super().__init__(**metadata)
        if isinstance(longest_edge, bool) or not isinstance(longest_edge, int) or longest_edge < 16:
            raise ValueError(f"longest_edge must be an int >= 16 (the model's input side), got {longest_edge!r}")
        self.longest_edge = longest_edge
        if mask_input_size is not None and (isinstance(mask_input_size, bool) or not isinstance(mask_input_size, int)
                                            or mask_input_size < 1 or longest_edge % mask_input_size):
            raise ValueError(f"mask_input_size must be an int that divides longest_edge ({longest_edge}): the model's "
                             f"low-resolution mask side, config.prompt_encoder_config.mask_input_size; got {mask_input_size!r}")
        self.mask_input_size = mask_input_size
        self.pixel_mean = list(_check_triplet("pixel_mean", pixel_mean))
        std = _check_triplet("pixel_std", pixel_std)
        if min(std) <= 0:
            raise ValueError(f"pixel_std must be positive, got {list(std)}")
        self.pixel_std = list(std)

    @property
    def pad_size(self) -> int:
        """Side of the padded square model input."""
        return self.longest_edge

    @property
    def low_res_size(self) -> int:
        """Side of the model's low-resolution mask logits, 4 x its embedding grid: `mask_input_size` where set (the
        processor a model saves sets it), else longest_edge // 4, that of 16-pixel patches (256 for 1024)."""
        return self.longest_edge // 4 if self.mask_input_size is None else self.mask_input_size

    @classmethod
    def for_model(cls, config) -> "SamHfImageProcessor":
        """The processor of a model with this `SamHfConfig`: its input side and its low-resolution mask side."""
        return cls(longest_edge=config.vision_config.image_size, mask_input_size=config.prompt_encoder_config.mask_input_size)

    def get_preprocess_shape(self, height: int, width: int) -> tuple[int, int]:
        """(new_h, new_w) an (height, width) image is resized to before padding."""
        return get_preprocess_shape(height, width, self.longest_edge)

    def resize(self, image: np.ndarray, *, name: str = "images") -> np.ndarray:
        """(H, W, 3) uint8 -> (new_h, new_w, 3) uint8, Meta's `ResizeLongestSide.apply_image`. `name`: the caller's
        argument, for errors."""
        height, width = image.shape[:2]
        new_size = self.get_preprocess_shape(height, width)
        if min(new_size) < 1:
            raise ValueError(
                f"{name}: an image of (H, W) = ({height}, {width}) becomes {new_size} when its longest side "
                f"is resized to {self.longest_edge}: a side of zero pixels; crop or pad it first"
            )
        return resize_uint8_rgb(image, new_size)

    def __call__(self, images, segmentation_maps=None, **kwargs) -> BatchFeature:
        return self.preprocess(images, segmentation_maps, **kwargs)

    def preprocess(self, images, segmentation_maps=None, *, return_tensors: str | None = "pt") -> BatchFeature:
        """One image or a list of images -> pixel_values, original_sizes, reshaped_input_sizes; with
        `segmentation_maps` (one (H, W) map of integer labels per image) also `labels` (B, L, L) int64 in the
        low-resolution frame, as transformers' SamImageProcessor makes them (`segmentation_maps.py`)."""
        return_tensors = _check_return_tensors(return_tensors)
        pixel_values, original_sizes, reshaped_sizes = [], [], []
        for i, image in enumerate(make_image_list(images)):
            rgb = to_rgb_uint8(image, name=f"images[{i}]")  # (H, W, 3) uint8
            resized = self.resize(rgb, name=f"images[{i}]")  # (h, w, 3) uint8
            chw = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)  # (3, h, w)
            padded = normalize_and_pad(
                chw[None], pad_size=self.pad_size, pixel_mean=self.pixel_mean, pixel_std=self.pixel_std
            )  # (1, 3, S, S)
            pixel_values.append(padded)
            original_sizes.append(rgb.shape[:2])
            reshaped_sizes.append(resized.shape[:2])
        data = {
            "pixel_values": torch.cat(pixel_values),  # (B, 3, S, S)
            "original_sizes": torch.tensor(original_sizes, dtype=torch.int64),  # (B, 2)
            "reshaped_input_sizes": torch.tensor(reshaped_sizes, dtype=torch.int64),  # (B, 2)
        }
        if segmentation_maps is not None:
            data["labels"] = self.segmentation_labels(segmentation_maps, count=len(pixel_values))  # (B, L, L)
        if return_tensors == "np":
            data = {k: v.numpy() for k, v in data.items()}
        return BatchFeature(data=data)

    def segmentation_labels(self, segmentation_maps, *, count: int) -> torch.Tensor:
        """`count` maps of integer labels (one (H, W) map, a list, or a (B, H, W) array) -> (count, L, L) int64, L =
        `low_res_size`: transformers' `labels` (nearest neighbour at pixel centres, padded with 0)."""
        return segmentation_labels(segmentation_maps, low_res_size=self.low_res_size, count=count)

    def post_process_masks(
        self,
        masks,
        original_sizes,
        reshaped_input_sizes,
        mask_threshold: float = 0.0,
        binarize: bool = True,
        pad_size: int | None = None,
    ) -> list[torch.Tensor]:
        """Low-res logits (B, P, M, h, w) -> list over images of (P, M, H, W) at the original size.

        Upscale to the padded input (bilinear), crop the padding, resize to the original size (bilinear),
        then `> mask_threshold` when `binarize` (bool masks), else float32 logits. Meta's `postprocess_masks`.
        """
        return post_process_masks(
            masks,
            original_sizes,
            reshaped_input_sizes,
            pad_size=self.pad_size if pad_size is None else pad_size,
            mask_threshold=mask_threshold,
            binarize=binarize,
        )

    def preprocess_masks(self, masks, *, binarize: bool = True, return_tensors: str | None = "pt"):
        """Ground-truth masks in the original frame -> the model's low-res frame, for training.

        `masks`: one array/tensor (K, H, W) or (H, W) (bool, {0, 1} integers or floats in [0, 1]), or a
        list of them (one per image; sizes may differ). Each is resized like its image (longest side to
        `longest_edge`), padded, and area-averaged down to (low_res_size, low_res_size); `binarize`
        thresholds the covered fraction at 0.5. Returns float32 (K, L, L) per image (a list when a list came).
        """
        return_tensors = _check_return_tensors(return_tensors)
        as_list = isinstance(masks, (list, tuple))
        items = list(masks) if as_list else [masks]
        if not items:
            raise ValueError("masks: expected at least one mask array, got an empty list")
        out = [
            masks_to_low_res(
                m, longest_edge=self.longest_edge, low_res_size=self.low_res_size, binarize=binarize,
                name=f"masks[{i}]" if as_list else "masks",
            )
            for i, m in enumerate(items)
        ]
        if return_tensors == "np":
            out = [m.numpy() for m in out]
        return out if as_list else out[0]


def _check_return_tensors(return_tensors) -> str:
    value = getattr(return_tensors, "value", return_tensors)  # transformers' TensorType enum
    if value is None:
        value = "pt"
    if value not in _RETURN_TENSORS:
        raise ValueError(f"return_tensors must be one of {_RETURN_TENSORS}, got {return_tensors!r}")
    return value
