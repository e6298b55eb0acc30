"""Shared test setup: Meta's `segment_anything` importable without torchvision, and seeds.

Meta's package imports four torchvision functions. tests/_stubs/torchvision stands in for them, but
only while `segment_anything` is being imported: the stand-in is then withdrawn from `sys.path` and
`sys.modules`, so transformers (which adapts to torchvision's presence) never sees it.
"""
import importlib
import importlib.util
import os
import sys

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def _import_segment_anything_with_stub() -> None:
    if importlib.util.find_spec("torchvision") is not None:
        return  # the real one is installed
    import transformers.image_utils  # noqa: F401  (transformers settles its torchvision check first)
    import transformers.modeling_utils  # noqa: F401

    stubs = os.path.join(os.path.dirname(__file__), "_stubs")
    sys.path.insert(0, stubs)
    try:
        importlib.import_module("segment_anything")
        importlib.import_module("segment_anything.automatic_mask_generator")
    finally:
        sys.path.remove(stubs)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]


_import_segment_anything_with_stub()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
