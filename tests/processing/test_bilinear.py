"""The compiled `mask_resize` kernel gives ATen's upsample_bilinear2d bit for bit wherever it is used, and post-processing
with it gives Meta's masks bit for bit; where ATen computes another way, ATen computes."""
import random
import shutil

import pytest
import torch
import torch.nn.functional as F

import sam_hf.processing.bilinear as bilinear
from kernel_builds import kernel_isas, kernels_for_isa
from sam_hf.kernels import loader
from sam_hf.processing import SamHfImageProcessor, get_preprocess_shape


@pytest.fixture(scope="module", params=kernel_isas())
def kernel(request):
    """The kernel built for each instruction set this CPU runs (`kernel_isas`), post-processing taking that build."""
    with kernels_for_isa(request.param):
        reason = loader._why_not("mask_resize") or (None if shutil.which("c++") else "no C++ compiler")
        if reason is not None:
            pytest.skip(f"the mask_resize kernel cannot be built here: {reason}")
        module = bilinear._kernel()
        assert module is not None, f"the kernel should build and agree with ATen here: {loader.unavailable_reason('mask_resize')}"
        assert module.isa() == request.param
        yield module


@pytest.fixture
def two_threads():
    """ATen's generic kernel serves 3 channels only on more than one thread (the suite runs on one)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _aten(logits, size):
    return F.interpolate(logits, size, mode="bilinear", align_corners=False)


def test_seeded_shapes_equal_aten_bit_for_bit(kernel, two_threads):
    """Up- and downscaling, integer and other ratios, windows of the output, 1 to 3 channels, infinities and NaNs."""
    rng = random.Random(0)
    generator = torch.Generator().manual_seed(0)
    served = 0
    for _ in range(60):
        h, w = rng.randint(1, 200), rng.randint(1, 200)
        out_h, out_w = rng.choice([(4 * h, 4 * w), (rng.randint(1, 900), rng.randint(1, 900))])
        row0, col0 = rng.choice([(0, 0), (rng.randrange(out_h), rng.randrange(out_w))])
        rows, cols = rng.randint(0, out_h - row0), rng.randint(1, out_w - col0)
        logits = torch.randn(rng.randint(1, 2), rng.randint(1, 3), h, w, generator=generator) * 10
        logits.view(-1)[rng.randrange(logits.numel())] = rng.choice([float("inf"), float("-inf"), float("nan")])
        window = dict(rows=rows, cols=cols, row0=row0, col0=col0)
        got = bilinear.resize_with_kernel(logits, (out_h, out_w), **window)
        if out_h + out_w <= 128:
            assert got is None  # ATen's channels-last kernel: left to it
            continue
        served += 1
        expected = _aten(logits, (out_h, out_w))[..., row0 : row0 + rows, col0 : col0 + cols]
        assert got.shape == expected.shape
        assert torch.equal(got.isnan(), expected.isnan()) and torch.equal(got.nan_to_num(), expected.nan_to_num())
        binary = bilinear.resize_with_kernel(logits, (out_h, out_w), **window, threshold=0.25)
        assert binary.dtype == torch.bool and torch.equal(binary, expected > 0.25)
    assert served > 40


def test_where_aten_takes_another_kernel_it_is_left_to_aten(kernel, two_threads):
    logits = torch.randn(1, 3, 40, 40)
    assert bilinear.resize_with_kernel(logits, (160, 160)) is not None
    assert bilinear.resize_with_kernel(logits, (64, 64)) is None  # height + width <= 128
    assert bilinear.resize_with_kernel(torch.randn(1, 4, 40, 40).to(memory_format=torch.channels_last), (160, 160)) is None
    assert bilinear.resize_with_kernel(torch.randn(1, 4, 40, 40), (160, 160)) is not None
    torch.set_num_threads(1)
    assert bilinear.resize_with_kernel(logits, (160, 160)) is None  # 3 channels on one thread
    assert bilinear.resize_with_kernel(logits[:, :2], (160, 160)) is not None
    with torch.enable_grad():
        assert bilinear.resize_with_kernel(logits[:, :2].requires_grad_(), (160, 160)) is None
    assert bilinear.resize_with_kernel(logits[:, :2].double(), (160, 160)) is None


@pytest.mark.parametrize("size", [(683, 1024), (1024, 683), (333, 517), (1500, 2000)])
@pytest.mark.parametrize("masks", [1, 3])
def test_post_process_with_the_kernel_gives_metas_masks(kernel, two_threads, meta_sam, size, masks, monkeypatch):
    calls = []
    real = bilinear._kernel
    monkeypatch.setattr(bilinear, "_kernel", lambda: calls.append(1) or real())
    logits = torch.randn(2, masks, 256, 256) * 8  # (P, M, L, L), SAM's 1024 frame
    input_size = get_preprocess_shape(*size, 1024)
    expected = meta_sam(1024).postprocess_masks(logits, input_size, size)
    processor = SamHfImageProcessor(longest_edge=1024)
    ours = processor.post_process_masks(logits[None], [size], [input_size], binarize=False)[0]
    assert torch.equal(ours, expected)
    binary = processor.post_process_masks(logits[None], [size], [input_size], mask_threshold=0.5)[0]
    assert torch.equal(binary, expected > 0.5)
    assert calls  # the kernel ran


def test_a_kernel_that_differs_from_aten_is_not_used(kernel, monkeypatch):
    class Off:
        __file__ = "off"

        @staticmethod
        def resize(source, out_h, out_w, scale_h, scale_w, rows, cols, threshold=None, row0=0, col0=0):
            out = kernel.resize(source, out_h, out_w, scale_h, scale_w, rows, cols, threshold, row0, col0)
            return out if threshold is not None else out.add(1e-6)

    monkeypatch.setattr(bilinear, "kernel_for", lambda name, dtype: Off)
    monkeypatch.setattr(bilinear, "_AGREES", {})
    assert bilinear.resize_with_kernel(torch.randn(1, 1, 40, 40), (160, 160)) is None
    assert bilinear._AGREES == {"off": False}
