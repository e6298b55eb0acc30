"""Training utilities: the SAM loss, prompt simulation, metrics, target frames and a synthetic dataset.

`build_synthetic_dataset` needs `datasets` (`pip install sam-hf[training]`); COCO RLE and polygon
annotations need pycocotools. Both are imported only when used.
"""

from .annotations import decode_instance_masks, get_column
from .data import SamHfSegmentationCollator
from .evaluation import evaluate_amg_recall, evaluate_prompted, synthetic_images
from .growth import deepen_vision_encoder, resize_image_size
from .losses import SamHfLoss, SamHfLossOutput, dice_loss, sam_loss, sigmoid_focal_loss
from .loop import PromptSimulationConfig, evaluate_batch, select_prompts, simulated_prompt_step
from .metrics import MeanMetric, dice_score, mask_iou
from .prompts import (
    SimulatedPrompts,
    boxes_from_masks,
    error_points,
    initial_prompts,
    interior_points,
    jitter_boxes,
    refine_prompts,
    sample_points,
)
from .synthetic import build_synthetic_dataset, render_sample
from .targets import masks_to_model_frame, valid_region

__all__ = [
    "PromptSimulationConfig",
    "SamHfSegmentationCollator",
    "MeanMetric",
    "SamHfLoss",
    "SamHfLossOutput",
    "SimulatedPrompts",
    "boxes_from_masks",
    "build_synthetic_dataset",
    "decode_instance_masks",
    "deepen_vision_encoder",
    "dice_loss",
    "dice_score",
    "error_points",
    "evaluate_amg_recall",
    "evaluate_batch",
    "evaluate_prompted",
    "get_column",
    "initial_prompts",
    "interior_points",
    "jitter_boxes",
    "mask_iou",
    "masks_to_model_frame",
    "refine_prompts",
    "render_sample",
    "resize_image_size",
    "sam_loss",
    "sample_points",
    "select_prompts",
    "sigmoid_focal_loss",
    "simulated_prompt_step",
    "synthetic_images",
    "valid_region",
]
