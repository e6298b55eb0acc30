"""sam_hf inside `torch.autocast` (Accelerate's mixed precision): the split of `mixed_precision()`, the weights left as
they are, and training under autocast's own rules (see modeling/autocast.py)."""

import copy

import pytest
import torch
from torch.testing import assert_close

from references import randomize
from sam_hf import SamHfModel, SamHfPredictor, config_for_variant
from sam_hf.modeling import autocast as sam_autocast

IMAGE = 128


@pytest.fixture(scope="module")
def model():
    return randomize(SamHfModel(config_for_variant("tiny")), seed=3).eval()


def _inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=generator)
    points = torch.rand(2, 3, 1, 2, generator=generator) * IMAGE  # (B, P, N, 2)
    boxes = torch.tensor([[[5.0, 8.0, 70.0, 90.0]] * 3, [[20.0, 4.0, 100.0, 60.0]] * 3])  # (B, P, 4)
    return pixels, points, boxes


def _run(model, pixels, points, boxes, **kwargs):
    return model(pixels, input_points=points, input_boxes=boxes, multimask_output=True, **kwargs)


@pytest.mark.parametrize("grad", [False, True])  # no_grad, and grad on with nothing requiring it (a frozen model)
def test_inference_under_autocast_is_mixed_precision(model, grad):
    """The encoder in bf16 on its weights cast for the call, the decoder in fp32: what `mixed_precision()` computes."""
    model.requires_grad_(False)
    mixed = copy.deepcopy(model).mixed_precision()
    pixels, points, boxes = _inputs()
    with torch.set_grad_enabled(grad):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = _run(model, pixels, points, boxes)
        expected = _run(mixed, pixels, points, boxes)
    assert got.image_embeddings.dtype == torch.bfloat16 and got.pred_masks.dtype == torch.float32
    assert_close(got.image_embeddings, expected.image_embeddings, rtol=0, atol=0)
    assert_close(got.pred_masks, expected.pred_masks, rtol=0, atol=0)
    assert_close(got.iou_scores, expected.iou_scores, rtol=0, atol=0)
    model.requires_grad_(True)


def test_the_model_and_its_later_fp32_calls_are_unchanged(model):
    pixels, points, boxes = _inputs(1)
    with torch.no_grad():
        before = _run(model, pixels, points, boxes)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _run(model, pixels, points, boxes)
            model.get_image_wide_positional_embeddings()  # kept for later calls: must not be kept in bf16
        after = _run(model, pixels, points, boxes)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert_close(after.pred_masks, before.pred_masks, rtol=0, atol=0)
    assert model.get_image_wide_positional_embeddings().dtype == torch.float32


def test_autocast_takes_effect_in_the_encoder_only(model):
    """The embeddings differ from fp32 by bf16 rounding; the decoder rounds nothing more (same embeddings in, same out)."""
    pixels, points, boxes = _inputs(2)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = _run(model, pixels, points, boxes)
        full = _run(model, pixels, points, boxes)
        again = _run(model, None, points, boxes, image_embeddings=low.image_embeddings.float())
    difference = (low.image_embeddings.float() - full.image_embeddings).abs().max()
    assert 0 < difference < 0.05 * full.image_embeddings.abs().max()
    assert_close(low.pred_masks, again.pred_masks, rtol=0, atol=0)


def test_training_under_autocast_reaches_fp32_weights_close_to_fp32_gradients(model):
    trained = copy.deepcopy(model).train()
    pixels, points, boxes = _inputs(3)
    grads = {}
    for name, enabled in (("fp32", False), ("bf16", True)):
        trained.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = _run(trained, pixels, points, boxes)
            loss = out.pred_masks.float().square().mean() + out.iou_scores.float().square().mean()
        loss.backward()
        grads[name] = {n: p.grad for n, p in trained.named_parameters() if p.grad is not None}
    assert set(grads["bf16"]) == set(grads["fp32"]) and len(grads["fp32"]) > 100
    encoder = [n for n in grads["fp32"] if n.startswith("vision_encoder.")]
    assert encoder and all(grads["bf16"][n].dtype == torch.float32 for n in grads["bf16"])
    for name in grads["fp32"]:
        a, b = grads["bf16"][name].flatten(), grads["fp32"][name].flatten()
        if b.norm() > 1e-6:
            assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.98, name
    differ = [n for n in encoder if not torch.equal(grads["bf16"][n], grads["fp32"][n])]
    assert len(differ) == len(encoder)  # the encoder's matmuls did run in bf16


def test_frozen_encoder_fine_tuning_under_autocast(model):
    """Decoder-only fine-tuning (the encoder frozen): the encoder takes its bf16 inference paths, the decoder trains
    in fp32, with the gradients of the `mixed_precision()` model."""
    tuned = copy.deepcopy(model).train()
    tuned.vision_encoder.requires_grad_(False)
    mixed = copy.deepcopy(tuned).mixed_precision()
    pixels, points, boxes = _inputs(4)
    grads = []
    for candidate, enabled in ((tuned, True), (mixed, False)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = _run(candidate, pixels, points, boxes)
        out.pred_masks.square().mean().backward()
        grads.append({n: p.grad for n, p in candidate.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and all(n.startswith("mask_decoder.") or "prompt" in n or "shared" in n for n in grads[0])
    for name in grads[0]:
        assert_close(grads[0][name], grads[1][name], rtol=0, atol=0, msg=name)


def test_predictor_under_autocast(model):
    predictor, mixed = SamHfPredictor(model), SamHfPredictor(copy.deepcopy(model).mixed_precision())
    image = (torch.rand(90, 120, 3, generator=torch.Generator().manual_seed(5)) * 255).to(torch.uint8).numpy()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        predictor.set_image(image)
        got = predictor.predict(point_coords=[[40, 30]], point_labels=[1])
    mixed.set_image(image)
    expected = mixed.predict(point_coords=[[40, 30]], point_labels=[1])
    for a, b in zip(got, expected):
        assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=0, atol=0)


def test_autocast_dtype():
    assert sam_autocast.autocast_dtype("cpu") is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sam_autocast.autocast_dtype("cpu") == torch.bfloat16
