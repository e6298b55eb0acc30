"""The model trains: gradients flow through every part, and eager and SDPA give the same gradients."""

import pytest
import torch
from torch.testing import assert_close

from references import randomize
from sam_hf import SamHfModel, config_for_variant


def _loss_and_grads(model, pixels, points, boxes):
    model.zero_grad(set_to_none=True)
    out = model(pixels, input_points=points, input_boxes=boxes, multimask_output=True)
    loss = out.pred_masks.float().pow(2).mean() + out.iou_scores.float().pow(2).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("window,globals_,image_size", [(4, [1], 128), (4, [0], 160), (0, [], 128)])
def test_backward_reaches_every_parameter_and_matches_eager(window, globals_, image_size):
    """Windowed and global blocks, a grid the window does not divide, and no windows at all."""
    model = randomize(SamHfModel(config_for_variant("tiny", image_size=image_size, window_size=window, global_attn_indexes=globals_)), seed=2)
    model.train()
    pixels = torch.randn(2, 3, image_size, image_size)
    points = torch.rand(2, 2, 1, 2) * image_size
    boxes = torch.tensor([[[1.0, 2.0, 60.0, 70.0], [10.0, 10.0, 50.0, 40.0]]] * 2)
    results = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        results[implementation] = _loss_and_grads(model, pixels, points, boxes)
    loss_eager, grads_eager = results["eager"]
    loss_sdpa, grads_sdpa = results["sdpa"]
    assert torch.isfinite(loss_sdpa)
    assert_close(loss_sdpa, loss_eager, rtol=1e-4, atol=1e-5)
    # no mask input, no negative or "not a point" label, and multimask output leaves the single-mask head unused
    unused = {"mask_decoder.output_hypernetworks_mlps.0.", "prompt_encoder.mask_embed", "prompt_encoder.no_mask_embed", "prompt_encoder.not_a_point_embed", "prompt_encoder.point_embed.0"}
    expected = {n for n, _ in model.named_parameters() if not any(n.startswith(u) for u in unused)}
    assert expected <= set(grads_sdpa), sorted(expected - set(grads_sdpa))
    for name in expected:
        assert_close(grads_sdpa[name], grads_eager[name], rtol=1e-3, atol=1e-5, msg=name)


def test_no_grad_and_grad_paths_agree():
    model = randomize(SamHfModel(config_for_variant("tiny")), seed=4).eval()
    pixels = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        reference = model.get_image_embeddings(pixels)
    assert_close(model.get_image_embeddings(pixels), reference)


def test_frozen_model_backpropagates_to_its_inputs():
    """A frozen model with inputs that require grad (saliency, adversarial examples): autograd records there, so
    no fused inference-only kernel may run, and the input gradients equal those of the unfrozen model."""
    model = randomize(SamHfModel(config_for_variant("tiny")), seed=5).eval()
    pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    points = torch.tensor([[[[40.0, 50.0]], [[90.0, 20.0]]]])
    grads = []
    for frozen in (False, True):
        model.requires_grad_(not frozen)
        leaf = pixels.clone().requires_grad_(True)
        out = model(leaf, input_points=points, multimask_output=True)
        (out.pred_masks.square().mean() + out.iou_scores.square().mean()).backward()
        grads.append(leaf.grad)
    assert grads[1].abs().sum() > 0
    assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-8)


def _grads_with_checkpointing(model, enable):
    pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(7))
    points = torch.tensor([[[[30.0, 40.0]], [[100.0, 90.0]]]])
    enable(model)
    model.train()
    _, grads = _loss_and_grads(model, pixels, points, None)
    return grads


def test_gradient_checkpointing_recomputes_the_vit_layers_with_the_same_gradients(monkeypatch):
    """transformers' `gradient_checkpointing_enable` (and `activation_checkpointing_enable(every_n_layers=...)`) reach
    the ViT layers through the function transformers hands over, and change no gradient."""
    import transformers.modeling_utils

    model = randomize(SamHfModel(config_for_variant("tiny", num_hidden_layers=3, global_attn_indexes=[1])), seed=8)
    expected = _grads_with_checkpointing(model, lambda m: None)
    calls = []
    original = transformers.modeling_utils.checkpoint
    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", lambda *a, **k: calls.append(k) or original(*a, **k))
    layers = len(model.vision_encoder.layers)
    for enable, checkpointed in [
        (lambda m: m.gradient_checkpointing_enable(), layers),
        (lambda m: m.activation_checkpointing_enable(every_n_layers=2), -(-layers // 2)),
    ]:
        calls.clear()
        grads = _grads_with_checkpointing(model, enable)
        assert model.vision_encoder.gradient_checkpointing
        assert len(calls) == checkpointed and all(k.get("use_reentrant") is False for k in calls)
        assert grads.keys() == expected.keys()
        for name in expected:
            assert_close(grads[name], expected[name], rtol=0, atol=0, msg=name)
    model.gradient_checkpointing_disable()
    assert not model.vision_encoder.gradient_checkpointing
    with pytest.raises(ValueError, match="every_n_layers"):
        model._set_gradient_checkpointing(True, every_n_layers=0)
    with pytest.raises(TypeError, match="every_n_layers"):
        model._set_gradient_checkpointing(True, every_n_layers=2.0)


@pytest.mark.parametrize("multimask", [True, False])
def test_dropped_hypernetworks_get_zero_gradients_as_in_meta(multimask):
    """Meta's decoder runs all four hypernetwork MLPs and drops the masks not returned: their weights get zero
    gradients, which optimizers apply (weight decay, momentum). sam_hf runs only the kept MLPs and gives the others
    zero gradients too; the kept ones' gradients equal Meta's."""
    from references import meta_from_ours

    model = randomize(SamHfModel(config_for_variant("tiny")), seed=4).train()
    meta = meta_from_ours(model).train()
    embeddings, points = torch.randn(1, 32, 8, 8), torch.rand(1, 3, 1, 2) * 128
    out = model(image_embeddings=embeddings, input_points=points, multimask_output=multimask)
    (out.pred_masks.pow(2).mean() + out.iou_scores.pow(2).mean()).backward()
    sparse, dense = meta.prompt_encoder(points=(points[0], torch.ones(3, 1, dtype=torch.long)), boxes=None, masks=None)
    masks, iou = meta.mask_decoder(image_embeddings=embeddings, image_pe=meta.prompt_encoder.get_dense_pe(),
                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)
    (masks.pow(2).mean() + iou.pow(2).mean()).backward()
    kept = range(1, 4) if multimask else range(1)
    for i in range(4):
        ours = [p.grad for p in model.mask_decoder.output_hypernetworks_mlps[i].parameters()]
        theirs = [p.grad for p in meta.mask_decoder.output_hypernetworks_mlps[i].parameters()]
        assert all(g is not None for g in ours + theirs)
        for a, b in zip(ours, theirs):
            assert_close(a, b, rtol=1e-4, atol=1e-7)
        assert all(bool((g == 0).all()) != (i in kept) for g in ours)
