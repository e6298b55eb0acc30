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
    ],
)
def test_bad_model_inputs(tiny_model, kwargs, error, words):
    with pytest.raises(error, match=words):
        tiny_model(**kwargs)


def test_bad_attention_implementation(tiny_model):
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        tiny_model.set_attn_implementation("flash")
