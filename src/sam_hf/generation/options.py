"""The knobs of automatic mask generation: Meta's names, meanings and defaults, validated once.

`GeneratorOptions` is the single place that checks them; the generator, the pipeline and the command
line all build one. Errors name the argument, the expected form and what was received.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .crops import build_all_layer_point_grids, validate_point_grids

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def _real(name: str, value: Any, low: float | None = None, high: float | None = None, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    above = value >= high if high_open else value > high if high is not None else False
    if not math.isfinite(value) or (low is not None and value < low) or above:
        bounds = f"in [{low}, {high}{')' if high_open else ']'}" if low is not None and high is not None else (
            f">= {low}" if low is not None else "finite")
        raise ValueError(f"{name} must be a number {bounds}, got {value}")
    return value


@dataclass(frozen=True)
class GeneratorOptions:
    """Every knob of Meta's `SamAutomaticMaskGenerator`, plus `mask_threshold` and `multimask_output`."""

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: list | None = None
    min_mask_region_area: float = 0
    output_mode: str = "binary_mask"
    mask_threshold: float = 0.0
    multimask_output: bool = True
    # Built from points_per_side or point_grids: one (K, 2) grid in [0, 1] per crop layer.
    layer_point_grids: list[np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        if (self.points_per_side is None) == (self.point_grids is None):
            raise ValueError(
                "give exactly one of points_per_side and point_grids, got "
                f"points_per_side={self.points_per_side!r} and point_grids={'None' if self.point_grids is None else 'a list'}"
            )
        set_("crop_n_layers", _int("crop_n_layers", self.crop_n_layers, 0))
        set_("crop_n_points_downscale_factor", _int("crop_n_points_downscale_factor", self.crop_n_points_downscale_factor, 1))
        if self.points_per_side is not None:
            set_("points_per_side", _int("points_per_side", self.points_per_side, 1))
            grids = build_all_layer_point_grids(self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor)
        else:
            grids = validate_point_grids(self.point_grids, self.crop_n_layers)
        set_("layer_point_grids", grids)
        set_("points_per_batch", _int("points_per_batch", self.points_per_batch, 1))
        set_("pred_iou_thresh", _real("pred_iou_thresh", self.pred_iou_thresh))
        set_("stability_score_thresh", _real("stability_score_thresh", self.stability_score_thresh, 0.0, 1.0))
        set_("stability_score_offset", _real("stability_score_offset", self.stability_score_offset, 0.0))
        set_("box_nms_thresh", _real("box_nms_thresh", self.box_nms_thresh, 0.0, 1.0))
        set_("crop_nms_thresh", _real("crop_nms_thresh", self.crop_nms_thresh, 0.0, 1.0))
        set_("crop_overlap_ratio", _real("crop_overlap_ratio", self.crop_overlap_ratio, 0.0, 1.0, high_open=True))
        set_("min_mask_region_area", _real("min_mask_region_area", self.min_mask_region_area, 0.0))
        set_("mask_threshold", _real("mask_threshold", self.mask_threshold))
        if self.output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {self.output_mode!r}")
        if not isinstance(self.multimask_output, (bool, np.bool_)):
            raise TypeError(f"multimask_output must be a bool, got {type(self.multimask_output).__name__}")
        if self.output_mode == "coco_rle":
            from .rle import require_pycocotools

            require_pycocotools()
        if self.min_mask_region_area > 0:
            from .filters import require_scipy

            require_scipy()


OPTION_NAMES = tuple(name for name in GeneratorOptions.__dataclass_fields__ if name != "layer_point_grids")
