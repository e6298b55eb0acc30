"""Decoding prompts in groups (to keep CPU temporaries small) gives exactly the one-group result."""

import pytest
import torch
from torch.testing import assert_close

import sam_hf.modeling.mask_decoder as mask_decoder


@pytest.mark.parametrize("per_prompt_masks", [False, True])
@pytest.mark.parametrize("budget", [1, 3])
@torch.no_grad()
def test_groups_equal_one_group(tiny_model, monkeypatch, per_prompt_masks, budget):
    embeddings = torch.randn(2, 32, 8, 8)
    points = torch.rand(2, 7, 2, 2) * 128
    labels = torch.tensor([1, 0]).repeat(2, 7, 1)
    masks = torch.randn(2, 7, 32, 32) if per_prompt_masks else torch.randn(2, 1, 32, 32)
    whole = tiny_model(image_embeddings=embeddings, input_points=points, input_labels=labels, input_masks=masks)
    per_prompt_bytes = 2 * 8 * 8 * 32 * 4  # B * g * g * C * float32
    monkeypatch.setattr(mask_decoder, "_TEMPORARY_BUDGET", budget * per_prompt_bytes)  # groups of 1 or 3 prompts
    grouped = tiny_model(image_embeddings=embeddings, input_points=points, input_labels=labels, input_masks=masks)
    assert_close(grouped.pred_masks, whole.pred_masks, rtol=1e-5, atol=1e-6)
    assert_close(grouped.iou_scores, whole.iou_scores, rtol=1e-5, atol=1e-6)
