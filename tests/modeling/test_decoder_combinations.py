"""The decoder's routes, groups and shortcuts against Meta's form over mixed calls: images, prompts and points per
prompt, boxes, padded point slots, mask inputs (one per image or per prompt), single or multiple masks and a mask IoU
threshold, drawn from a seeded generator. Meta's form (`calling_modules()`: every layer called, no route, kernel or
shortcut) is the same model's reference computation, itself checked against Meta's and transformers' models in
test_parity_meta.py and test_parity_transformers.py. A fuzzing run of this kind (ViT-B's decoder) found the "fold"
route's view error with a threshold on several images (kernels off), fixed in `SamHfAttention._folded_logits`."""

import copy
import random

import pytest
import torch
from torch.testing import assert_close

from sam_hf.modeling.module_calls import calling_modules

pytestmark = pytest.mark.usefixtures("decoder_path")  # with and without the compiled decoder kernel

EMPTY = -1e4  # the logits of a mask skipped by the threshold


def _combination(seed: int) -> dict:
    rng = random.Random(seed)
    images, prompts, points = rng.choice([1, 2, 3]), rng.choice([1, 2, 3, 5, 9, 17]), rng.choice([1, 2, 3])
    with_points = rng.random() < 0.75
    return {
        "images": images, "prompts": prompts, "points": points if with_points else 0,
        "boxes": rng.random() < 0.4 or not with_points, "masks": rng.choice([None, "image", "prompt"]),
        "multimask": rng.random() < 0.6, "threshold": rng.choice([None, 0.0, "median"]), "padding": rng.choice([-1, -10]),
    }


def _inputs(combination: dict, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    images, prompts, points = combination["images"], combination["prompts"], combination["points"]
    kwargs = {"image_embeddings": torch.randn(images, 32, 8, 8, generator=generator), "multimask_output": combination["multimask"]}
    if points:
        kwargs["input_points"] = torch.rand(images, prompts, points, 2, generator=generator) * 128
        labels = torch.randint(0, 2, (images, prompts, points), generator=generator)
        padded = torch.rand(images, prompts, points, generator=generator) < 0.3
        padded[..., 0] = False  # every prompt keeps a point
        kwargs["input_labels"] = labels.masked_fill(padded, combination["padding"])
    if combination["boxes"]:
        corner = torch.rand(images, prompts, 2, generator=generator) * 90
        kwargs["input_boxes"] = torch.cat([corner, corner + 5 + torch.rand(images, prompts, 2, generator=generator) * 30], dim=-1)
    if combination["masks"] is not None:
        count = 1 if combination["masks"] == "image" else prompts
        kwargs["input_masks"] = torch.randn(images, count, 32, 32, generator=generator) * 3
    return kwargs


@pytest.fixture(scope="module")
def tiny_bf16(tiny_model):
    return copy.deepcopy(tiny_model).to(torch.bfloat16)


@pytest.mark.parametrize("seed", range(40))
@torch.no_grad()
def test_mixed_calls_match_meta_form(tiny_model, seed):
    _check(tiny_model, seed, rtol=1e-4, tolerance=1e-5, margin=1e-4)


@pytest.mark.parametrize("seed", range(40, 52))
@torch.no_grad()
def test_mixed_bf16_calls_match_meta_form(tiny_bf16, seed):
    """bf16 weights and inputs (the kernel's bf16 paths where AVX512-BF16, else PyTorch's): the same up to bf16 rounding."""
    _check(tiny_bf16, seed, rtol=2e-2, tolerance=0.05, margin=2e-2)


def _check(model, seed: int, *, rtol: float, tolerance: float, margin: float) -> None:
    """`model`'s call on combination `seed` against Meta's form; with a threshold, the prompts clearly above it (by
    `margin`) give the reference's masks and those clearly below it empty ones."""
    combination = _combination(seed)
    kwargs = _inputs(combination, seed)
    kwargs = {name: value.to(model.dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value for name, value in kwargs.items()}
    with calling_modules():
        reference = model(**kwargs)
    count = 3 if combination["multimask"] else 1
    assert reference.pred_masks.shape == (combination["images"], combination["prompts"], count, 32, 32)
    threshold = combination["threshold"]
    if threshold is None:
        ours = model(**kwargs)
        assert_close(ours.pred_masks, reference.pred_masks, rtol=rtol, atol=tolerance)
        assert_close(ours.iou_scores, reference.iou_scores, rtol=rtol, atol=tolerance)
        return
    if threshold == "median":  # about half the prompts kept
        threshold = reference.iou_scores.amax(-1).median().item()
    ours = model(**kwargs, mask_iou_threshold=threshold)
    assert_close(ours.iou_scores, reference.iou_scores, rtol=rtol, atol=tolerance)
    best = reference.iou_scores.amax(-1)  # (B, P)
    clear = (best - threshold).abs() > margin  # prompts not at the threshold within rounding
    kept = (best > threshold) & clear
    skipped = (best <= threshold) & clear
    assert_close(ours.pred_masks[kept], reference.pred_masks[kept], rtol=rtol, atol=tolerance)
    assert (ours.pred_masks[skipped] == torch.tensor(EMPTY, dtype=model.dtype)).all()  # -1e4 as the dtype holds it (bf16: -9984)
