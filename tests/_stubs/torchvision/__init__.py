"""Test-only stand-in for the few torchvision functions Meta's `segment_anything` imports.

torchvision has no CPU build here. The compared code stays Meta's own: this module only supplies
`transforms.functional.resize` / `to_pil_image` (PIL bilinear, what torchvision does for PIL images)
and `ops.boxes.batched_nms` / `box_area` (a brute-force reference of torchvision's semantics).
It is put on `sys.path` by tests/conftest.py only when the real torchvision is missing.
"""
__version__ = "0.0.0+sam_hf_test_stub"
from . import ops, transforms  # noqa: F401
