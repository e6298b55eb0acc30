"""Instance masks as datasets store them -> one bool array (K, H, W).

Accepted forms of one image's annotation (a dataset cell):
- a list of binary mask images (PIL or arrays (H, W); any non-zero value is foreground);
- a list of COCO RLE dicts `{"size": [H, W], "counts": str | bytes | list}` (compressed or not);
- a list of COCO polygons, one per instance: a list of flat [x0, y0, x1, y1, ...] rings (or one flat list);
- one instance-id image (PIL or array (H, W)): 0 is background, every other value one instance.
RLE and polygons are decoded with pycocotools (`pip install sam-hf[coco]`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _pycocotools_mask():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("COCO RLE and polygon masks need pycocotools: pip install sam-hf[coco]") from error
    return mask_utils


def _is_image(value) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image) or (isinstance(value, np.ndarray) and value.ndim == 2)


def _is_number_list(value) -> bool:
    return isinstance(value, Sequence) and len(value) > 0 and all(isinstance(v, (int, float)) for v in value)


def _decode_rle(rle: Mapping, height: int, width: int) -> np.ndarray:
    mask_utils = _pycocotools_mask()
    counts = rle["counts"]
    size = [int(s) for s in rle["size"]]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if isinstance(counts, list):
        encoded = mask_utils.frPyObjects({"size": size, "counts": counts}, size[0], size[1])
    else:
        encoded = {"size": size, "counts": counts}
    mask = mask_utils.decode(encoded).astype(bool)
    if mask.shape != (height, width):
        raise ValueError(f"RLE size {tuple(mask.shape)} does not match the image (H, W) = {(height, width)}")
    return mask


def _decode_polygons(polygons, height: int, width: int) -> np.ndarray:
    mask_utils = _pycocotools_mask()
    rings = [polygons] if _is_number_list(polygons) else list(polygons)
    rings = [[float(v) for v in ring] for ring in rings if len(ring) >= 6]
    if not rings:
        return np.zeros((height, width), dtype=bool)
    encoded = mask_utils.frPyObjects(rings, height, width)
    return mask_utils.decode(mask_utils.merge(encoded)).astype(bool)


def decode_instance_masks(value, *, height: int, width: int) -> np.ndarray:
    """One image's instance annotation (any form above) -> bool (K, H, W); K may be 0."""
    if _is_image(value):  # an instance-id map
        ids = np.asarray(value)
        if ids.ndim == 3:
            raise ValueError("an instance-id map must be a single-channel image (H, W), got a color image")
        if ids.shape != (height, width):
            raise ValueError(f"instance-id map (H, W) = {ids.shape} does not match the image {(height, width)}")
        values = np.unique(ids)
        values = values[values != 0]
        return ids[None] == values[:, None, None] if len(values) else np.zeros((0, height, width), dtype=bool)
    if isinstance(value, Mapping) and "counts" not in value:
        raise TypeError(f"masks: a dict must be a COCO RLE with 'size' and 'counts', got keys {sorted(value)}")
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise TypeError(f"masks: expected a list of masks, RLEs or polygons, or an id image, got {type(value).__name__}")
    masks = []
    for i, item in enumerate(value):
        if _is_image(item):
            mask = np.asarray(item)
            if mask.ndim == 3:
                mask = mask[..., 0]
            mask = mask != 0
        elif isinstance(item, Mapping) and "counts" in item:
            mask = _decode_rle(item, height, width)
        elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)):
            mask = _decode_polygons(item, height, width)
        else:
            raise TypeError(f"masks[{i}]: expected a mask image, an RLE dict or a polygon list, got {type(item).__name__}")
        if mask.shape != (height, width):
            raise ValueError(f"masks[{i}] has (H, W) = {mask.shape}, the image has {(height, width)}")
        masks.append(mask)
    return np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)


def get_column(example: Mapping, name: str):
    """`example[name]`, where a dotted name reaches into nested columns ("objects.segmentation")."""
    value = example
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"column {name!r} not found (missing {part!r}); available: {sorted(example)}")
        value = value[part]
    return value
