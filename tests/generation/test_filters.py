"""Stability, boxes, duplicate suppression, crop-edge filter and small-region removal against Meta's amg utils."""
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
    suppress_duplicates,
)
from sam_hf.generation.nms import batched_nms


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


def _overlapping_boxes(seed, n=60):
    g = torch.Generator().manual_seed(seed)
    corners = torch.randint(0, 40, (n, 2), generator=g)
    return torch.cat([corners, corners + torch.randint(20, 40, (n, 2), generator=g)], dim=1)  # (n, 4) XYXY, many overlaps


def _box_iou(a, b):  # XYXY boxes, as torchvision (no +1)
    inter = (torch.minimum(a[2:], b[2:]) - torch.maximum(a[:2], b[:2])).clamp(min=0).prod()
    return float(inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter))


@pytest.mark.parametrize("seed", range(4))
def test_suppress_duplicates_fp32_is_metas_nms(seed):
    g = torch.Generator().manual_seed(seed)
    boxes = _overlapping_boxes(seed)
    scores = torch.rand(60, generator=g).round(decimals=1)  # fp32 ties too: given order, as Meta's
    stability = torch.rand(60, generator=g)
    expected = batched_nms(boxes.float(), scores, torch.zeros(60), iou_threshold=0.5)
    assert torch.equal(suppress_duplicates(boxes, scores, stability, 0.5), expected)


@pytest.mark.parametrize("seed", range(4))
def test_suppress_duplicates_bf16_ties_by_stability(seed):
    g = torch.Generator().manual_seed(seed)
    boxes = _overlapping_boxes(seed)
    scores = (0.5 + torch.rand(60, generator=g) / 8).bfloat16()  # about 16 distinct values: many ties
    stability = torch.rand(60, generator=g)
    stability[::7] = float("nan")
    keep = suppress_duplicates(boxes, scores, stability, 0.5)
    # the greedy NMS visiting (score, stability) in descending lexicographic order, brute force
    key = torch.nan_to_num(stability, nan=-torch.inf)
    order = sorted(range(60), key=lambda i: (-float(scores[i]), -float(key[i]), i))
    kept = []
    for i in order:
        ious = [_box_iou(boxes[i], boxes[j]) for j in kept]
        if all(iou <= 0.5 for iou in ious):
            kept.append(i)
    assert keep.tolist() == kept
    assert len(torch.unique(scores)) < 30 and keep.tolist() != batched_nms(boxes.float(), scores.float(), torch.zeros(60), 0.5).tolist()


def test_suppress_duplicates_bad_input():
    boxes = _overlapping_boxes(0, n=3)
    with pytest.raises(TypeError, match="iou_preds must be a floating-point tensor, got torch.int64"):
        suppress_duplicates(boxes, torch.ones(3, dtype=torch.int64), torch.ones(3), 0.5)
    with pytest.raises(ValueError, match=r"stability must be a tensor of iou_preds' shape \(3,\), got \(2,\)"):
        suppress_duplicates(boxes, torch.ones(3), torch.ones(2), 0.5)


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
