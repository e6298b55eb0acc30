"""Resize so the longest side equals the model input side, and move coordinates along.

The rounding is Meta's `ResizeLongestSide`: `scale = long / max(h, w)`, `new = int(dim * scale + 0.5)`,
and images are resized as uint8 RGB with PIL's bilinear filter (what torchvision does for PIL images).
Coordinates scale per axis by `new / old`, in float64, as Meta's `apply_coords` does.

`ResizeLongestSide` offers Meta's method names so that code written against
`segment_anything.utils.transforms.ResizeLongestSide` (e.g. `predictor.transform.apply_boxes_torch`) runs
unchanged with `SamHfPredictor`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def get_preprocess_shape(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """(new_h, new_w) of an (height, width) image whose longest side is resized to `longest_edge`."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be at least 1x1, got (H, W) = ({height}, {width})")
    scale = longest_edge * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_uint8_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 array to `size` = (new_h, new_w) with PIL's bilinear filter."""
    new_h, new_w = size
    resized = Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)
    return np.array(resized)  # (new_h, new_w, 3) uint8


def scale_coords(coords: np.ndarray, original_size: tuple[int, int], longest_edge: int) -> np.ndarray:
    """x/y coordinates (..., 2) in the original (H, W) frame -> the resized frame, float64."""
    old_h, old_w = original_size
    new_h, new_w = get_preprocess_shape(old_h, old_w, longest_edge)
    coords = np.array(coords, dtype=np.float64, copy=True)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords


class ResizeLongestSide:
    """Meta's `ResizeLongestSide` interface over the functions above (same rounding, same filter)."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        return get_preprocess_shape(oldh, oldw, long_side_length)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (new_h, new_w, 3) uint8."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
            raise ValueError(f"image must be an (H, W, 3) uint8 numpy array, got {got}")
        size = get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return resize_uint8_rgb(image, size)

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 2) x/y in the original (H, W) frame -> the resized frame, float64."""
        return scale_coords(coords, tuple(original_size), self.target_length)

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(K, 4) x0, y0, x1, y1 boxes -> the resized frame, float64."""
        corners = np.asarray(boxes).reshape(-1, 2, 2)  # (K, 2 corners, 2)
        return self.apply_coords(corners, original_size).reshape(-1, 4)  # (K, 4)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        """Torch version of `apply_coords`; returns float32 on the input's device."""
        old_h, old_w = original_size
        new_h, new_w = get_preprocess_shape(old_h, old_w, self.target_length)
        coords = coords.detach().clone().to(torch.float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        """Torch version of `apply_boxes`: (K, 4) -> (K, 4) float32."""
        corners = self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size)  # (K, 2, 2)
        return corners.reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> resized with antialiased bilinear interpolation (Meta: may differ from
        `apply_image` by rounding; `apply_image` is what the model expects)."""
        size = get_preprocess_shape(image.shape[-2], image.shape[-1], self.target_length)
        return F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)
