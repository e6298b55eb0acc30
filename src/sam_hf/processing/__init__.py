"""Processing, in the order data goes through it: images in, prompts, masks out."""

from .image_processing import SAM_PIXEL_MEAN, SAM_PIXEL_STD, SamHfImageProcessor, normalize_and_pad
from .masks import masks_to_low_res, post_process_masks
from .processor import SamHfProcessor
from .prompts import PAD_LABEL, PromptBatch, prepare_prompts
from .resize import ResizeLongestSide, get_preprocess_shape

__all__ = [
    "PAD_LABEL",
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "PromptBatch",
    "ResizeLongestSide",
    "SamHfImageProcessor",
    "SamHfProcessor",
    "get_preprocess_shape",
    "masks_to_low_res",
    "normalize_and_pad",
    "post_process_masks",
    "prepare_prompts",
]
