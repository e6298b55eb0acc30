"""Ground-truth masks to the frames the model sees.

The processor resizes an (H, W) image so that its longest side is the model's `image_size` (Meta's
rounding, `sam_hf.processing.resize.get_preprocess_shape`) and pads it at the bottom and right to a square.
`masks_to_model_frame` does the same to instance masks (the full-resolution training target) and
`valid_region` marks the unpadded part of the model frame. For the low-resolution frame of `pred_masks` and
`input_masks`, use the processor's `preprocess_masks` (`sam_hf.processing.masks_to_low_res`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..processing.resize import get_preprocess_shape


def _as_mask_tensor(masks, name: str) -> torch.Tensor:
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(np.ascontiguousarray(masks))
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"{name} must be a (K, H, W) torch tensor or numpy array, got {type(masks).__name__}")
    if masks.dim() != 3:
        raise ValueError(f"{name} must have shape (K, H, W), got {tuple(masks.shape)}")
    return masks


def masks_to_model_frame(masks, *, image_size: int, threshold: float = 0.5) -> torch.Tensor:
    """Binary masks (K, H, W) -> bool (K, image_size, image_size): resized like the image, padded with 0.

    Resizing is bilinear with antialiasing on the 0/1 values, then thresholded, as the processor's
    `preprocess_masks` does before its area averaging.
    """
    masks = _as_mask_tensor(masks, "masks")
    k, h, w = masks.shape
    new_h, new_w = get_preprocess_shape(h, w, image_size)
    values = masks.float()
    if (new_h, new_w) != (h, w):
        values = F.interpolate(values[:, None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                               antialias=True)[:, 0]  # (K, new_h, new_w)
    out = torch.zeros(k, image_size, image_size, dtype=torch.bool, device=masks.device)
    out[:, :new_h, :new_w] = values > threshold
    return out


def valid_region(original_size: tuple[int, int], *, image_size: int, device=None) -> torch.Tensor:
    """Bool (image_size, image_size): True on the resized image, False on the padding."""
    new_h, new_w = get_preprocess_shape(int(original_size[0]), int(original_size[1]), image_size)
    valid = torch.zeros(image_size, image_size, dtype=torch.bool, device=device)
    valid[:new_h, :new_w] = True
    return valid
