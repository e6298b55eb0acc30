"""The two-way transformer's three routes to the image tokens ("shared", "per_prompt", "fold": see
`SamHfAttention.route`) each give transformers' results, with and without autograd, and each is taken where meant."""

import pytest
import torch
from torch.testing import assert_close

import sam_hf.modeling.prompt_groups as prompt_groups
from references import randomize, transformers_from_ours
from sam_hf import SamHfModel, config_for_variant
from sam_hf.modeling.decoder_attention import FOLD_UP_TO_PROMPTS, SamHfAttention

pytestmark = pytest.mark.usefixtures("decoder_path")  # with and without the compiled decoder kernel


def _decode(model, embeddings, prompts, masks=None, seed=0, image_cache=None):
    generator = torch.Generator().manual_seed(seed)
    points = torch.rand(embeddings.shape[0], prompts, 2, 2, generator=generator) * 128
    labels = torch.randint(0, 2, (embeddings.shape[0], prompts, 2), generator=generator)
    return model(image_embeddings=embeddings, input_points=points, input_labels=labels, input_masks=masks, image_cache=image_cache)


@pytest.mark.parametrize("prompts", [1, 2, 3, 5])
@pytest.mark.parametrize("with_mask", [False, True])
@torch.no_grad()
def test_every_prompt_count_matches_transformers(tiny_model, transformers_tiny, prompts, with_mask):
    embeddings = torch.randn(2, 32, 8, 8)
    masks = torch.randn(2, 1, 32, 32) if with_mask else None  # one per image, transformers' convention
    ours, ref = _decode(tiny_model, embeddings, prompts, masks), _decode(transformers_tiny, embeddings, prompts, masks)
    assert ours.pred_masks.shape == (2, prompts, 3, 32, 32)
    assert_close(ours.pred_masks, ref.pred_masks, rtol=1e-4, atol=1e-4)
    assert_close(ours.iou_scores, ref.iou_scores, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_prompts_decoded_alone_equal_the_batch_with_per_prompt_masks(tiny_model):
    """Each prompt alone ("fold") against all five together ("shared" then "per_prompt"), a mask per prompt."""
    embeddings, masks = torch.randn(2, 32, 8, 8), torch.randn(2, 5, 32, 32)
    points, labels = torch.rand(2, 5, 2, 2) * 128, torch.randint(0, 2, (2, 5, 2))
    batch = tiny_model(image_embeddings=embeddings, input_points=points, input_labels=labels, input_masks=masks)
    for p in range(5):
        alone = tiny_model(image_embeddings=embeddings, input_points=points[:, p : p + 1], input_labels=labels[:, p : p + 1],
                           input_masks=masks[:, p : p + 1])
        assert_close(alone.pred_masks, batch.pred_masks[:, p : p + 1], rtol=1e-4, atol=1e-5)
        assert_close(alone.iou_scores, batch.iou_scores[:, p : p + 1], rtol=1e-4, atol=1e-5)


def _routes(monkeypatch, model, prompts, group=None, image_cache=None, masks=None):
    """The routes the decoder's attentions take, in call order (two per block, then the final attention)."""
    taken, route = [], SamHfAttention.route

    def spy(*args):
        taken.append(route(*args))
        return taken[-1]

    monkeypatch.setattr(SamHfAttention, "route", staticmethod(spy))
    if group is not None:  # groups of `group` prompts
        for budget_name in ("_TEMPORARY_BUDGET", "_KERNEL_TEMPORARY_BUDGET", "_FOLD_TEMPORARY_BUDGET"):
            monkeypatch.setattr(prompt_groups, budget_name, group * 8 * 8 * 32 * 4)
    with torch.no_grad():
        _decode(model, torch.randn(1, 32, 8, 8), prompts, masks=masks, image_cache=image_cache)
    return taken


def test_routes_are_taken_where_meant(tiny_model, monkeypatch, decoder_path):
    layers = len(tiny_model.mask_decoder.transformer.layers)
    # PyTorch's path asks for a route in every attention to the image: two per block and the final one. The kernel's
    # asks in the first token -> image attention and in each image -> token pass, which also runs the token -> image
    # attention that follows it (the next block's or the final one) in its own streaming form, with no route.
    attentions = 2 * layers + 1 if decoder_path == "pytorch" else layers + 1
    assert _routes(monkeypatch, tiny_model, FOLD_UP_TO_PROMPTS) == ["fold"] * attentions
    # a kept image cache: the shared projections serve the later calls on the image, so a small call shares them too
    assert _routes(monkeypatch, tiny_model, 1, image_cache={}) == ["shared", "shared"] + ["per_prompt"] * (attentions - 2)
    # ... but not with a mask input: the image side is new in every call, so its projections would serve this one only
    assert _routes(monkeypatch, tiny_model, 1, image_cache={}, masks=torch.randn(1, 1, 32, 32)) == ["fold"] * attentions
    # several prompts: the decoder's own image side projected once, then each prompt's own image side folded
    assert _routes(monkeypatch, tiny_model, 5) == ["shared", "shared"] + ["per_prompt"] * (attentions - 2)
    # groups of one prompt in a call of five: a prompt's own image side (P' = P = 1) is not projected as if shared
    assert _routes(monkeypatch, tiny_model, 5, group=1) == 5 * (["shared", "shared"] + ["per_prompt"] * (attentions - 2))


@pytest.mark.parametrize("prompts", [1, 3])
def test_gradients_match_transformers(prompts):
    model = randomize(SamHfModel(config_for_variant("tiny")), seed=5).train()
    reference = transformers_from_ours(model).train()
    embeddings = torch.randn(2, 32, 8, 8)
    grads = []
    for net in (model, reference):
        net.zero_grad(set_to_none=True)
        out = _decode(net, embeddings, prompts, seed=1)
        (out.pred_masks.pow(2).mean() + out.iou_scores.pow(2).mean()).backward()
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None and n.startswith("mask_decoder.")})
    ours, theirs = grads
    assert set(ours) <= set(theirs) and len(ours) > 20
    for name in set(theirs) - set(ours):  # transformers runs the single-mask hypernetwork that multimask output drops
        assert name.startswith("mask_decoder.output_hypernetworks_mlps.0.") and not theirs[name].any(), name
    for name in ours:
        assert_close(ours[name], theirs[name], rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize("prompts", [1, 2])
@pytest.mark.parametrize("per_prompt_masks", [False, True])
@torch.no_grad()
def test_iou_threshold_on_several_images_in_the_fold_route(tiny_model, prompts, per_prompt_masks):
    """A threshold first runs the final attention for the IoU token alone (a slice of the tokens): with several images in
    the "fold" route that slice reached a view its strides could not give (found by fuzzing, kernels off). A threshold
    below every prediction keeps every mask: the same outputs as without one."""
    embeddings = torch.randn(2, 32, 8, 8)
    masks = torch.randn(2, prompts if per_prompt_masks else 1, 32, 32)
    boxes = torch.tensor([[10.0, 20.0, 70.0, 90.0], [40.0, 5.0, 120.0, 60.0]])[:prompts].expand(2, prompts, 4)
    full = tiny_model(image_embeddings=embeddings, input_boxes=boxes, input_masks=masks)
    kept = tiny_model(image_embeddings=embeddings, input_boxes=boxes, input_masks=masks,
                      mask_iou_threshold=full.iou_scores.min().item() - 1.0)
    assert_close(kept.iou_scores, full.iou_scores, rtol=1e-5, atol=1e-6)
    assert_close(kept.pred_masks, full.pred_masks, rtol=1e-5, atol=1e-5)
