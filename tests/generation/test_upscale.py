"""Masks upscaled only inside the box where they can pass a threshold (generation/upscale.py) against every pixel
upscaled (post_process_masks, Meta's steps), and the generator's two paths against each other."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam_hf.generation import generator as generator_module
from sam_hf.generation.generator import SamHfAutomaticMaskGenerator
from sam_hf.generation.upscale import _axis, upscale_in_boxes
from sam_hf.processing import SamHfImageProcessor
from sam_hf.processing.masks import upscale_and_crop
from sam_hf.processing.resize import get_preprocess_shape


def _blobs(count: int, side: int, seed: int) -> torch.Tensor:
    """(count, side, side) low-res logits: steep blobs of random sizes and places, some touching an edge, one
    empty (all far below any threshold), one all above, plus noise."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij")
    out = []
    for i in range(count):
        cy, cx = (torch.rand(2, generator=g) * side * 1.2 - 0.1 * side).tolist()
        radius = float(torch.rand(1, generator=g)) * side / 3 + 1
        steep = float(torch.rand(1, generator=g)) * 8 + 0.5
        logits = steep * (radius - ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt()) + torch.randn(side, side, generator=g)
        out.append(logits)
    out[0] = torch.full((side, side), -40.0)
    out[1] = torch.full((side, side), 25.0) + torch.randn(side, side, generator=g)
    return torch.stack(out)


CASES = [  # (low-res side, padded input side, image (H, W))
    (32, 128, (110, 150)),  # landscape, upscaled 150 / 128
    (32, 128, (300, 97)),  # portrait, upscaled about 2.3x
    (32, 128, (128, 128)),  # the model's own size: no second step
    (44, 176, (683, 1024)),
]


def _placed(result, size: tuple[int, int]) -> torch.Tensor:
    """An `UpscaledMask`'s box placed in an image of `size`: the whole mask (H, W) bool."""
    mask = torch.zeros(size, dtype=torch.bool)
    height, width = result.mask.shape
    mask[result.y0 : result.y0 + height, result.x0 : result.x0 + width] = result.mask
    return mask


def _assert_same_up_to_rounding(mask: torch.Tensor, count: int, full: torch.Tensor, threshold: float, name: str):
    """`mask` (or `count`) is `full > threshold` except where `full` lies within float32 rounding of the threshold
    (this module's interpolation and F.interpolate's round differently by a few ulps)."""
    tied = (full - threshold).abs() <= 8 * 2.0**-23 * full.abs().amax()  # within 8 ulps of the largest logit
    expected = full > threshold
    if mask is not None:
        assert bool((mask[~tied] == expected[~tied]).all()), name
    assert abs(count - int(expected.sum())) <= int(tied.sum()), name
    return int(tied.sum())


@pytest.mark.parametrize("low_side, pad, size", CASES)
@pytest.mark.parametrize("threshold, offset", [(0.0, 1.0), (0.5, 0.25), (-1.0, -2.0), (0.0, 0.0)])
@pytest.mark.parametrize("kernels_on", [True, False])  # off: this module's own interpolation inside the boxes
def test_equal_to_every_pixel_upscaled(low_side, pad, size, threshold, offset, kernels_on):
    from sam_hf import kernels

    logits = _blobs(12, low_side, seed=low_side + size[0])
    resized_size = get_preprocess_shape(*size, pad)
    dense = SamHfImageProcessor(longest_edge=pad).post_process_masks(logits[None, :, None], [size], [resized_size], binarize=False)[0][:, 0]
    resized = upscale_and_crop(logits[:, None], pad, *resized_size)[:, 0]
    if kernels_on:
        results = upscale_in_boxes(resized, size, threshold, offset)
    else:
        with kernels.disabled():
            results = upscale_in_boxes(resized, size, threshold, offset)
    assert len(results) == len(logits)
    ties = 0
    for result, full in zip(results, dense):
        mask = _placed(result, size)  # everything outside the box must be False in the dense masks too
        ties += _assert_same_up_to_rounding(mask, int(mask.sum()), full, threshold, "mask")
        ties += _assert_same_up_to_rounding(None, result.high, full, threshold + offset, "high count")
        ties += _assert_same_up_to_rounding(None, result.low, full, threshold - offset, "low count")
    assert ties <= 1e-5 * dense.numel()  # such pixels are rare
    assert results[0].mask.numel() == 0 and results[0].low == 0  # nothing can pass: no box at all
    assert results[1].mask.shape == size and bool(results[1].mask.all())  # everything passes: the whole image


@pytest.mark.parametrize("low_side, pad, size", [case for case in CASES if case[2] != (case[1], case[1])])
def test_with_the_kernel_equal_to_every_pixel_upscaled_bit_for_bit(low_side, pad, size):
    """Where sam_hf's mask_resize kernel serves, each box is a window of F.interpolate's output: the same masks and
    counts as every pixel upscaled, with no rounding allowance."""
    from sam_hf.kernels import loader
    from sam_hf.processing.bilinear import single_channel_kernel

    if loader._why_not("mask_resize") is not None:
        pytest.skip(f"no mask_resize kernel here: {loader._why_not('mask_resize')}")
    assert single_channel_kernel(size) is not None
    logits = _blobs(12, low_side, seed=low_side + size[0] + 1)
    resized_size = get_preprocess_shape(*size, pad)
    dense = SamHfImageProcessor(longest_edge=pad).post_process_masks(logits[None, :, None], [size], [resized_size], binarize=False)[0][:, 0]
    resized = upscale_and_crop(logits[:, None], pad, *resized_size)[:, 0]
    for result, full in zip(upscale_in_boxes(resized, size, 0.5, 1.0), dense):
        mask = _placed(result, size)
        assert torch.equal(mask, full > 0.5)
        assert (result.high, result.low) == (int((full > 1.5).sum()), int((full > -0.5).sum()))


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("which", [0, -1])  # the first unread source, the last (past every pixel's)
def test_shrunk_mask_whose_possible_sources_no_pixel_reads_is_empty(axis, which):
    """An image smaller than the model's resized frame (a small crop of segment everything) is shrunk: some source rows
    (or columns) are read by no pixel. A mask that can pass only there is empty at image size (found by fuzzing the
    generator against Meta's: the box's first row was looked up past the end)."""
    resized_size, size = (17, 128), (5, 36)  # about 3.5 sources per pixel
    resampling = _axis(resized_size[axis], size[axis])  # PyTorch's source indices and weights along that axis
    read = set(resampling.low.tolist()) | set(resampling.high.tolist())
    index = [i for i in range(resized_size[axis]) if i not in read][which]
    resized = torch.full((2, *resized_size), -40.0)
    if axis == 0:
        resized[0, index] = 25.0
    else:
        resized[0, :, index] = 25.0
    resized[1, 5:9, 40:60] = 25.0  # an ordinary mask beside it
    dense = F.interpolate(resized[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    assert not bool((dense[0] > -1.0).any())
    for result, full in zip(upscale_in_boxes(resized, size, 0.0, 1.0), dense):
        mask = _placed(result, size)
        assert torch.equal(mask, full > 0.0)
        assert (result.high, result.low) == (int((full > 1.0).sum()), int((full > -1.0).sum()))


def test_box_is_tight():
    """The box holds every pixel the masks can have, and little more: here a small steep blob."""
    logits = torch.full((1, 32, 32), -30.0)
    logits[0, 10:14, 20:23] = 30.0
    size, pad = (110, 150), 128
    resized_size = get_preprocess_shape(*size, pad)
    resized = upscale_and_crop(logits[:, None], pad, *resized_size)[:, 0]
    (result,) = upscale_in_boxes(resized, size, 0.0, 1.0)
    upscaled = F.interpolate(resized[:, None], size, mode="bilinear", align_corners=False)[0, 0]
    reached = (upscaled > -1.0).nonzero()  # pixels in the lowest mask
    (top, left), (bottom, right) = reached.min(0).values.tolist(), reached.max(0).values.tolist()
    height, width = result.mask.shape
    # a box pixel reads a source above -1, which at most one source pixel (150 / 128 output pixels) further out
    assert result.y0 <= top and result.y0 + height > bottom and result.x0 <= left and result.x0 + width > right
    assert top - result.y0 <= 2 and left - result.x0 <= 2
    assert result.y0 + height - 1 - bottom <= 2 and result.x0 + width - 1 - right <= 2
    assert result.mask.numel() < upscaled.numel() / 10


def test_handles_infinite_and_nan_logits():
    logits = _blobs(3, 32, seed=5)
    logits[2, 3, 4], logits[2, 20, 20], logits[1, 0, 0] = float("inf"), float("nan"), float("-inf")
    size, pad = (110, 150), 128
    resized_size = get_preprocess_shape(*size, pad)
    dense = SamHfImageProcessor(longest_edge=pad).post_process_masks(logits[None, :, None], [size], [resized_size], binarize=False)[0][:, 0]
    resized = upscale_and_crop(logits[:, None], pad, *resized_size)[:, 0]
    for result, full in zip(upscale_in_boxes(resized, size, 0.0, 1.0), dense):
        _assert_same_up_to_rounding(None, result.high, full, 1.0, "high count")
        _assert_same_up_to_rounding(None, result.low, full, -1.0, "low count")


@pytest.mark.parametrize("kwargs", [
    dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.4, stability_score_offset=0.5),
    dict(points_per_side=6, pred_iou_thresh=-1.0, stability_score_thresh=0.0, box_nms_thresh=0.9, mask_threshold=0.3),
    dict(points_per_side=8, pred_iou_thresh=-1.0, stability_score_thresh=0.2, crop_n_layers=1, points_per_batch=20),
])
def test_generator_paths_agree(meta_and_ours, blocks_image, monkeypatch, kwargs):
    """On a CPU the generator upscales in boxes; forcing Meta's dense steps gives the same records."""
    model = meta_and_ours[1]
    generator = SamHfAutomaticMaskGenerator(model, **kwargs)
    assert generator._upscales_in_boxes(torch.device("cpu"))
    in_boxes = generator.generate(blocks_image)
    monkeypatch.setattr(SamHfAutomaticMaskGenerator, "_upscales_in_boxes", lambda self, device: False)
    dense = generator.generate(blocks_image)
    _assert_same_records(in_boxes, dense)


def _assert_same_records(in_boxes: list[dict], dense: list[dict]) -> None:
    assert len(in_boxes) == len(dense) > 0
    for a, b in zip(in_boxes, dense):
        np.testing.assert_array_equal(a.pop("segmentation"), b.pop("segmentation"))
        assert a == b


def test_generator_paths_agree_on_a_small_image_with_crop_layers(meta_and_ours, monkeypatch):
    """An image smaller than the model's input, in crops two layers deep: the crops are shrunk to their size, where
    some of a mask's possible source rows are read by no pixel (the in-box path's IndexError before the fix)."""
    image = np.kron((np.random.default_rng(27).random((3, 8, 3)) * 255).astype(np.uint8), np.ones((6, 18, 1), dtype=np.uint8))[:17, :141]
    kwargs = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.3, stability_score_offset=0.2, box_nms_thresh=0.5,
                  crop_n_layers=2, crop_nms_thresh=0.7, crop_overlap_ratio=0.1, points_per_batch=64)
    generator = SamHfAutomaticMaskGenerator(meta_and_ours[1], **kwargs)
    in_boxes = generator.generate(image)
    monkeypatch.setattr(SamHfAutomaticMaskGenerator, "_upscales_in_boxes", lambda self, device: False)
    _assert_same_records(in_boxes, generator.generate(image))


def test_generator_uses_dense_steps_for_another_processor(meta_and_ours):
    """A processor whose post_process_masks is not sam_hf's own keeps Meta's steps (it may do anything)."""

    class Custom(SamHfImageProcessor):
        def post_process_masks(self, *args, **kwargs):
            return super().post_process_masks(*args, **kwargs)

    model = meta_and_ours[1]
    assert not SamHfAutomaticMaskGenerator(model, Custom(longest_edge=128))._upscales_in_boxes(torch.device("cpu"))
    assert not SamHfAutomaticMaskGenerator(model)._upscales_in_boxes(torch.device("meta"))
    assert generator_module.UPSCALE_BUDGET > 0
