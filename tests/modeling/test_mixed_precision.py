"""SamHfModel.mixed_precision: the vision encoder in bf16, everything after it in float32."""
import copy

import pytest
import torch

from sam_hf import SamHfModel


def _inputs():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, 128, 128, generator=generator)
    points = torch.rand(1, 3, 1, 2, generator=generator) * 128
    return pixels, points, torch.ones(1, 3, 1, dtype=torch.long)


def test_decoder_in_float32_on_bf16_embeddings(tiny_model):
    mixed = copy.deepcopy(tiny_model).mixed_precision(torch.bfloat16)
    assert mixed.vision_encoder.neck.conv1.weight.dtype == torch.bfloat16
    assert {p.dtype for n, p in mixed.named_parameters() if not n.startswith("vision_encoder.")} == {torch.float32}
    pixels, points, labels = _inputs()
    with torch.no_grad():
        out = mixed(pixel_values=pixels, input_points=points, input_labels=labels)
        embeddings = mixed.get_image_embeddings(pixels)
        assert embeddings.dtype == torch.bfloat16
        # the fp32 model's decoder on the same (bf16-rounded) embeddings: the same float32 computation
        expected = tiny_model(image_embeddings=embeddings.float(), input_points=points, input_labels=labels)
    assert out.pred_masks.dtype == torch.float32
    torch.testing.assert_close(out.pred_masks, expected.pred_masks, rtol=0, atol=0)
    torch.testing.assert_close(out.iou_scores, expected.iou_scores, rtol=0, atol=0)


def test_bad_dtype(tiny_model):
    with pytest.raises(TypeError, match="encoder_dtype must be a floating torch.dtype"):
        copy.deepcopy(tiny_model).mixed_precision(torch.int8)
    with pytest.raises(TypeError, match="encoder_dtype"):
        copy.deepcopy(tiny_model).mixed_precision("bf16")


def test_generator_on_a_mixed_model(tiny_model):
    from sam_hf import SamHfAutomaticMaskGenerator

    mixed = copy.deepcopy(tiny_model).mixed_precision()
    image = (torch.rand(96, 120, 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8).numpy()
    records = SamHfAutomaticMaskGenerator(mixed, points_per_side=4, pred_iou_thresh=-1.0, stability_score_thresh=0.0).generate(image)
    assert len(records) > 0 and all(r["segmentation"].shape == (96, 120) for r in records)
