"""Any supported image -> an (H, W, 3) uint8 RGB array, which is what Meta's SAM takes.

Accepted, and how each is read (nothing is clipped or guessed from the values):
- PIL images of any mode. RGB as is; "1", "L", "P" (palette), "RGBA", "LA", "PA", "CMYK", "YCbCr" through
  PIL's own `convert("RGB")` (alpha is dropped, not composited); 16-bit modes ("I;16*", and "I" whose values
  must lie in 0..65535) as 16-bit gray; "F" as float gray in [0, 1].
- numpy arrays, channels last: (H, W), (H, W, 1) gray, (H, W, 3) RGB, (H, W, 4) RGBA (alpha dropped);
  (B, H, W, C) is a batch.
- torch tensors, channels first: (H, W), (1, H, W), (3, H, W), (4, H, W); (B, C, H, W) is a batch.
Value types: uint8 as is; uint16 scaled to 0..255 by round(v * 255 / 65535); bool as 0 / 255;
float in [0, 1] scaled by round(v * 255) (values outside [0, 1] or not finite raise); other integer
types raise (convert them to uint8 yourself, so that the range is your decision).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

_PIL_VIA_CONVERT = ("1", "L", "P", "RGBA", "LA", "PA", "La", "RGBa", "RGBX", "CMYK", "YCbCr")
_PIL_16BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def native_byte_order(array: np.ndarray) -> np.ndarray:
    """`array` with the same values in this machine's byte order (a big-endian '>u2' array read from a file, say)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _describe(value) -> str:
    if isinstance(value, Image.Image):
        return f"PIL image mode {value.mode!r} size {value.size}"
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


def _to_uint8(values: np.ndarray, name: str) -> np.ndarray:
    """Any accepted value type -> uint8 with the same shape (documented scaling, no clipping)."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if values.dtype == np.uint16:
        # round(v * 255 / 65535), exact in integers: 0 -> 0, 65535 -> 255, 257 * k -> k.
        return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"{name}: float images must be finite, got NaN or inf values")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{name}: float images must hold values in [0, 1], got values in [{low}, {high}]; "
                "pass uint8 (0..255) or divide by the maximum yourself"
            )
        return np.floor(values * 255.0 + 0.5).astype(np.uint8)
    raise TypeError(
        f"{name}: image values must be uint8, uint16, bool or float in [0, 1], got dtype {values.dtype}; "
        "convert to uint8 (0..255) first"
    )


def _channels_last_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """(H, W) | (H, W, 1|3|4) of any accepted dtype -> (H, W, 3) uint8."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]  # (H, W)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)  # (H, W, 3)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]  # (H, W, 3), alpha dropped
    elif not (array.ndim == 3 and array.shape[2] == 3):
        raise ValueError(
            f"{name}: expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) "
            f"(torch tensors: (C, H, W)), got shape {tuple(array.shape)}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: image is empty, got (H, W) = ({array.shape[0]}, {array.shape[1]})")
    return np.ascontiguousarray(_to_uint8(array, name))


def _pil_to_array(image: Image.Image, name: str) -> np.ndarray:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{name}: image is empty, got (H, W) = ({image.height}, {image.width})")
    if image.mode == "RGB":
        return np.asarray(image)
    if image.mode == "La":  # luminance premultiplied by alpha: PIL converts it to "LA" only
        image = image.convert("LA")
    if image.mode in _PIL_VIA_CONVERT:
        return np.asarray(image.convert("RGB"))
    if image.mode in _PIL_16BIT:
        gray = np.asarray(image).astype(np.int64)  # (H, W)
        if gray.min() < 0 or gray.max() > 65535:
            raise ValueError(
                f"{name}: PIL mode {image.mode!r} is read as 16-bit gray and needs values in 0..65535, "
                f"got values in [{gray.min()}, {gray.max()}]"
            )
        return gray.astype(np.uint16)
    if image.mode == "F":
        return np.asarray(image)  # (H, W) float32, must lie in [0, 1]
    raise ValueError(f"{name}: PIL image mode {image.mode!r} is not supported; convert it to 'RGB' first")


def to_rgb_uint8(image, name: str = "images") -> np.ndarray:
    """One image (PIL, numpy channels last, torch channels first) -> (H, W, 3) uint8 RGB."""
    if isinstance(image, Image.Image):
        array = _pil_to_array(image, name)
    elif isinstance(image, np.ndarray):
        array = native_byte_order(image)
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        if tensor.ndim == 3:
            if tensor.shape[0] not in (1, 3, 4):
                raise ValueError(
                    f"{name}: torch images are channels first, (C, H, W) with C in (1, 3, 4), "
                    f"got shape {tuple(tensor.shape)}"
                )
            tensor = tensor.permute(1, 2, 0)  # (H, W, C)
        elif tensor.ndim != 2:
            raise ValueError(f"{name}: expected a torch image of shape (H, W) or (C, H, W), got {tuple(tensor.shape)}")
        array = tensor.numpy()
    else:
        raise TypeError(f"{name}: expected a PIL image, numpy array or torch tensor, got {_describe(image)}")
    return _channels_last_to_rgb(array, name)


def make_image_list(images, name: str = "images") -> list:
    """A single image, a batch array/tensor or a list of images -> a non-empty list of single images."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)  # (B, H, W, C) -> B x (H, W, C)
    elif isinstance(images, torch.Tensor) and images.ndim == 4:
        images = list(images.unbind(0))  # (B, C, H, W) -> B x (C, H, W)
    elif isinstance(images, (Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        images = list(images)
    else:
        raise TypeError(f"{name}: expected an image or a list of images, got {_describe(images)}")
    if not images:
        raise ValueError(f"{name}: expected at least one image, got an empty {type(images).__name__}")
    for i, image in enumerate(images):
        if not isinstance(image, (Image.Image, np.ndarray, torch.Tensor)):
            raise TypeError(f"{name}[{i}]: expected a PIL image, numpy array or torch tensor, got {_describe(image)}")
    return images
