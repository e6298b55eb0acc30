"""Ground-truth segmentation maps -> `labels` in the model's low-resolution frame, as transformers' `SamProcessor`
gives them (`processor(images, segmentation_maps=...)`, for fine-tuning code written against it).

Each (H, W) map of integer labels is resized so that its longest side is the low-resolution side L (4g: 256 for
Meta's models), with Meta's rounding of the other side (as for the images), by nearest neighbour at pixel centres:
output pixel i reads input pixel floor((i + 0.5) * in / out) as PIL's NEAREST computes it (transformers' PIL backend;
its torchvision backend takes NEAREST_EXACT, the same rule in float32, which can pick the neighbouring input pixel
where that value is a whole number). It is then padded with 0 at the bottom and right to (L, L), as int64. Label values
pass through unchanged. For binary masks, `SamHfImageProcessor.preprocess_masks` gives instead the fraction of
each low-resolution pixel that a mask covers, resized like the image.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .images import native_byte_order
from .resize import get_preprocess_shape


def _label_map(value, name: str) -> np.ndarray:
    """One map as a 2-D numpy array of bool or integer labels."""
    if isinstance(value, Image.Image):
        value = np.array(value)  # "L", "P" (palette indices), "I", "1"
    elif isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, torch tensor or PIL image of shape (H, W), got {type(value).__name__}")
    if value.ndim != 2:
        raise ValueError(f"{name} must have shape (H, W), got {value.shape}")
    if value.shape[0] == 0 or value.shape[1] == 0:
        raise ValueError(f"{name} is empty: (H, W) = {value.shape}")
    if value.dtype.kind not in "biu":
        raise TypeError(f"{name} must hold bool or integer labels, got dtype {value.dtype} (for soft masks in [0, 1], "
                        "use preprocess_masks)")
    if value.dtype == np.uint64 and int(value.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: labels must fit in int64 (the labels' dtype), got {int(value.max())}")
    return native_byte_order(value)


def _nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """For each output pixel i, the input pixel at its centre, (i + 0.5) * in / out rounded down, computed as PIL's
    NEAREST resize computes it: s / 2 + s + s + ... (s = in / out) summed one step at a time in float64. Where the
    exact value is a whole number, that sum can fall just below it (28 -> 91 pixels: output 45 reads input 4, not 5)."""
    step = size_in / size_out
    centres = np.cumsum(np.concatenate([[step * 0.5], np.full(size_out - 1, step)]))  # sequential float64 additions
    return np.minimum(centres.astype(np.int64), size_in - 1)


def segmentation_labels(maps, *, low_res_size: int, count: int) -> torch.Tensor:
    """`count` maps (one (H, W) map, a list of them or a (B, H, W) array/tensor; one per image) -> labels
    (count, L, L) int64, L = low_res_size (see the module's notes)."""
    if isinstance(maps, (list, tuple)):
        items, names = list(maps), [f"segmentation_maps[{i}]" for i in range(len(maps))]
        came = f"a {type(maps).__name__} of {len(items)}"
    elif isinstance(maps, (np.ndarray, torch.Tensor)) and maps.ndim == 3:
        items, names = list(maps), [f"segmentation_maps[{i}]" for i in range(maps.shape[0])]
        came = f"an array of shape {tuple(maps.shape)}, read as (B, H, W)"
    else:
        items, names = [maps], ["segmentation_maps"]
        came = "one"
    if len(items) != count:
        raise ValueError(f"segmentation_maps must hold one (H, W) map per image: {count} images, got {len(items)} maps "
                         f"({came})")
    labels = torch.zeros(count, low_res_size, low_res_size, dtype=torch.int64)
    for k, (item, name) in enumerate(zip(items, names)):
        label_map = _label_map(item, name)
        height, width = label_map.shape
        new_h, new_w = get_preprocess_shape(height, width, low_res_size)
        if min(new_h, new_w) < 1:
            raise ValueError(f"{name}: a map of (H, W) = ({height}, {width}) has a side of zero pixels once its longest side "
                             f"is resized to {low_res_size}")
        rows, columns = _nearest_indices(height, new_h), _nearest_indices(width, new_w)
        labels[k, :new_h, :new_w] = torch.from_numpy(label_map[rows[:, None], columns[None, :]].astype(np.int64))
    return labels
