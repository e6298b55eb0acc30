"""Every wrong input raises ValueError/TypeError naming the argument, the expected form and what came."""

import pytest
import torch

E = torch.randn(1, 32, 8, 8)
P = torch.rand(1, 1, 2, 2) * 128
L = torch.ones(1, 1, 2, dtype=torch.long)


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        (dict(), ValueError, "exactly one of pixel_values and image_embeddings"),
        (dict(pixel_values=torch.randn(1, 3, 128, 128), image_embeddings=E), ValueError, "exactly one"),
        (dict(pixel_values=torch.randn(1, 3, 100, 128)), ValueError, r"pixel_values must have shape \(B, 3, 128, 128\).*\(1, 3, 100, 128\)"),
        (dict(pixel_values=torch.randn(0, 3, 128, 128)), ValueError, "batch size 0"),
        (dict(pixel_values=[[1.0]]), TypeError, "pixel_values must be a torch.Tensor"),
        (dict(image_embeddings=torch.randn(1, 16, 8, 8)), ValueError, "image_embeddings must have shape"),
        (dict(image_embeddings=E, input_points=torch.rand(1, 2, 2)), ValueError, r"input_points must have shape \(B, P, N, 2\)"),
        (dict(image_embeddings=E, input_points=torch.rand(1, 1, 2, 3)), ValueError, "input_points must have shape"),
        (dict(image_embeddings=E, input_points=torch.tensor([[[[float("nan"), 1.0]]]])), ValueError, "input_points must contain only finite"),
        (dict(image_embeddings=E, input_points=torch.tensor([[[[float("inf"), 1.0]]]])), ValueError, "finite"),
        (dict(image_embeddings=E, input_points=torch.ones(1, 1, 1, 2, dtype=torch.long)), TypeError, "input_points must be a floating-point"),
        (dict(image_embeddings=E, input_points=P, input_labels=torch.tensor([[[1, 2]]])), ValueError, r"input_labels must be in .*got \[2\]"),
        (dict(image_embeddings=E, input_points=P, input_labels=torch.ones(1, 1, 3, dtype=torch.long)), ValueError, r"input_labels must have shape \(B, P, N\)"),
        (dict(image_embeddings=E, input_points=P, input_labels=torch.ones(1, 1, 2)), TypeError, "input_labels must be an integer tensor"),
        (dict(image_embeddings=E, input_labels=L), ValueError, "input_labels were given without input_points"),
        (dict(image_embeddings=E, input_points=torch.rand(2, 1, 2, 2)), ValueError, "input_points has 2 images but the image batch has 1"),
        (dict(image_embeddings=E, input_boxes=torch.tensor([[[50.0, 10.0, 20.0, 40.0]]])), ValueError, "x1 < x0"),
        (dict(image_embeddings=E, input_boxes=torch.tensor([[[10.0, 50.0, 20.0, 40.0]]])), ValueError, "y1 < y0"),
        (dict(image_embeddings=E, input_boxes=torch.rand(1, 4)), ValueError, r"input_boxes must have shape \(B, P, 4\)"),
        (dict(image_embeddings=E, input_boxes=torch.tensor([[[0.0, 0.0, float("nan"), 1.0]]])), ValueError, "input_boxes must contain only finite"),
        (dict(image_embeddings=E, input_boxes=torch.tensor([[[1.0, 1.0, 2.0, 2.0]]] * 2)), ValueError, "input_boxes has 2 images"),
        (dict(image_embeddings=E, input_points=P, input_boxes=torch.tensor([[[1.0, 1, 2, 2], [1, 1, 3, 3]]])), ValueError, "input_boxes has 2 prompts per image but input_points has 1"),
        (dict(image_embeddings=E, input_masks=torch.randn(1, 1, 64, 64)), ValueError, r"input_masks must have shape \(B, 1 or P, 32, 32\)"),
        (dict(image_embeddings=E, input_points=P, input_masks=torch.randn(1, 3, 32, 32)), ValueError, "1 or P=1 masks"),
        (dict(image_embeddings=E, input_masks=torch.full((1, 1, 32, 32), float("nan"))), ValueError, "input_masks must contain only finite"),
        (dict(image_embeddings=E, bogus=1), TypeError, "unexpected arguments"),
        (dict(pixel_values=torch.zeros(1, 3, 128, 128, dtype=torch.uint8)), TypeError, "pixel_values must be a floating-point tensor"),
        (dict(pixel_values=torch.full((1, 3, 128, 128), float("nan"))), ValueError, "pixel_values must contain only finite"),
        (dict(image_embeddings=E.long()), TypeError, "image_embeddings must be a floating-point tensor"),
        (dict(image_embeddings=torch.cat([E, E.clone().index_fill_(2, torch.tensor([3]), float("nan"))])), ValueError,
         "image_embeddings must contain only finite"),
        (dict(image_embeddings=E.clone().index_fill_(3, torch.tensor([0]), float("-inf")), image_cache={}), ValueError,
         "image_embeddings must contain only finite"),
        (dict(image_embeddings=torch.full_like(E, float("nan")), input_points=torch.zeros(1, 0, 1, 2)), ValueError,
         "image_embeddings must contain only finite"),  # no prompt: checked all the same
        (dict(image_embeddings=torch.zeros(0, 32, 8, 8), input_points=torch.zeros(0, 1, 1, 2)), ValueError, "image_embeddings must hold at least one image"),
        (dict(image_embeddings=E, multimask_output="no"), TypeError, "multimask_output must be a bool, got str"),
        (dict(image_embeddings=E, multimask_output=None), TypeError, "multimask_output must be a bool"),
        (dict(image_embeddings=E, mask_iou_threshold=float("nan")), ValueError, "mask_iou_threshold must be a number"),
        (dict(image_embeddings=E, mask_iou_threshold="0.5"), TypeError, "mask_iou_threshold must be a float"),
    ],
)
def test_bad_model_inputs(tiny_model, kwargs, error, words):
    with pytest.raises(error, match=words):
        tiny_model(**kwargs)


def test_bad_attention_implementation(tiny_model):
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        tiny_model.set_attn_implementation("flash")


@pytest.mark.parametrize(
    "prompts",
    [dict(input_points=torch.zeros(1, 0, 1, 2)), dict(input_points=torch.zeros(1, 0, 1, 2), input_labels=torch.ones(1, 0, 1, dtype=torch.long)),
     dict(input_boxes=torch.zeros(1, 0, 4)), dict(input_masks=torch.zeros(1, 0, 32, 32))],
)
@pytest.mark.parametrize("multimask", [True, False])
def test_no_prompt_gives_empty_outputs_of_the_usual_shapes(tiny_model, prompts, multimask):
    """P = 0 prompts (an empty selection, a filtered batch) is valid: masks (B, 0, M, 4g, 4g), scores (B, 0, M)."""
    with torch.no_grad():
        out = tiny_model(image_embeddings=E, multimask_output=multimask, **prompts)
        masks = 3 if multimask else 1
        assert out.pred_masks.shape == (1, 0, masks, 32, 32) and out.iou_scores.shape == (1, 0, masks)
        assert out.pred_masks.dtype == out.iou_scores.dtype == torch.float32
        pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
        out = tiny_model(pixel_values=pixels, multimask_output=multimask, **prompts)
        assert out.pred_masks.shape == (1, 0, masks, 32, 32)
        torch.testing.assert_close(out.image_embeddings, tiny_model.get_image_embeddings(pixels))  # still returned


def test_float64_embeddings_are_decoded_as_the_model_dtype(tiny_model):
    with torch.no_grad():
        wide = tiny_model(image_embeddings=E.double(), input_points=torch.rand(1, 5, 1, 2, generator=torch.Generator().manual_seed(1)) * 128)
        same = tiny_model(image_embeddings=E, input_points=torch.rand(1, 5, 1, 2, generator=torch.Generator().manual_seed(1)) * 128)
    assert wide.pred_masks.dtype == torch.float32
    torch.testing.assert_close(wide.pred_masks, same.pred_masks, rtol=0, atol=0)


def test_transformers_persam_inputs_as_none_change_nothing(tiny_model):
    with torch.no_grad():
        out = tiny_model(image_embeddings=E, input_points=P, attention_similarity=None, target_embedding=None)
        assert torch.equal(out.pred_masks, tiny_model(image_embeddings=E, input_points=P).pred_masks)


def test_a_transformers_config_is_refused_with_the_conversion():
    from transformers import SamConfig

    from sam_hf import SamHfConfig, SamHfModel

    with pytest.raises(TypeError, match="config must be a SamHfConfig, got SamConfig"):
        SamHfModel(SamConfig())
    assert SamHfConfig(**SamConfig().to_dict()).vision_config.hidden_size == 768  # the conversion the message gives


def test_embeddings_are_checked_once_per_kept_image_cache(tiny_model, monkeypatch):
    """A kept image_cache was filled for embeddings it checked: its later calls do not pass over them again; a call
    without one checks every time; a refused call leaves the dict as it was."""
    from sam_hf.modeling import inputs

    checked = []
    finite = inputs._finite
    monkeypatch.setattr(inputs, "_finite", lambda name, value: (checked.append(name), finite(name, value))[1])
    embeddings, cache = E.clone(), {}
    with torch.no_grad():
        for _ in range(3):
            tiny_model(image_embeddings=embeddings, input_points=P, image_cache=cache)
        assert checked.count("image_embeddings") == 1
        for _ in range(2):
            tiny_model(image_embeddings=embeddings, input_points=P)
        assert checked.count("image_embeddings") == 3
        kept = dict(cache)
        with pytest.raises(ValueError, match="image_embeddings must contain only finite"):
            tiny_model(image_embeddings=torch.full_like(E, float("nan")), input_points=P, image_cache=cache)
        assert cache.keys() == kept.keys() and all(cache[k] is kept[k] for k in kept)
        embeddings[0, 0, 0, 0] = float("inf")  # in place: the kept dict is refilled, so checked again
        with pytest.raises(ValueError, match="image_embeddings must contain only finite"):
            tiny_model(image_embeddings=embeddings, input_points=P, image_cache=cache)
