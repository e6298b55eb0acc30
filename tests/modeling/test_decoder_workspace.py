"""The mask decoder's CPU inference paths: workspace buffers, per-prompt oneDNN logits, banded upscaling.
Each must give what the plain PyTorch path (taken while autograd records) gives, and never leak between calls."""

import pytest
import torch
from torch.testing import assert_close

import sam_hf.modeling.mask_upscaling as mask_upscaling
import sam_hf.modeling.prompt_groups as prompt_groups
from sam_hf.modeling.layers import add_matmul_nt_, layer_norm_into

pytestmark = pytest.mark.usefixtures("decoder_path")  # with and without the compiled decoder kernel


def test_layer_norm_into_is_the_layer_norm_bit_for_bit():
    norm = torch.nn.LayerNorm(48, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
        states = torch.randn(2, 3, 700, 48) * 3 + 1
        out = torch.empty_like(states)
        returned = layer_norm_into(norm, states, out, rows=256)  # 4200 rows: 16 full blocks and a partial one
        assert returned is out
        assert torch.equal(out, norm(states))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_matmul_nt_matches_baddbmm(dtype):
    generator = torch.Generator().manual_seed(0)
    out = torch.randn(3, 10, 70, generator=generator).to(dtype)
    left, right = torch.randn(3, 10, 24, generator=generator).to(dtype), torch.randn(3, 70, 24, generator=generator).to(dtype)
    expected = torch.baddbmm(out.float(), left.float(), right.float().transpose(1, 2))
    with torch.no_grad():
        result = add_matmul_nt_(out.clone(), left, right)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 0.1}
    assert_close(result.float(), expected, **tolerance)


def test_add_matmul_nt_keeps_autograd():
    out, left, right = torch.randn(2, 4, 6), torch.randn(2, 4, 5, requires_grad=True), torch.randn(2, 6, 5)
    add_matmul_nt_(out.clone(), left, right).sum().backward()
    assert_close(left.grad, right.sum(1, keepdim=True).expand(2, 4, 5))


def _decode(model, embeddings, points, labels, **kwargs):
    return model(image_embeddings=embeddings, input_points=points, input_labels=labels, multimask_output=True, **kwargs)


@pytest.mark.parametrize("batch", [1, 2])
def test_inference_paths_equal_the_recording_path(tiny_model, monkeypatch, batch):
    """no_grad (workspace, oneDNN logits, bands of one grid row) vs grad enabled (plain PyTorch ops), in groups of 2."""
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randn(batch, 32, 8, 8, generator=generator)
    points = torch.rand(batch, 5, 2, 2, generator=generator) * 128
    labels = torch.tensor([1, -1]).repeat(batch, 5, 1)  # a padded slot: the key-padding mask is used
    for budget_name in ("_TEMPORARY_BUDGET", "_KERNEL_TEMPORARY_BUDGET", "_FOLD_TEMPORARY_BUDGET"):  # groups of two prompts
        monkeypatch.setattr(prompt_groups, budget_name, 2 * batch * 8 * 8 * 32 * 4)
    monkeypatch.setattr(mask_upscaling, "_UPSCALE_BAND_BUDGET", 16 * 8 * 4 * 4 * 3)  # bands of 3 of the 8 grid rows
    recorded = _decode(tiny_model, embeddings, points, labels, output_attentions=True)
    assert recorded.pred_masks.requires_grad
    with torch.no_grad():
        fast = _decode(tiny_model, embeddings, points, labels)
        with_attentions = _decode(tiny_model, embeddings, points, labels, output_attentions=True)
    assert_close(fast.pred_masks, recorded.pred_masks.detach(), rtol=1e-5, atol=1e-5)
    assert_close(fast.iou_scores, recorded.iou_scores.detach(), rtol=1e-5, atol=1e-5)
    for got, expected in zip(with_attentions.mask_decoder_attentions, recorded.mask_decoder_attentions):
        assert_close(got, expected.detach(), rtol=1e-5, atol=1e-6)  # not overwritten by later layers' buffers


@torch.no_grad()
def test_one_call_leaves_nothing_to_the_next(tiny_model):
    generator = torch.Generator().manual_seed(5)
    first, second = torch.randn(2, 1, 32, 8, 8, generator=generator)
    points = torch.rand(1, 6, 1, 2, generator=generator) * 128
    labels = torch.ones(1, 6, 1, dtype=torch.long)
    alone = _decode(tiny_model, second, points, labels)
    kept = _decode(tiny_model, first, points, labels)
    kept_masks = kept.pred_masks.clone()
    after = _decode(tiny_model, second, points, labels)
    assert torch.equal(after.pred_masks, alone.pred_masks)
    assert torch.equal(kept.pred_masks, kept_masks)


def test_frozen_decoder_still_backpropagates_to_the_image_side(tiny_model):
    """With the decoder frozen and the embeddings requiring grad, autograd records: no workspace, same gradient."""
    generator = torch.Generator().manual_seed(6)
    embeddings = torch.randn(1, 32, 8, 8, generator=generator)
    points = torch.rand(1, 4, 1, 2, generator=generator) * 128
    labels = torch.ones(1, 4, 1, dtype=torch.long)
    grads = []
    for frozen in (False, True):
        for param in tiny_model.parameters():
            param.requires_grad_(not frozen)
        leaf = embeddings.clone().requires_grad_(True)
        _decode(tiny_model, leaf, points, labels).pred_masks.square().mean().backward()
        grads.append(leaf.grad)
    for param in tiny_model.parameters():
        param.requires_grad_(True)
    tiny_model.zero_grad(set_to_none=True)
    assert grads[1].abs().sum() > 0
    assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)
