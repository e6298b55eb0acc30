"""Crop boxes, point grids and uncropping against Meta's `segment_anything.utils.amg`."""
import numpy as np
import pytest
import torch
from segment_anything.utils import amg

from sam_hf.generation.crops import (
    build_all_layer_point_grids,
    build_point_grid,
    generate_crop_boxes,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
    validate_point_grids,
)


@pytest.mark.parametrize("n", [1, 2, 7, 32])
def test_point_grid(n):
    np.testing.assert_array_equal(build_point_grid(n), amg.build_point_grid(n))


@pytest.mark.parametrize("n, layers, scale", [(32, 0, 1), (32, 2, 2), (16, 3, 2), (10, 2, 3)])
def test_layer_grids(n, layers, scale):
    ours = build_all_layer_point_grids(n, layers, scale)
    theirs = amg.build_all_layer_point_grids(n, layers, scale)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("size", [(128, 128), (683, 1024), (1024, 683), (3000, 4000), (97, 131)])
@pytest.mark.parametrize("layers", [0, 1, 2, 3])
@pytest.mark.parametrize("ratio", [512 / 1500, 0.0, 0.5])
def test_crop_boxes(size, layers, ratio):
    assert generate_crop_boxes(size, layers, ratio) == amg.generate_crop_boxes(size, layers, ratio)


@pytest.mark.parametrize("size", [(1, 60), (3, 60), (20, 60), (21, 300), (5, 5), (1, 1), (300, 2)])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_crop_boxes_of_thin_images_hold_pixels(size, layers):
    """Meta's boxes, less those that start at or past the image's edge (no pixel: Meta's generator fails on them)."""
    ours = generate_crop_boxes(size, layers, 512 / 1500)
    boxes, layer_idxs = amg.generate_crop_boxes(size, layers, 512 / 1500)
    kept = [i for i, (x0, y0, x1, y1) in enumerate(boxes) if x1 > x0 and y1 > y0]
    assert ours == ([boxes[i] for i in kept], [layer_idxs[i] for i in kept])
    assert all(x1 > x0 and y1 > y0 for x0, y0, x1, y1 in ours[0])


def test_uncrop():
    crop = [10, 20, 60, 50]
    boxes = torch.randint(0, 30, (5, 4))
    torch.testing.assert_close(uncrop_boxes_xyxy(boxes, crop), amg.uncrop_boxes_xyxy(boxes, crop))
    torch.testing.assert_close(uncrop_boxes_xyxy(boxes[None], crop), amg.uncrop_boxes_xyxy(boxes[None], crop))
    points = torch.rand(5, 2, dtype=torch.float64) * 30
    torch.testing.assert_close(uncrop_points(points, crop), amg.uncrop_points(points, crop))
    masks = torch.rand(3, 30, 50) > 0.5
    torch.testing.assert_close(uncrop_masks(masks, crop, 70, 80), amg.uncrop_masks(masks, crop, 70, 80))
    assert uncrop_masks(masks, [0, 0, 50, 30], 30, 50) is masks


def test_point_grid_validation():
    grids = validate_point_grids([np.full((4, 2), 0.5), [[0.1, 0.2]]], crop_n_layers=1)
    assert grids[1].dtype == np.float64 and grids[1].shape == (1, 2)
    with pytest.raises(ValueError, match="one grid per crop layer"):
        validate_point_grids([np.full((4, 2), 0.5)], crop_n_layers=1)
    with pytest.raises(ValueError, match="\\(K, 2\\)"):
        validate_point_grids([np.zeros((4, 3))], crop_n_layers=0)
    with pytest.raises(ValueError, match="normalized to \\[0, 1\\]"):
        validate_point_grids([np.full((4, 2), 2.0)], crop_n_layers=0)
    with pytest.raises(TypeError, match="list of \\(K, 2\\) arrays"):
        validate_point_grids(np.zeros((4, 2)), crop_n_layers=0)
    with pytest.raises(ValueError, match="leaves no point"):
        build_all_layer_point_grids(4, 3, 2)
