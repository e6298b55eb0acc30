"""sam_hf equals Meta's segment_anything on identical random weights (through the Meta-format state dict)."""

import pytest
import torch
from torch.testing import assert_close

from references import meta_from_ours, randomize
from sam_hf import SamHfModel, config_for_variant

pytestmark = pytest.mark.usefixtures("decoder_path")  # with and without the compiled decoder kernel


def _meta_decode(meta, embeddings, points=None, labels=None, boxes=None, masks=None, multimask=True):
    sparse, dense = meta.prompt_encoder(points=None if points is None else (points, labels), boxes=boxes, masks=masks)
    return meta.mask_decoder(image_embeddings=embeddings, image_pe=meta.prompt_encoder.get_dense_pe(),
                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)


@pytest.mark.parametrize("image_size,window,globals_", [(128, 4, [1]), (160, 4, [0]), (256, 6, [1])])
@torch.no_grad()
def test_image_encoder_matches_meta(image_size, window, globals_):
    """Includes grids the window does not divide (10 with window 4, 16 with window 6): Meta's zero padding."""
    model = randomize(SamHfModel(config_for_variant("tiny", image_size=image_size, window_size=window, global_attn_indexes=globals_)))
    meta = meta_from_ours(model.eval())
    pixels = torch.randn(2, 3, image_size, image_size)
    for implementation in ("sdpa", "eager"):
        model.set_attn_implementation(implementation)
        assert_close(model.get_image_embeddings(pixels), meta.image_encoder(pixels), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_prompt_encoder_matches_meta(tiny_model, meta_tiny):
    points = torch.rand(3, 2, 2) * 128
    labels = torch.tensor([[1, 0], [1, -1], [0, 0]])
    boxes = torch.tensor([[1.0, 2.0, 60.0, 90.0], [10.0, 10.0, 20.0, 30.0], [0.0, 0.0, 127.0, 127.0]])
    masks = torch.randn(3, 1, 32, 32)
    for use_points, use_boxes, use_masks in [(1, 0, 0), (0, 1, 0), (1, 1, 0), (1, 1, 1), (0, 0, 1)]:
        sparse, valid, dense = tiny_model.prompt_encoder(
            positional_embedding=tiny_model.shared_image_embedding, batch_size=1,
            input_points=points[None] if use_points else None, input_labels=labels[None] if use_points else None,
            input_boxes=boxes[None] if use_boxes else None, input_masks=masks[:, 0][None] if use_masks else None,
        )
        ref_sparse, ref_dense = meta_tiny.prompt_encoder(
            points=(points, labels) if use_points else None, boxes=boxes if use_boxes else None, masks=masks if use_masks else None
        )
        if use_points or use_boxes:
            assert_close(sparse[0], ref_sparse, rtol=1e-5, atol=1e-5)
        assert valid.all()
        assert_close(dense[0].expand_as(ref_dense) if not use_masks else dense[0], ref_dense, rtol=1e-5, atol=1e-5)
    assert_close(tiny_model.get_image_wide_positional_embeddings(), meta_tiny.prompt_encoder.get_dense_pe()[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", ["points", "box", "points+box", "points+box+mask", "mask"])
@torch.no_grad()
def test_decoder_matches_meta(tiny_model, meta_tiny, prompt, multimask):
    embeddings = torch.randn(1, 32, 8, 8)
    points, labels = torch.rand(4, 3, 2) * 128, torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, -1], [1, 0, 0]])
    boxes = torch.sort(torch.rand(4, 2, 2) * 128, dim=1).values.reshape(4, 4)
    masks = torch.randn(4, 1, 32, 32)
    use_points, use_box, use_mask = "points" in prompt, "box" in prompt, "mask" in prompt
    ours = tiny_model(
        image_embeddings=embeddings, multimask_output=multimask,
        input_points=points[None] if use_points else None, input_labels=labels[None] if use_points else None,
        input_boxes=boxes[None] if use_box else None, input_masks=masks[:, 0][None] if use_mask else None,
    )
    ref_masks, ref_iou = _meta_decode(meta_tiny, embeddings, points if use_points else None, labels,
                                      boxes if use_box else None, masks if use_mask else None, multimask)
    count = ref_masks.shape[0]
    assert ours.pred_masks.shape == (1, count, 3 if multimask else 1, 32, 32)
    assert_close(ours.pred_masks[0], ref_masks, rtol=1e-4, atol=1e-4)
    assert_close(ours.iou_scores[0], ref_iou, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_end_to_end_with_image_matches_meta(tiny_model, meta_tiny):
    pixels = torch.randn(1, 3, 128, 128)
    points, labels = torch.rand(2, 1, 2) * 128, torch.ones(2, 1, dtype=torch.long)
    ours = tiny_model(pixels, input_points=points[None], input_labels=labels[None])
    ref_masks, ref_iou = _meta_decode(meta_tiny, meta_tiny.image_encoder(pixels), points, labels)
    assert_close(ours.pred_masks[0], ref_masks, rtol=1e-4, atol=1e-4)
    assert_close(ours.iou_scores[0], ref_iou, rtol=1e-4, atol=1e-4)
