"""Stability, boxes, crop-edge filter and small-region removal against Meta's amg utils."""
import numpy as np
import pytest
import torch
from segment_anything.utils import amg

from sam_hf.generation.filters import (
    batched_mask_to_box,
    box_xyxy_to_xywh,
    is_box_near_crop_edge,
    remove_small_regions,
    stability_score,
)


def _blobs(seed, b=8, h=24, w=20):
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(b, 1, h // 4, w // 4, generator=g) * 3
    return torch.nn.functional.interpolate(low, (h, w), mode="bilinear", align_corners=False)[:, 0]  # (b, h, w)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("threshold, offset", [(0.0, 1.0), (0.5, 0.25), (-1.0, 2.0)])
def test_stability_score(seed, threshold, offset):
    logits = _blobs(seed)
    torch.testing.assert_close(
        stability_score(logits, threshold, offset), amg.calculate_stability_score(logits, threshold, offset), equal_nan=True
    )


@pytest.mark.parametrize("seed", range(3))
def test_boxes(seed):
    masks = _blobs(seed) > 1.0
    masks[0] = False
    masks[1, 5, 7] = True
    torch.testing.assert_close(batched_mask_to_box(masks), amg.batched_mask_to_box(masks))
    torch.testing.assert_close(batched_mask_to_box(masks.view(2, 4, 24, 20)), amg.batched_mask_to_box(masks.view(2, 4, 24, 20)))
    torch.testing.assert_close(batched_mask_to_box(masks[1]), amg.batched_mask_to_box(masks[1]))
    assert batched_mask_to_box(masks[:0]).shape == (0, 4)


def test_near_crop_edge_and_xywh():
    g = torch.Generator().manual_seed(0)
    boxes = torch.randint(0, 200, (50, 2), generator=g).repeat(1, 2) + torch.tensor([0, 0, 30, 40])
    for crop in ([0, 0, 300, 300], [100, 50, 400, 300], [0, 120, 250, 300]):
        expected = amg.is_box_near_crop_edge(boxes, crop, [0, 0, 400, 300])
        torch.testing.assert_close(is_box_near_crop_edge(boxes, crop, [0, 0, 400, 300]), expected)
    for box in (boxes[3], boxes[3].numpy()):
        out = box_xyxy_to_xywh(box)
        np.testing.assert_array_equal(np.asarray(out), amg.box_xyxy_to_xywh(torch.as_tensor(box)).numpy())
        assert box[2] == boxes[3][2]  # input untouched


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("area", [3, 12, 1000])
def test_remove_small_regions_matches_meta(fake_cv2, seed, mode, area):
    rng = np.random.default_rng(seed)
    mask = rng.random((18, 22)) > (0.3 if seed % 2 else 0.7)
    ours, changed = remove_small_regions(mask, area, mode)
    theirs, their_changed = amg.remove_small_regions(mask, area, mode)
    assert changed == their_changed
    np.testing.assert_array_equal(ours, theirs)


def test_remove_small_regions_bad_mode():
    with pytest.raises(ValueError, match="mode must be 'holes' or 'islands'"):
        remove_small_regions(np.zeros((3, 3), dtype=bool), 1, "both")
