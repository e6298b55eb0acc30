"""Equality with Meta's `SamAutomaticMaskGenerator` on identical tiny weights and the same image."""
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from sam_hf.generation import generator as generator_module
from sam_hf.generation.generator import SamHfAutomaticMaskGenerator

# Thresholds opened up so that masks of every kind reach each filter (random weights predict low IoUs).
CASES = {
    "filters": dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.4, stability_score_offset=0.5),
    "no_thresholds": dict(points_per_side=6, pred_iou_thresh=-1.0, stability_score_thresh=0.0, box_nms_thresh=0.9),
    "crops": dict(points_per_side=8, pred_iou_thresh=-1.0, stability_score_thresh=0.0, crop_n_layers=1,
                  box_nms_thresh=0.9, crop_nms_thresh=0.9, points_per_batch=20),
    "crops_downscale": dict(points_per_side=8, pred_iou_thresh=-1.0, stability_score_thresh=0.2, stability_score_offset=0.2,
                            crop_n_layers=2, crop_n_points_downscale_factor=2, crop_overlap_ratio=0.25, crop_nms_thresh=0.8),
    "point_grids": dict(points_per_side=None, point_grids=[np.random.default_rng(1).random((30, 2))],
                        pred_iou_thresh=-1.0, stability_score_thresh=0.0, box_nms_thresh=0.8),
}


def _compare(theirs, ours):
    assert len(ours) == len(theirs) > 0
    for a, b in zip(theirs, ours):
        assert b["point_coords"][0] == pytest.approx(a["point_coords"][0])
        assert b["crop_box"] == [int(v) for v in a["crop_box"]]
        assert b["predicted_iou"] == pytest.approx(a["predicted_iou"], abs=1e-4)
        assert b["stability_score"] == pytest.approx(a["stability_score"], abs=2e-3)
        assert np.abs(np.subtract(b["bbox"], a["bbox"])).max() <= 1
        assert abs(b["area"] - a["area"]) <= max(2, 0.002 * a["area"])
        if isinstance(a["segmentation"], np.ndarray):
            assert b["segmentation"].shape == a["segmentation"].shape and b["segmentation"].dtype == np.bool_
            assert (a["segmentation"] != b["segmentation"]).sum() <= max(2, 0.002 * a["area"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_equal_to_meta(meta_and_ours, blocks_image, case):
    from segment_anything import SamAutomaticMaskGenerator

    meta, ours = meta_and_ours
    theirs = SamAutomaticMaskGenerator(meta, **CASES[case]).generate(blocks_image)
    _compare(theirs, SamHfAutomaticMaskGenerator(ours, **CASES[case]).generate(blocks_image))


def test_equal_to_meta_with_small_region_removal(meta_and_ours, blocks_image, fake_cv2):
    from segment_anything import SamAutomaticMaskGenerator

    meta, ours = meta_and_ours
    kwargs = dict(CASES["no_thresholds"], points_per_side=4, min_mask_region_area=40)
    theirs = SamAutomaticMaskGenerator(meta, **kwargs).generate(blocks_image)
    _compare(theirs, SamHfAutomaticMaskGenerator(ours, **kwargs).generate(blocks_image))


@pytest.mark.parametrize("mode", ["uncompressed_rle", "coco_rle"])
def test_equal_to_meta_rle_modes(meta_and_ours, blocks_image, mode):
    from segment_anything import SamAutomaticMaskGenerator

    meta, ours = meta_and_ours
    kwargs = dict(CASES["filters"], output_mode=mode)
    theirs = SamAutomaticMaskGenerator(meta, **kwargs).generate(blocks_image)
    mine = SamHfAutomaticMaskGenerator(ours, **kwargs).generate(blocks_image)
    _compare(theirs, mine)
    for a, b in zip(theirs, mine):
        assert b["segmentation"]["size"] == list(a["segmentation"]["size"])
        decode = (lambda r: mask_utils.decode(r).astype(bool)) if mode == "coco_rle" else generator_module.rle_to_mask
        assert (decode(a["segmentation"]) != decode(b["segmentation"])).sum() <= max(2, 0.002 * a["area"])


def test_chunked_upscaling_is_exact(meta_and_ours, blocks_image, monkeypatch):
    _, ours = meta_and_ours
    kwargs = dict(CASES["crops"], points_per_side=4)
    whole = SamHfAutomaticMaskGenerator(ours, **kwargs).generate(blocks_image)
    monkeypatch.setattr(generator_module, "UPSCALE_BUDGET", 1)  # one mask at a time
    chunked = SamHfAutomaticMaskGenerator(ours, **kwargs).generate(blocks_image)
    assert len(whole) == len(chunked) > 0
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a.pop("segmentation"), b.pop("segmentation"))
        assert a == b


def test_fp64_points_reach_the_model(meta_and_ours):
    _, ours = meta_and_ours
    generator = SamHfAutomaticMaskGenerator(ours, points_per_side=2)
    assert generator.point_grids[0].dtype == np.float64
    assert torch.get_default_dtype() == torch.float32


def test_equal_to_meta_with_mask_threshold(meta_and_ours, blocks_image, monkeypatch):
    from segment_anything import SamAutomaticMaskGenerator

    meta, ours = meta_and_ours
    monkeypatch.setattr(meta, "mask_threshold", 0.5)  # Meta reads the model's attribute
    kwargs = dict(points_per_side=8, pred_iou_thresh=-1.0, stability_score_thresh=0.1, stability_score_offset=0.3, box_nms_thresh=0.95)
    theirs = SamAutomaticMaskGenerator(meta, **kwargs).generate(blocks_image)
    mine = SamHfAutomaticMaskGenerator(ours, mask_threshold=0.5, **kwargs).generate(blocks_image)
    assert len(mine) >= 1
    _compare(theirs, mine)
