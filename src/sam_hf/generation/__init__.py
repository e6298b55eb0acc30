"""Automatic mask generation ("segment everything"): the generator and its parts.

- generator.py   SamHfAutomaticMaskGenerator (Meta's algorithm and knobs)
- options.py     the knobs, validated once (GeneratorOptions)
- crops.py       crop boxes, point grids, crop -> image maps
- filters.py     stability score, boxes from masks, crop-edge filter, small regions
- nms.py         pure-torch NMS / batched NMS with torchvision's semantics
- rle.py         uncompressed RLE on the device, decode, area, COCO RLE (pycocotools)
- upscale.py     masks at image size only inside the box where they can pass a threshold (CPU)
- mask_data.py   MaskData, the per-mask record container
- postprocess.py small-region clean-up and Meta's output records
- pipeline_support.py  the image-processor methods transformers' stock pipeline calls
"""

from .generator import SamHfAutomaticMaskGenerator
from .mask_data import MaskData
from .nms import batched_nms, nms
from .options import GeneratorOptions
from .pipeline_support import MaskGenerationSupportMixin
from .rle import area_from_rle, coco_encode_rle, mask_to_rle, rle_to_mask

__all__ = [
    "GeneratorOptions",
    "MaskData",
    "MaskGenerationSupportMixin",
    "SamHfAutomaticMaskGenerator",
    "area_from_rle",
    "batched_nms",
    "coco_encode_rle",
    "mask_to_rle",
    "nms",
    "rle_to_mask",
]
