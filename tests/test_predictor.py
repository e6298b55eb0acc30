"""SamHfPredictor equals Meta's SamPredictor on identical random weights, on a non-square image."""
import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from torch.testing import assert_close

from references import randomize
from sam_hf import SamHfModel, config_for_variant
from sam_hf.meta_reference import build_meta_sam
from sam_hf.modeling.image_cache import _KEY as _CACHE_KEY
from sam_hf.predictor import SamHfPredictor
from sam_hf.processing import SamHfImageProcessor, SamHfProcessor

TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def models():
    config = config_for_variant("tiny")
    meta = randomize(build_meta_sam(config), seed=3).eval()
    ours = SamHfModel.from_meta_state_dict(meta.state_dict(), config).eval()
    return ours, meta


@pytest.fixture(scope="module")
def image():
    # Smooth structure plus noise, non-square and odd-sized: (H, W) = (97, 131).
    yy, xx = np.mgrid[:97, :131]
    base = np.stack([xx * 1.9, yy * 2.6, ((xx - 60) ** 2 + (yy - 40) ** 2 < 900) * 200.0], axis=-1)
    noise = np.random.RandomState(0).randint(0, 40, size=(97, 131, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def predictors(models, image):
    ours, meta = models
    ours_predictor = SamHfPredictor(ours, SamHfProcessor(SamHfImageProcessor(longest_edge=128)))
    meta_predictor = SamPredictor(meta)
    ours_predictor.set_image(image)
    meta_predictor.set_image(image)
    return ours_predictor, meta_predictor


def _assert_binary_close(ours, ref, ref_logits, max_pixels=5):
    """Binary masks agree except at most a handful of pixels, and only where the logit is near the threshold."""
    differ = ours != ref
    assert differ.sum() <= max_pixels, f"{differ.sum()} pixels differ"
    assert (np.abs(ref_logits[differ]) < 1e-3).all()


def test_image_state_matches_meta(predictors):
    ours, meta = predictors
    assert ours.is_image_set and ours.original_size == meta.original_size == (97, 131)
    assert ours.input_size == meta.input_size == (95, 128)
    assert_close(ours.get_image_embedding(), meta.get_image_embedding(), **TOL)


PROMPTS = {
    "one point": dict(point_coords=np.array([[60.0, 40.0]]), point_labels=np.array([1])),
    "points": dict(point_coords=np.array([[60.0, 40.0], [120.5, 90.0], [3.0, 3.0]]), point_labels=np.array([1, 0, -1])),
    "box": dict(box=np.array([20.0, 10.0, 110.0, 80.0])),
    "points+box": dict(point_coords=np.array([[60.0, 40.0], [100.0, 70.0]]), point_labels=np.array([1, 0]), box=np.array([20, 10, 110, 80])),
}


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_predict_matches_meta(predictors, prompt, multimask):
    ours, meta = predictors
    kwargs = dict(PROMPTS[prompt], multimask_output=multimask)
    logits, scores, low_res = ours.predict(**kwargs, return_logits=True)
    ref_logits, ref_scores, ref_low_res = meta.predict(**kwargs, return_logits=True)
    count = 3 if multimask else 1
    assert logits.shape == (count, 97, 131) and scores.shape == (count,) and low_res.shape == (count, 32, 32)
    assert_close(torch.from_numpy(low_res), torch.from_numpy(ref_low_res), **TOL)
    assert_close(torch.from_numpy(scores), torch.from_numpy(ref_scores), **TOL)
    assert_close(torch.from_numpy(logits), torch.from_numpy(ref_logits), **TOL)
    masks, _, _ = ours.predict(**kwargs)
    ref_masks, _, _ = meta.predict(**kwargs)
    assert masks.dtype == bool and masks.shape == ref_masks.shape
    _assert_binary_close(masks, ref_masks, ref_logits)


@pytest.mark.parametrize("multimask", [True, False])
def test_mask_input_fed_back_matches_meta(predictors, multimask):
    ours, meta = predictors
    first = dict(point_coords=np.array([[60.0, 40.0]]), point_labels=np.array([1]))
    _, scores, low_res = ours.predict(**first)
    _, ref_scores, ref_low_res = meta.predict(**first)
    best = int(np.argmax(ref_scores))
    second = dict(point_coords=np.array([[60.0, 40.0], [20.0, 80.0]]), point_labels=np.array([1, 0]), multimask_output=multimask)
    logits, scores2, low2 = ours.predict(**second, mask_input=low_res[best][None], return_logits=True)
    ref_logits, ref_scores2, ref_low2 = meta.predict(**second, mask_input=ref_low_res[best][None], return_logits=True)
    assert_close(torch.from_numpy(low2), torch.from_numpy(ref_low2), **TOL)
    assert_close(torch.from_numpy(scores2), torch.from_numpy(ref_scores2), **TOL)
    assert_close(torch.from_numpy(logits), torch.from_numpy(ref_logits), **TOL)
    masks, _, _ = ours.predict(**second, mask_input=low_res[best][None])
    _assert_binary_close(masks, ref_logits > 0, ref_logits)


def test_predict_torch_batch_matches_meta(predictors):
    ours, meta = predictors
    size = ours.original_size
    coords = torch.tensor([[[60.0, 40.0], [10.0, 10.0]], [[100.0, 70.0], [30.0, 50.0]], [[5.0, 90.0], [125.0, 2.0]]])  # (P, N, 2)
    labels = torch.tensor([[1, 0], [1, 1], [0, -1]])
    boxes = torch.tensor([[20.0, 10.0, 110.0, 80.0], [0.0, 0.0, 130.0, 96.0], [50.0, 50.0, 60.0, 55.0]])
    masks_in = torch.randn(3, 1, 32, 32)
    args = (ours.transform.apply_coords_torch(coords, size), labels, ours.transform.apply_boxes_torch(boxes, size), masks_in)
    ref_args = (meta.transform.apply_coords_torch(coords, size), labels, meta.transform.apply_boxes_torch(boxes, size), masks_in)
    for multimask in (True, False):
        logits, iou, low = ours.predict_torch(*args, multimask_output=multimask, return_logits=True)
        ref_logits, ref_iou, ref_low = meta.predict_torch(*ref_args, multimask_output=multimask, return_logits=True)
        assert logits.shape == (3, 3 if multimask else 1, 97, 131)
        assert_close(low, ref_low, **TOL)
        assert_close(iou, ref_iou, **TOL)
        assert_close(logits, ref_logits, **TOL)
        masks, _, _ = ours.predict_torch(*args, multimask_output=multimask)
        _assert_binary_close(masks.numpy(), (ref_logits > 0).numpy(), ref_logits.numpy())


def test_bgr_and_other_image_forms(models, image):
    from PIL import Image

    model, _ = models
    rgb = SamHfPredictor(model)
    rgb.set_image(image)
    for form, kwargs in [(image[..., ::-1].copy(), dict(image_format="BGR")), (Image.fromarray(image), {})]:
        other = SamHfPredictor(model)
        other.set_image(form, **kwargs)
        assert_close(other.get_image_embedding(), rgb.get_image_embedding(), rtol=0, atol=0)


def test_image_cache_follows_the_image(models, image):
    """set_image fills `image_cache` with the decoder's image work on the new embeddings; predict reuses it as it is."""
    predictor = SamHfPredictor(models[0])
    predictor.set_image(image)
    assert predictor.image_cache[_CACHE_KEY][0] is predictor.features  # made by set_image, for these embeddings
    made = {name: value for name, value in predictor.image_cache.items()}
    prompt = dict(point_coords=np.array([[60.0, 40.0], [20.0, 80.0]]), point_labels=np.array([1, 0]))
    first = predictor.predict(**prompt)
    assert all(predictor.image_cache[name] is value for name, value in made.items())  # nothing made again
    for ours, again in zip(first, predictor.predict(**prompt)):
        assert np.array_equal(ours, again)
    predictor.set_image(image[::-1].copy())
    assert predictor.image_cache[_CACHE_KEY][0] is predictor.features
    assert predictor.image_cache["tokens"] is not made["tokens"]  # the new embeddings' own work (channels-last tokens)
    fresh = SamHfPredictor(models[0])
    fresh.set_image(image[::-1].copy())
    for ours, theirs in zip(predictor.predict(**prompt), fresh.predict(**prompt)):
        assert np.array_equal(ours, theirs)


def test_kept_image_work_gives_the_masks_of_a_call_without_it(models, image):
    """A click on the kept image work (the "shared" route) gives the model's own result without a cache ("fold")."""
    predictor = SamHfPredictor(models[0])
    predictor.set_image(image)
    coords = torch.tensor([[[30.0, 50.0], [90.0, 20.0]]])  # (1, N, 2) in the model-input frame
    labels = torch.tensor([[1, 0]])
    masks, scores, low_res = predictor.predict_torch(coords, labels, return_logits=True)
    with torch.no_grad():
        alone = models[0](image_embeddings=predictor.features, input_points=coords[None], input_labels=labels[None])
    assert_close(low_res, alone.pred_masks[0], rtol=1e-4, atol=1e-5)
    assert_close(scores, alone.iou_scores[0], rtol=1e-4, atol=1e-5)


def test_reset_and_errors_before_set_image(models):
    predictor = SamHfPredictor(models[0])
    for call in (lambda: predictor.predict(box=np.array([0, 0, 5, 5])),
                 lambda: predictor.predict_torch(None, None, boxes=torch.tensor([[0.0, 0.0, 5.0, 5.0]])),
                 predictor.get_image_embedding):
        with pytest.raises(ValueError, match="set_image"):
            call()
        with pytest.raises(RuntimeError, match="set_image"):  # what Meta's SamPredictor raises
            call()
    predictor.set_image(np.zeros((20, 30, 3), np.uint8))
    assert predictor.is_image_set
    predictor.reset_image()
    assert not predictor.is_image_set and predictor.features is None and predictor.original_size is None


def test_bfloat16_model_runs(models, image):
    model = SamHfModel.from_meta_state_dict(models[1].state_dict(), config_for_variant("tiny")).to(torch.bfloat16).eval()
    predictor = SamHfPredictor(model)
    predictor.set_image(image)
    assert predictor.get_image_embedding().dtype == torch.bfloat16
    masks, scores, low_res = predictor.predict(**PROMPTS["points+box"])
    assert masks.shape == (3, 97, 131) and scores.dtype == np.float32 and np.isfinite(low_res).all()


BAD_PREDICT = {
    "coords without labels": (dict(point_coords=np.array([[1.0, 2.0]])), ValueError, "point_coords"),
    "labels without coords": (dict(point_labels=np.array([1])), ValueError, "point_labels"),
    "coords shape": (dict(point_coords=np.array([1.0, 2.0]), point_labels=np.array([1])), ValueError, "(N, 2)"),
    "labels count": (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1, 0])), ValueError, "point_labels"),
    "label value": (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([2])), ValueError, "point_labels"),
    "coords nan": (dict(point_coords=np.array([[np.nan, 2.0]]), point_labels=np.array([1])), ValueError, "point_coords"),
    "box inf": (dict(box=np.array([0.0, 0.0, np.inf, 5.0])), ValueError, "box"),
    "box shape": (dict(box=np.array([0.0, 0.0, 5.0])), ValueError, "box"),
    "box x1 < x0": (dict(box=np.array([10.0, 0.0, 5.0, 5.0])), ValueError, "x0 <= x1"),
    "mask shape": (dict(box=np.array([0, 0, 5, 5]), mask_input=np.zeros((32, 32))), ValueError, "(1, 32, 32)"),
    "coords strings": (dict(point_coords=[["a", "b"]], point_labels=[1]), TypeError, "point_coords"),
    "labels numeric strings": (dict(point_coords=[[1.0, 2.0]], point_labels=np.array(["1"])), TypeError, "point_labels must be a numeric array"),
    "coords complex": (dict(point_coords=np.array([[1 + 1j, 2.0]]), point_labels=[1]), TypeError, "point_coords must be a numeric array"),
    "coords bool": (dict(point_coords=np.array([[True, False]]), point_labels=[1]), TypeError, "point_coords"),
    "box beyond float32": (dict(box=[0.0, 0.0, 1e39, 1e39]), ValueError, "box must hold values within float32's range"),
    "mask bool": (dict(box=[0, 0, 5, 5], mask_input=np.zeros((1, 32, 32), bool)), TypeError, "mask_input must be a floating-point array"),
}


@pytest.mark.parametrize("case", list(BAD_PREDICT))
def test_predict_bad_input(predictors, case):
    kwargs, error, fragment = BAD_PREDICT[case]
    with pytest.raises(error) as info:
        predictors[0].predict(**kwargs)
    assert fragment in str(info.value)


def test_predict_torch_and_set_image_bad_input(models, predictors):
    predictor = predictors[0]
    with pytest.raises(ValueError, match="prompt count"):
        predictor.predict_torch(torch.zeros(2, 1, 2), torch.ones(2, 1, dtype=torch.long), boxes=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="point_coords"):
        predictor.predict_torch(torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="mask_input"):
        predictor.predict_torch(None, None, mask_input=torch.zeros(1, 32, 32))
    fresh = SamHfPredictor(models[0])
    with pytest.raises(ValueError, match="image_format"):
        fresh.set_image(np.zeros((5, 5, 3), np.uint8), image_format="HSV")
    with pytest.raises(ValueError, match="transformed_image"):
        fresh.set_torch_image(torch.zeros(1, 3, 64, 64), (64, 64))
    with pytest.raises(ValueError, match="original_image_size"):
        fresh.set_torch_image(torch.zeros(1, 3, 128, 100), (50, 0))
    with pytest.raises(ValueError, match="resized"):
        fresh.set_torch_image(torch.zeros(1, 3, 128, 100), (50, 70))
    with pytest.raises(ValueError, match="empty"):
        fresh.set_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="longest_edge"):
        SamHfPredictor(models[0], SamHfImageProcessor(longest_edge=256))
    with pytest.raises(TypeError, match="processor"):
        SamHfPredictor(models[0], processor="sam")
    for model in (None, "facebook/sam-vit-base"):
        with pytest.raises(TypeError, match="model must be a SamHfModel"):
            SamHfPredictor(model)
    for size in ((float("inf"), 70), (50.5, 70), ("50", 70), (50,)):
        with pytest.raises(ValueError, match="original_image_size must be"):
            fresh.set_torch_image(torch.zeros(1, 3, 128, 100), size)
    for coords, labels, word in ((torch.zeros(1, 1, 2, dtype=torch.complex64), torch.ones(1, 1, dtype=torch.long), "point_coords"),
                                 (torch.zeros(1, 1, 2), torch.ones(1, 1), "point_labels"),
                                 (torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.bool), "point_labels")):
        with pytest.raises(TypeError, match=f"{word} must be"):
            predictor.predict_torch(coords, labels)
    with pytest.raises(TypeError, match="boxes must be a floating-point tensor"):
        predictor.predict_torch(None, None, boxes=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="^image: an image of"):
        fresh.set_image(np.zeros((1, 500, 3), np.uint8))
    with pytest.raises(TypeError, match="return_logits must be a bool"):
        predictor.predict_torch(torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.long), return_logits="yes")


def test_no_prompt_and_numpy_bools(predictors):
    """Zero prompts give empty results of the usual shapes; numpy bools are bools."""
    predictor = predictors[0]
    masks, scores, low_res = predictor.predict_torch(torch.zeros(0, 1, 2), torch.zeros(0, 1, dtype=torch.long))
    height, width = predictor.original_size
    assert masks.shape == (0, 3, height, width) and masks.dtype == torch.bool
    assert scores.shape == (0, 3) and low_res.shape == (0, 3, 32, 32)
    point = dict(point_coords=np.array([[10.0, 12.0]]), point_labels=np.array([1]))
    one, _, _ = predictor.predict(**point, multimask_output=np.bool_(False), return_logits=np.bool_(True))
    expected, _, _ = predictor.predict(**point, multimask_output=False, return_logits=True)
    np.testing.assert_array_equal(one, expected)
