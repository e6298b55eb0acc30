"""RLE encode/decode round trips, against pycocotools and Meta's reference encoder."""
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from segment_anything.utils import amg

from sam_hf.generation.rle import (
    area_from_rle,
    boundaries_to_rles,
    coco_encode_rle,
    mask_to_rle,
    rle_to_mask,
    run_boundaries,
)


def _masks(seed, b=6, h=13, w=9):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(b, h, w, generator=g) > 0.5
    masks[0] = False  # empty
    masks[1] = True  # full
    masks[2, :, :3] = True  # runs crossing column ends
    masks[2, :, 3:] = False
    masks[3, 0, 0] = True
    masks[3, -1, -1] = True
    return masks


@pytest.mark.parametrize("seed", range(4))
def test_encode_matches_meta_and_round_trips(seed):
    masks = _masks(seed)
    ours = mask_to_rle(masks)
    assert ours == amg.mask_to_rle_pytorch(masks)
    for mask, rle in zip(masks, ours):
        np.testing.assert_array_equal(rle_to_mask(rle), mask.numpy())
        np.testing.assert_array_equal(rle_to_mask(rle), amg.rle_to_mask(rle))
        assert area_from_rle(rle) == int(mask.sum())


@pytest.mark.parametrize("seed", range(3))
def test_coco_rle_matches_pycocotools(seed):
    masks = _masks(seed)
    for mask, rle in zip(masks, mask_to_rle(masks)):
        coco = coco_encode_rle(rle)
        expected = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
        assert coco["counts"] == expected["counts"].decode("utf-8")
        assert list(coco["size"]) == [13, 9]
        np.testing.assert_array_equal(mask_utils.decode(coco).astype(bool), mask.numpy())
        assert mask_utils.area(coco) == int(mask.sum())


@pytest.mark.parametrize("offset, size", [((0, 0), (13, 9)), ((3, 0), (13, 15)), ((2, 4), (20, 14)), ((0, 5), (18, 9))])
def test_crop_offset_equals_padding(offset, size):
    masks = _masks(7)
    x0, y0 = offset
    padded = torch.zeros(masks.shape[0], *size, dtype=torch.bool)
    padded[:, y0 : y0 + 13, x0 : x0 + 9] = masks
    rles = boundaries_to_rles(*run_boundaries(masks, size, offset), size)
    assert rles == amg.mask_to_rle_pytorch(padded)


def test_counts_as_arrays_hold_the_same_runs():
    """`counts_as_arrays=True` (the stock pipeline's per-batch RLEs): int64 arrays with the lists' values, masks
    ending in a run of 1s included, and they decode the same."""
    masks = _masks(3)
    masks[4] = False
    masks[4, -1, -1] = True  # ends with a 1: no trailing run of 0s
    as_lists = boundaries_to_rles(*run_boundaries(masks), masks.shape[-2:])
    as_arrays = boundaries_to_rles(*run_boundaries(masks), masks.shape[-2:], counts_as_arrays=True)
    assert len(as_lists) == len(as_arrays) == len(masks)
    for listed, array, mask in zip(as_lists, as_arrays, masks):
        assert isinstance(array["counts"], np.ndarray) and array["counts"].dtype == np.int64
        assert array["counts"].tolist() == listed["counts"] and array["size"] == listed["size"]
        np.testing.assert_array_equal(rle_to_mask(array), mask.numpy())


def test_bad_input():
    with pytest.raises(ValueError, match="masks must be a \\(B, H, W\\)"):
        mask_to_rle(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        mask_to_rle(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="do not fit"):
        run_boundaries(torch.zeros(1, 4, 4, dtype=torch.bool), (4, 4), (1, 0))
    with pytest.raises(ValueError, match="sum to H\\*W"):
        rle_to_mask({"size": [2, 2], "counts": [1, 2]})


def test_empty_batch():
    assert mask_to_rle(torch.zeros(0, 5, 5, dtype=torch.bool)) == []


@pytest.mark.parametrize("size,offset", [((9, 7), (0, 0)), ((12, 11), (2, 3)), ((9, 11), (4, 0))])
def test_boxes_read_off_the_runs_equal_batched_mask_to_box(size, offset):
    """Including masks touching every edge, single pixels, empty masks, and crops as high as the image."""
    from sam_hf.generation.filters import batched_mask_to_box

    generator = torch.Generator().manual_seed(5)
    masks = torch.rand(6, 9, 7, generator=generator) > 0.6
    masks[1] = False  # empty
    masks[2] = True  # the whole crop
    masks[3] = False
    masks[3, 8, 6] = True  # one pixel in the last row and column
    masks[4] = False
    masks[4, 0, 0] = True
    flat, per_mask, boxes = run_boundaries(masks, size, offset, return_boxes=True)
    assert torch.equal(boxes, batched_mask_to_box(masks))
    plain = run_boundaries(masks, size, offset)
    assert torch.equal(flat, plain[0]) and torch.equal(per_mask, plain[1])
