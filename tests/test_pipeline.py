"""transformers' stock mask-generation pipeline on a saved sam_hf model (no torchvision), and ours."""
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline
from transformers.pipelines import MaskGenerationPipeline

import sam_hf
from sam_hf.generation.generator import SamHfAutomaticMaskGenerator
from sam_hf.pipeline import SamHfMaskGenerationPipeline


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    model = sam_hf.SamHfModel(sam_hf.config_for_variant("tiny")).eval()
    path = tmp_path_factory.mktemp("tiny_sam_hf")
    model.save_pretrained(path)
    return str(path), model


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(np.kron((rng.random((5, 6, 3)) * 255).astype(np.uint8), np.ones((22, 25, 1), dtype=np.uint8)))


def _stock_kwargs():
    return {}  # the saved folder's own processor (with the mask-generation methods) is what the pipeline loads


@pytest.mark.parametrize("crops", [0, 1])
def test_stock_pipeline(saved_model, image, crops):
    path, _ = saved_model
    generator = pipeline("mask-generation", model=path, **_stock_kwargs())
    assert type(generator) is MaskGenerationPipeline  # importing sam_hf does not take the task over
    out = generator(
        image, points_per_batch=20, points_per_crop=6, crops_n_layers=crops, pred_iou_thresh=-1.0,
        stability_score_thresh=0.0, crops_nms_thresh=0.9, output_rle_mask=True, output_bboxes_mask=True,
    )
    assert len(out["masks"]) == len(out["scores"]) == len(out["rle_mask"]) == len(out["bounding_boxes"]) > 0
    for mask, rle, box in zip(out["masks"], out["rle_mask"], out["bounding_boxes"]):
        assert mask.shape == (110, 150) and mask.dtype == np.bool_
        np.testing.assert_array_equal(sam_hf.generation.rle.rle_to_mask(rle), mask)
        if mask.any():
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
    assert "torchvision" not in sys.modules


def test_stock_pipeline_rejects_uneven_grids(saved_model, image):
    path, _ = saved_model
    generator = pipeline("mask-generation", model=path, **_stock_kwargs())
    with pytest.raises(ValueError, match="crop_n_points_downscale_factor must be 1"):
        generator(image, points_per_crop=4, crops_n_layers=1, crop_n_points_downscale_factor=2)


def test_our_pipeline_equals_the_generator(saved_model, image):
    path, model = saved_model
    knobs = dict(points_per_side=6, pred_iou_thresh=-1.0, stability_score_thresh=0.0, box_nms_thresh=0.9)
    generator = pipeline("mask-generation", model=path, pipeline_class=SamHfMaskGenerationPipeline, **knobs)
    assert isinstance(generator, SamHfMaskGenerationPipeline)
    records = generator(image)
    expected = SamHfAutomaticMaskGenerator(model, **knobs).generate(image)
    assert len(records) == len(expected) > 0
    for a, b in zip(records, expected):
        np.testing.assert_array_equal(a.pop("segmentation"), b.pop("segmentation"))
        assert a == b
    # per-call knobs, stock aliases, output modes, several images
    batch = generator([image, np.asarray(image)], points_per_crop=4, crops_n_layers=1, output_mode="coco_rle", progress=True)
    assert len(batch) == 2 and batch[0] and all(isinstance(r["segmentation"]["counts"], str) for r in batch[0])
    grids = generator(image, point_grids=[np.array([[0.5, 0.5]])], output_mode="uncompressed_rle")
    assert {tuple(r["point_coords"][0]) for r in grids} == {(75.0, 55.0)}


def test_our_pipeline_batch_size(saved_model, image):
    """With `batch_size`, transformers collates images: each still gets its own records, in order (arrays, PIL images
    and channels-first tensors, of different sizes)."""
    path, _ = saved_model
    generator = pipeline("mask-generation", model=path, pipeline_class=SamHfMaskGenerationPipeline,
                         points_per_side=4, pred_iou_thresh=-1.0, stability_score_thresh=0.0)
    array = np.asarray(image)
    images = [image, array[:60], torch.from_numpy(array[:, :90].copy()).permute(2, 0, 1)]
    expected = [generator(one) for one in images]
    for batch_size in (2, 3):
        got = generator(images, batch_size=batch_size)
        assert len(got) == len(images)
        for records, reference in zip(got, expected):
            assert len(records) == len(reference) > 0
            for a, b in zip(records, reference):
                np.testing.assert_array_equal(a["segmentation"], b["segmentation"])


@pytest.mark.parametrize(
    "options, error, words",
    [(dict(points_per_side=-1), ValueError, "points_per_side must be an int >= 1"), (dict(progress="no"), TypeError, "progress"),
     (dict(timeout="x"), TypeError, "timeout"), (dict(crops_nms_thresh=2.0), ValueError, "crop_nms_thresh")],
)
def test_our_pipeline_checks_options_when_built(saved_model, options, error, words):
    with pytest.raises(error, match=words):
        pipeline("mask-generation", model=saved_model[0], pipeline_class=SamHfMaskGenerationPipeline, **options)


def test_our_pipeline_bad_arguments(saved_model, image):
    path, _ = saved_model
    generator = pipeline("mask-generation", model=path, pipeline_class=SamHfMaskGenerationPipeline)
    with pytest.raises(ValueError, match="unknown arguments \\['points_per_bach'\\]"):
        generator(image, points_per_bach=4)
    with pytest.raises(ValueError, match="not both"):
        generator(image, crops_n_layers=1, crop_n_layers=1)
    with pytest.raises(ValueError, match="stability_score_thresh"):
        generator(image, points_per_side=2, stability_score_thresh=2.0)
