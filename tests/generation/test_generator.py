"""Generator mechanics on the tiny model: every knob, output modes, crops, empty result, bad arguments."""
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from scipy import ndimage

from sam_hf.generation.generator import SamHfAutomaticMaskGenerator
from sam_hf.generation.rle import rle_to_mask
from sam_hf.processing import SamHfImageProcessor

OPEN = dict(points_per_side=6, pred_iou_thresh=-1.0, stability_score_thresh=0.0, box_nms_thresh=0.9)
KEYS = {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}


@pytest.fixture(scope="module")
def model(meta_and_ours):
    return meta_and_ours[1]


def test_records(model, blocks_image):
    records = SamHfAutomaticMaskGenerator(model, **OPEN).generate(blocks_image)
    assert len(records) > 1
    for r in records:
        assert set(r) == KEYS
        seg = r["segmentation"]
        assert seg.shape == (110, 150) and seg.dtype == np.bool_
        assert r["area"] == int(seg.sum())
        if r["area"]:
            ys, xs = np.nonzero(seg)
            assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert r["crop_box"] == [0, 0, 150, 110]
        assert all(isinstance(v, float) for v in r["point_coords"][0])
    ious = [r["predicted_iou"] for r in records]
    assert ious == sorted(ious, reverse=True)  # one crop: NMS order


def test_empty_result_is_an_empty_list(model, blocks_image):
    assert SamHfAutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=5.0).generate(blocks_image) == []
    assert SamHfAutomaticMaskGenerator(model, points_per_side=4, crop_n_layers=1, pred_iou_thresh=5.0).generate(blocks_image) == []
    assert SamHfAutomaticMaskGenerator(
        model, points_per_side=4, pred_iou_thresh=5.0, min_mask_region_area=10, output_mode="coco_rle"
    ).generate(blocks_image) == []


def test_filters_only_remove(model, blocks_image):
    def count(**kw):
        return len(SamHfAutomaticMaskGenerator(model, **{**OPEN, "box_nms_thresh": 1.0, **kw}).generate(blocks_image))

    everything = count()
    assert everything == 36 * 3  # nothing filtered: every point's 3 masks
    assert count(multimask_output=False) == 36
    assert count(pred_iou_thresh=0.1) < everything
    assert count(stability_score_thresh=0.9) < everything
    assert count(box_nms_thresh=0.5) < everything


def test_output_modes_agree(model, blocks_image):
    binary = SamHfAutomaticMaskGenerator(model, **OPEN).generate(blocks_image)
    rle = SamHfAutomaticMaskGenerator(model, **OPEN, output_mode="uncompressed_rle").generate(blocks_image)
    coco = SamHfAutomaticMaskGenerator(model, **OPEN, output_mode="coco_rle").generate(blocks_image)
    assert len(binary) == len(rle) == len(coco) > 0
    for b, u, c in zip(binary, rle, coco):
        np.testing.assert_array_equal(rle_to_mask(u["segmentation"]), b["segmentation"])
        assert isinstance(c["segmentation"]["counts"], str)
        np.testing.assert_array_equal(mask_utils.decode(c["segmentation"]).astype(bool), b["segmentation"])
        assert u["area"] == c["area"] == b["area"]


def test_crops_map_back_to_the_image(model, blocks_image):
    records = SamHfAutomaticMaskGenerator(model, **dict(OPEN, crop_n_layers=1, crop_nms_thresh=1.0)).generate(blocks_image)
    crops = {tuple(r["crop_box"]) for r in records}
    assert len(crops) > 1
    for r in records:
        x0, y0, w, h = r["crop_box"]
        (px, py), = r["point_coords"]
        assert x0 <= px <= x0 + w and y0 <= py <= y0 + h
        seg = r["segmentation"]
        assert seg.shape == (110, 150)
        outside = seg.copy()
        outside[y0 : y0 + h, x0 : x0 + w] = False
        assert not outside.any()  # a crop's mask stays inside the crop


def test_one_image_cache_per_crop(model, blocks_image, monkeypatch):
    """Each crop's point batches share one `image_cache`: the image-wide work runs once per crop, with the same masks."""
    from sam_hf.modeling import mask_decoder

    options = dict(OPEN, points_per_batch=8, crop_n_layers=1, crop_nms_thresh=1.0, output_mode="uncompressed_rle")
    monkeypatch.setattr(mask_decoder, "call_cache", lambda *args: {})  # every call on its own
    alone = SamHfAutomaticMaskGenerator(model, **options).generate(blocks_image)
    monkeypatch.undo()
    calls, channels_last_tokens = [], mask_decoder.channels_last_tokens
    monkeypatch.setattr(mask_decoder, "channels_last_tokens", lambda *args: calls.append(1) or channels_last_tokens(*args))
    shared = SamHfAutomaticMaskGenerator(model, **options).generate(blocks_image)
    assert len(calls) == 5  # the image and its 4 crops; 5 batches of 8 points each
    assert shared == alone and len(shared) > 1


def test_decoder_calls_under_the_mask_budget(model, blocks_image, monkeypatch):
    """On a CPU a batch of points goes to the decoder in calls whose low-res masks fit MASKS_PER_CALL_BUDGET: the
    records of one call per batch."""
    from sam_hf.generation import generator

    options = dict(OPEN, points_per_batch=16, output_mode="uncompressed_rle")
    sizes = []
    process_batch = SamHfAutomaticMaskGenerator._process_batch
    monkeypatch.setattr(SamHfAutomaticMaskGenerator, "_process_batch", lambda self, e, p, *a, **k: sizes.append(len(p)) or process_batch(self, e, p, *a, **k))
    whole = SamHfAutomaticMaskGenerator(model, **options).generate(blocks_image)
    assert sizes == [16, 16, 4]  # 36 points; the tiny model's 16 x 3 masks of 32 x 32 fit the default budget
    sizes.clear()
    monkeypatch.setattr(generator, "MASKS_PER_CALL_BUDGET", 5 * 3 * 32 * 32 * 4)  # 5 points' masks
    split = SamHfAutomaticMaskGenerator(model, **options).generate(blocks_image)
    assert sizes == [5, 5, 5, 1] * 2 + [4]
    # the same masks in the same order; a predicted IoU may differ in its last bits (the token-side products of
    # fewer rows may sum in another order)
    assert len(split) == len(whole) > 1
    for ours, theirs in zip(split, whole):
        assert {k: v for k, v in ours.items() if k != "predicted_iou"} == {k: v for k, v in theirs.items() if k != "predicted_iou"}
        assert ours["predicted_iou"] == pytest.approx(theirs["predicted_iou"], rel=1e-5, abs=1e-6)


def test_point_grids(model, blocks_image):
    grid = np.array([[0.5, 0.5], [0.1, 0.9]])
    records = SamHfAutomaticMaskGenerator(model, **dict(OPEN, points_per_side=None, point_grids=[grid])).generate(blocks_image)
    assert {tuple(r["point_coords"][0]) for r in records} <= {(75.0, 55.0), (15.0, 99.0)}


def test_min_mask_region_area(model, blocks_image):
    records = SamHfAutomaticMaskGenerator(model, **dict(OPEN, min_mask_region_area=60)).generate(blocks_image)
    assert records
    eight = np.ones((3, 3), dtype=bool)
    for r in records:
        seg = r["segmentation"]
        labels, n = ndimage.label(seg, structure=eight)
        sizes = np.bincount(labels.ravel())[1:]
        assert n <= 1 or sizes.min() >= 60  # no small island left (unless it is the only region)
        assert r["area"] == int(seg.sum())


def test_processor_and_batch(model, blocks_image):
    default = SamHfAutomaticMaskGenerator(model, **OPEN)
    explicit = SamHfAutomaticMaskGenerator(model, SamHfImageProcessor(longest_edge=128), **OPEN)
    pil_image = __import__("PIL.Image").Image.fromarray(blocks_image)
    batch = explicit.generate_batch([blocks_image, pil_image, torch.from_numpy(blocks_image).permute(2, 0, 1)])
    single = default.generate(blocks_image, progress=True)
    assert len(batch) == 3
    for records in batch:
        assert len(records) == len(single)
        for a, b in zip(records, single):
            np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
    assert default.pred_iou_thresh == -1.0 and len(default.point_grids) == 1  # Meta's attribute names


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(points_per_side=None), ValueError, "exactly one of points_per_side and point_grids"),
        (dict(point_grids=[np.zeros((2, 2))]), ValueError, "exactly one of points_per_side and point_grids"),
        (dict(points_per_side=0), ValueError, "points_per_side must be an int >= 1"),
        (dict(points_per_side=4.0), TypeError, "points_per_side"),
        (dict(points_per_batch=0), ValueError, "points_per_batch"),
        (dict(stability_score_thresh=1.5), ValueError, "stability_score_thresh must be a number in \\[0.0, 1.0\\]"),
        (dict(box_nms_thresh="0.7"), TypeError, "box_nms_thresh must be a number"),
        (dict(crop_nms_thresh=-0.1), ValueError, "crop_nms_thresh"),
        (dict(crop_n_layers=-1), ValueError, "crop_n_layers"),
        (dict(crop_overlap_ratio=1.0), ValueError, "crop_overlap_ratio"),
        (dict(crop_n_points_downscale_factor=0), ValueError, "crop_n_points_downscale_factor"),
        (dict(points_per_side=2, crop_n_layers=2, crop_n_points_downscale_factor=2), ValueError, "leaves no point"),
        (dict(min_mask_region_area=-1), ValueError, "min_mask_region_area"),
        (dict(output_mode="png"), ValueError, "output_mode must be one of"),
        (dict(mask_threshold=float("nan")), ValueError, "mask_threshold"),
        (dict(multimask_output=1), TypeError, "multimask_output must be a bool"),
        (dict(pred_iou_thresh=None), TypeError, "pred_iou_thresh"),
    ],
)
def test_bad_arguments(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        SamHfAutomaticMaskGenerator(model, **kwargs)


def test_meta_attribute_names_set_the_options(model, blocks_image):
    """As on Meta's generator, `generator.pred_iou_thresh = ...` changes what `generate` does, checked as the
    constructor checks it; explicit point grids and points_per_side replace each other."""
    generator = SamHfAutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=-1.0, stability_score_thresh=0.0)
    assert generator.generate(blocks_image)
    generator.pred_iou_thresh = 100.0
    assert generator.pred_iou_thresh == generator.options.pred_iou_thresh == 100.0 and generator.generate(blocks_image) == []
    with pytest.raises(TypeError, match="pred_iou_thresh must be a number"):
        generator.pred_iou_thresh = "abc"
    assert generator.pred_iou_thresh == 100.0  # a refused value changes nothing
    generator.pred_iou_thresh = -1.0
    generator.point_grids = [np.array([[0.5, 0.5]])]
    assert generator.points_per_side is None and {tuple(r["point_coords"][0]) for r in generator.generate(blocks_image)} == {
        (blocks_image.shape[1] / 2, blocks_image.shape[0] / 2)}
    generator.points_per_side = 3
    assert len(generator.point_grids[0]) == 9
    generator.note = "kept"  # other attributes are ordinary ones
    assert generator.note == "kept"


def test_thin_images_with_crop_layers(model):
    """Crops that would hold no pixel of a thin image are left out; the others are segmented."""
    generator = SamHfAutomaticMaskGenerator(model, points_per_side=4, crop_n_layers=3, pred_iou_thresh=-1.0, stability_score_thresh=0.0)
    for size in ((20, 60), (2, 60)):
        records = generator.generate(np.full((*size, 3), 128, np.uint8))
        assert all(r["segmentation"].shape == size for r in records)
    with pytest.raises(ValueError, match="^image: an image of"):  # too thin for the model as a whole
        generator.generate(np.zeros((1, 500, 3), np.uint8))


def test_bad_model_and_image(model):
    with pytest.raises(TypeError, match="model must be a SamHfModel"):
        SamHfAutomaticMaskGenerator(object())
    with pytest.raises(TypeError, match="processor must be"):
        SamHfAutomaticMaskGenerator(model, processor=object())
    generator = SamHfAutomaticMaskGenerator(model, points_per_side=2)
    with pytest.raises(TypeError, match="image"):
        generator.generate("not an image")
    with pytest.raises(TypeError, match="images must be a list"):
        generator.generate_batch(np.zeros((4, 4, 3), dtype=np.uint8))
