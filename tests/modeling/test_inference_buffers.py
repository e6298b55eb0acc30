"""Inference reuses per-thread buffers for large temporaries: results must never alias them."""

import pytest
import torch

from sam_hf.modeling.layers import clear_workspace


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
def test_outputs_survive_later_calls(tiny_model, dtype, grad_mode):
    model = tiny_model.to(dtype)
    context = torch.no_grad if grad_mode == "no_grad" else torch.inference_mode
    try:
        with context():
            first_pixels, second_pixels = torch.randn(2, 1, 3, 128, 128, dtype=dtype)
            first = model.get_image_embeddings(first_pixels)
            kept = first.clone()
            second = model.get_image_embeddings(second_pixels)
            assert torch.equal(first, kept)
            assert not torch.equal(first, second)
            masks = model(image_embeddings=first, input_points=torch.rand(1, 3, 1, 2) * 128).pred_masks
            kept_masks = masks.clone()
            model(image_embeddings=second, input_points=torch.rand(1, 3, 1, 2) * 128)
            assert torch.equal(masks, kept_masks)
            clear_workspace()
            assert torch.equal(model.get_image_embeddings(first_pixels), kept)  # rebuilt buffers, same result
    finally:
        model.to(torch.float32)


def test_positional_grid_is_kept_only_while_its_matrix_is_unchanged():
    from sam_hf.modeling.layers import SamHfPositionalEmbedding

    encoding = SamHfPositionalEmbedding(num_pos_feats=8)
    with torch.no_grad():
        first = encoding.grid(4)
        assert encoding.grid(4) is first  # kept
        assert encoding.grid(5).shape == (16, 5, 5)  # another size: computed, not the kept one
        encoding.positional_embedding.mul_(2)  # an in-place update (an optimizer step, load_state_dict)
        changed = encoding.grid(4)
    assert not torch.equal(changed, first)
    with torch.inference_mode():
        assert torch.equal(encoding.grid(4), changed)
    recorded = encoding.grid(4)  # grad on: computed afresh, with a graph back to the matrix
    assert recorded.grad_fn is not None
    assert torch.equal(recorded.detach(), changed)
