"""Padding prompts to a common count never changes a result; eager and SDPA agree."""

import torch
from torch.testing import assert_close

PAD = -10


@torch.no_grad()
def test_padded_points_equal_unpadded(tiny_model):
    embeddings = torch.randn(2, 32, 8, 8)
    # image 0: prompts with 1 and 3 points; image 1: one prompt with 2 points -> padded to (2, 2, 3)
    p00, p01, p10 = torch.rand(1, 2) * 128, torch.rand(3, 2) * 128, torch.rand(2, 2) * 128
    l00, l01, l10 = torch.tensor([1]), torch.tensor([1, 0, 1]), torch.tensor([0, 1])
    points = torch.zeros(2, 2, 3, 2)
    labels = torch.full((2, 2, 3), PAD)
    points[0, 0, :1], labels[0, 0, :1] = p00, l00
    points[0, 1], labels[0, 1] = p01, l01
    points[1, 0, :2], labels[1, 0, :2] = p10, l10
    points[1, 1], labels[1, 1] = torch.rand(3, 2) * 128, torch.tensor([1, 1, 1])  # a padded-prompt slot: ignored below
    batched = tiny_model(image_embeddings=embeddings, input_points=points, input_labels=labels)
    for (b, p), (pts, lbl) in {(0, 0): (p00, l00), (0, 1): (p01, l01), (1, 0): (p10, l10)}.items():
        single = tiny_model(image_embeddings=embeddings[b : b + 1], input_points=pts[None, None], input_labels=lbl[None, None])
        assert_close(batched.pred_masks[b, p], single.pred_masks[0, 0], rtol=1e-5, atol=1e-5)
        assert_close(batched.iou_scores[b, p], single.iou_scores[0, 0], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_padded_points_with_boxes_equal_unpadded(tiny_model):
    embeddings = torch.randn(1, 32, 8, 8)
    box = torch.tensor([[[10.0, 12.0, 80.0, 90.0]]])
    point, label = torch.tensor([[[[40.0, 50.0]]]]), torch.tensor([[[1]]])
    padded_points = torch.cat([point, torch.full((1, 1, 4, 2), 3.0)], dim=2)
    padded_labels = torch.cat([label, torch.full((1, 1, 4), PAD)], dim=2)
    a = tiny_model(image_embeddings=embeddings, input_points=point, input_labels=label, input_boxes=box)
    b = tiny_model(image_embeddings=embeddings, input_points=padded_points, input_labels=padded_labels, input_boxes=box)
    assert_close(a.pred_masks, b.pred_masks, rtol=1e-5, atol=1e-5)
    assert_close(a.iou_scores, b.iou_scores, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_eager_equals_sdpa(tiny_model):
    pixels = torch.randn(2, 3, 128, 128)
    points = torch.rand(2, 2, 3, 2) * 128
    labels = torch.tensor([[[1, 0, PAD], [1, 1, 1]], [[0, PAD, PAD], [1, -1, 0]]])
    boxes = torch.tensor([[[1.0, 2.0, 50.0, 60.0], [0.0, 0.0, 127.0, 127.0]], [[5.0, 5.0, 6.0, 7.0], [30.0, 20.0, 90.0, 100.0]]])
    outputs = {}
    try:
        for implementation in ("eager", "sdpa"):
            tiny_model.set_attn_implementation(implementation)
            outputs[implementation] = tiny_model(pixels, input_points=points, input_labels=labels, input_boxes=boxes)
    finally:
        tiny_model.set_attn_implementation("sdpa")
    assert_close(outputs["eager"].pred_masks, outputs["sdpa"].pred_masks, rtol=1e-4, atol=1e-4)
    assert_close(outputs["eager"].iou_scores, outputs["sdpa"].iou_scores, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_attentions_and_hidden_states_are_returned(tiny_model):
    out = tiny_model(torch.randn(1, 3, 128, 128), input_points=torch.rand(1, 1, 1, 2) * 128,
                     output_attentions=True, output_hidden_states=True)
    config = tiny_model.config
    assert len(out.vision_hidden_states) == config.vision_config.num_hidden_layers + 1
    assert out.vision_hidden_states[0].shape == (1, 8, 8, 32)
    assert len(out.vision_attentions) == config.vision_config.num_hidden_layers
    windowed = out.vision_attentions[0]  # block 0: 4x4 windows over the 8x8 grid -> 4 windows of 16 tokens
    assert windowed.shape == (4, 2, 16, 16)
    assert_close(windowed.sum(-1), torch.ones_like(windowed.sum(-1)))
    assert len(out.mask_decoder_attentions) == 3 * config.mask_decoder_config.num_hidden_layers + 1
