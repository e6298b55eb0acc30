"""The image-processor methods transformers' stock mask-generation pipeline calls (`generation/pipeline_support.py`):
`filter_masks` keeps Meta's filters and order, and `post_process_for_mask_generation` returns Meta's RLE form."""
import numpy as np
import pytest
import torch

from sam_hf import SamHfImageProcessor
from sam_hf.generation.filters import is_box_near_crop_edge
from sam_hf.generation.rle import rle_to_mask

HEIGHT, WIDTH = 60, 80  # the image
CROP = [10, 5, 70, 45]  # XYXY in the image: masks are (40, 60) logits of this crop


def _logits(points=6, masks=3, seed=0):
    """(P, M, 40, 60) logits of discs of random centres, radii and sharpness: some masks are sharp (stable), some
    soft (unstable), some empty, some touch the crop's inner edges."""
    g = torch.Generator().manual_seed(seed)
    h, w = CROP[3] - CROP[1], CROP[2] - CROP[0]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    centre = torch.rand(points, masks, 2, generator=g) * torch.tensor([w, h])
    radius = 3 + torch.rand(points, masks, 1, 1, generator=g) * 12
    sharpness = 0.2 + torch.rand(points, masks, 1, 1, generator=g) * 3
    distance = ((xs - centre[..., 0, None, None]) ** 2 + (ys - centre[..., 1, None, None]) ** 2).sqrt()
    logits = sharpness * (radius - distance)  # (P, M, h, w)
    logits[0, 0] = -5.0  # an empty mask
    return logits


def _reference(logits, scores, iou_thresh, stability_thresh, mask_threshold=0.0, offset=1.0):
    """Meta's per-batch steps with plain torch ops: every filter on every mask, then the survivors in order."""
    logits, scores = logits.flatten(0, 1), scores.flatten(0, 1)
    keep = torch.ones(len(scores), dtype=torch.bool)
    if iou_thresh > 0:
        keep &= scores > iou_thresh
    if stability_thresh > 0:
        high = (logits > mask_threshold + offset).flatten(1).sum(1)
        low = (logits > mask_threshold - offset).flatten(1).sum(1)
        keep &= high / low >= stability_thresh
    binary, scores = logits[keep] > mask_threshold, scores[keep]
    boxes = []
    for mask in binary:
        ys, xs = np.nonzero(mask.numpy())
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()] if len(xs) else [0, 0, 0, 0])
    boxes = torch.tensor(boxes, dtype=torch.int64).view(-1, 4)
    inner = ~is_box_near_crop_edge(boxes, CROP, [0, 0, WIDTH, HEIGHT])
    full = torch.zeros(int(inner.sum()), HEIGHT, WIDTH, dtype=torch.bool)
    full[:, CROP[1]:CROP[3], CROP[0]:CROP[2]] = binary[inner]
    return full, scores[inner], boxes[inner] + torch.tensor(CROP[:2] * 2)


@pytest.mark.parametrize("iou_thresh, stability_thresh", [(0.5, 0.8), (0.0, 0.9), (0.3, 0.0), (0.0, 0.0), (0.99, 0.8)])
@pytest.mark.parametrize("seed", [0, 1])
def test_filter_masks_equals_meta_steps(iou_thresh, stability_thresh, seed):
    logits = _logits(seed=seed)
    scores = torch.rand(logits.shape[:2], generator=torch.Generator().manual_seed(seed + 10))
    processor = SamHfImageProcessor(longest_edge=64)
    rles, kept_scores, boxes = processor.filter_masks(
        logits, scores, (HEIGHT, WIDTH), torch.tensor(CROP, dtype=torch.float32), iou_thresh, stability_thresh, 0.0, 1.0
    )
    masks, expected_scores, expected_boxes = _reference(logits, scores, iou_thresh, stability_thresh)
    assert torch.equal(kept_scores, expected_scores) and torch.equal(boxes, expected_boxes)
    assert len(rles) == len(masks)
    for rle, mask in zip(rles, masks):
        np.testing.assert_array_equal(rle_to_mask(rle), mask.numpy())
    if (iou_thresh, stability_thresh) == (0.5, 0.8):  # the case is not vacuous: each filter drops some, some survive
        flat = scores.flatten()
        assert 0 < len(rles) < int((flat > 0.5).sum()) < len(flat)


def test_post_process_for_mask_generation_returns_meta_rles():
    """The kept RLEs come back with list counts (Meta's and transformers' form), their masks and boxes, by NMS."""
    logits = _logits(seed=0)
    logits[2, 1] = logits[2, 0] * 1.5  # the same disc, sharper: the same box, one of the two goes
    scores = torch.rand(logits.shape[:2], generator=torch.Generator().manual_seed(3))
    processor = SamHfImageProcessor(longest_edge=64)
    rles, kept_scores, boxes = processor.filter_masks(logits, scores, (HEIGHT, WIDTH), torch.tensor(CROP), 0.0, 0.0, 0.0, 1.0)
    masks, out_scores, out_rles, out_boxes = processor.post_process_for_mask_generation(rles, kept_scores, boxes, 0.7)
    assert 0 < len(out_rles) < len(rles)  # NMS dropped overlapping discs
    for mask, rle, score, box in zip(masks, out_rles, out_scores, out_boxes):
        assert type(rle["counts"]) is list and all(type(c) is int for c in rle["counts"]) and rle["size"] == [HEIGHT, WIDTH]
        source = next(i for i, s in enumerate(kept_scores.tolist()) if s == float(score))
        np.testing.assert_array_equal(mask, rle_to_mask(rles[source]))
        assert torch.equal(box, boxes[source])
