"""Decoding prompts in groups (to keep CPU temporaries small) gives exactly the one-group result."""

import pytest
import torch
from torch.testing import assert_close

import sam_hf.modeling.mask_decoder as mask_decoder
import sam_hf.modeling.prompt_groups as prompt_groups

pytestmark = pytest.mark.usefixtures("decoder_path")  # with and without the compiled decoder kernel


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
    for budget_name in ("_TEMPORARY_BUDGET", "_KERNEL_TEMPORARY_BUDGET", "_FOLD_TEMPORARY_BUDGET"):  # groups of 1 or 3 prompts
        monkeypatch.setattr(prompt_groups, budget_name, budget * per_prompt_bytes)
    grouped = tiny_model(image_embeddings=embeddings, input_points=points, input_labels=labels, input_masks=masks)
    assert_close(grouped.pred_masks, whole.pred_masks, rtol=1e-5, atol=1e-6)
    assert_close(grouped.iou_scores, whole.iou_scores, rtol=1e-5, atol=1e-6)


def _midway(iou_scores: torch.Tensor, below: int) -> float:
    """A threshold midway between the `below`-th and the next prompt's best IoU score: no prompt sits on it, so paths
    that round differently (the final IoU attention fused into the last pass or not, the PyTorch path with attention
    weights) pass the same prompts."""
    best = iou_scores.max(-1).values.flatten().sort().values
    return float(best[below - 1] + best[below]) / 2


@pytest.mark.parametrize("batch,group", [(1, None), (2, None), (1, 3)])
@pytest.mark.parametrize("multimask", [True, False])
@torch.no_grad()
def test_mask_iou_threshold_skips_only_prompts_without_a_mask_above_it(tiny_model, monkeypatch, multimask, batch, group):
    """The final attention runs for every IoU token, then for the mask tokens of the prompts above the threshold
    only: the same IoU predictions and, for those prompts, the same masks as the full decoder (images of a batch
    and groups of prompts included)."""
    if group is not None:
        for budget_name in ("_TEMPORARY_BUDGET", "_KERNEL_TEMPORARY_BUDGET", "_FOLD_TEMPORARY_BUDGET"):
            monkeypatch.setattr(prompt_groups, budget_name, group * batch * 8 * 8 * 32 * 4)
    embeddings = torch.randn(batch, 32, 8, 8)
    points = torch.rand(batch, 16, 1, 2) * 128
    full = tiny_model(image_embeddings=embeddings, input_points=points, multimask_output=multimask)
    threshold = _midway(full.iou_scores, 8 * batch)  # about half the prompts pass
    cut = tiny_model(image_embeddings=embeddings, input_points=points, multimask_output=multimask, mask_iou_threshold=threshold)
    needed = (full.iou_scores > threshold).any(-1)  # (B, 16)
    assert 0 < int(needed.sum()) < 16 * batch
    assert_close(cut.iou_scores, full.iou_scores)
    assert_close(cut.pred_masks[needed], full.pred_masks[needed])
    assert (cut.pred_masks[~needed] == mask_decoder.SKIPPED_MASK_LOGIT).all()


def test_mask_iou_threshold_type_is_checked(tiny_model):
    with pytest.raises(TypeError, match="mask_iou_threshold must be a float"):
        tiny_model(image_embeddings=torch.randn(1, 32, 8, 8), input_points=torch.rand(1, 2, 1, 2), mask_iou_threshold="0.5")


@torch.no_grad()
def test_transformer_output_tokens_are_those_rows_of_the_full_output(tiny_model):
    transformer = tiny_model.mask_decoder.transformer
    tokens, image = torch.randn(2, 3, 7, 32), torch.randn(2, 1, 64, 32)  # (B, P, T, C), shared image side (B, 1, HW, C)
    pe, token_mask = torch.randn(64, 32), torch.ones(2, 3, 7, dtype=torch.bool)
    token_mask[:, :, -1] = False  # a padded prompt slot
    full, full_image, _ = transformer(tokens, image, pe, token_mask)
    some, some_image, _ = transformer(tokens, image, pe, token_mask, output_tokens=[0, 2, 4])
    assert some.shape == (2, 3, 3, 32)
    assert_close(some, full[:, :, [0, 2, 4]], rtol=1e-5, atol=1e-6)
    assert_close(some_image, full_image, rtol=0, atol=0)


def test_prompt_groups_are_small_on_cpu_only(monkeypatch):
    per_prompt = 8 * 64 * 64 * 256 * 2  # 8 ViT images, bf16 image tokens: 16 MiB per prompt
    assert prompt_groups.prompt_group(per_prompt, torch.device("cpu")) == 1
    assert prompt_groups.prompt_group(per_prompt, torch.device("cpu"), kernel=True) == 4  # the compiled kernel's larger groups
    assert prompt_groups.prompt_group(per_prompt, torch.device("cpu"), kernel=True, fold=True) == 8  # larger with the folded upscaling
    assert prompt_groups.prompt_group(per_prompt, torch.device("cpu"), fold=True) == 1  # the fold needs the kernels
    assert prompt_groups.prompt_group(per_prompt, torch.device("cuda", 0), kernel=True) >= 64
    assert prompt_groups.prompt_group(per_prompt, torch.device("cuda", 0)) >= 64  # a batch of 64 in one group
    for budget_name in ("_TEMPORARY_BUDGET", "_KERNEL_TEMPORARY_BUDGET", "_FOLD_TEMPORARY_BUDGET"):
        monkeypatch.setattr(prompt_groups, budget_name, 5 * per_prompt)
    assert prompt_groups.prompt_group(per_prompt, torch.device("cpu")) == 5
    assert prompt_groups.prompt_group(10 * 2**30, torch.device("cuda", 0)) == 1  # never zero


@torch.no_grad()
def test_mask_iou_threshold_none_or_all_above(tiny_model):
    embeddings, points = torch.randn(1, 32, 8, 8), torch.rand(1, 6, 1, 2) * 128
    full = tiny_model(image_embeddings=embeddings, input_points=points)
    none = tiny_model(image_embeddings=embeddings, input_points=points, mask_iou_threshold=float("inf"))
    assert_close(none.iou_scores, full.iou_scores)
    assert (none.pred_masks == mask_decoder.SKIPPED_MASK_LOGIT).all()
    every = tiny_model(image_embeddings=embeddings, input_points=points, mask_iou_threshold=-float("inf"))
    assert_close(every.pred_masks, full.pred_masks)


@torch.no_grad()
def test_mask_iou_threshold_with_attention_weights(tiny_model):
    """With the attention weights asked for every token goes through the final attention; masks below the threshold
    are still SKIPPED_MASK_LOGIT, the others the full decoder's."""
    embeddings, points = torch.randn(1, 32, 8, 8), torch.rand(1, 8, 1, 2) * 128
    full = tiny_model(image_embeddings=embeddings, input_points=points)
    threshold = _midway(full.iou_scores, 4)
    cut = tiny_model(image_embeddings=embeddings, input_points=points, mask_iou_threshold=threshold, output_attentions=True)
    needed = (full.iou_scores > threshold).any(-1)
    assert 0 < int(needed.sum()) < 8
    assert_close(cut.pred_masks[needed], full.pred_masks[needed])
    assert (cut.pred_masks[~needed] == mask_decoder.SKIPPED_MASK_LOGIT).all()
