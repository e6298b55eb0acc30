"""Layers that are not sam_hf's own (PEFT's LoRA, hooks, any wrapper) are called on every path, never read around
(modeling/module_calls.py): a wrapped model gives what the equivalent plain model gives."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from references import randomize
from sam_hf import SamHfModel, SamHfPredictor, config_for_variant
from sam_hf.modeling import module_calls
from sam_hf.modeling.module_calls import weights_readable

IMAGE = 128


class Scaled(nn.Module):
    """A wrapper as adapters are: `base(x) * factor`, a module sam_hf does not know."""

    def __init__(self, base: nn.Module, factor: float) -> None:
        super().__init__()
        self.base, self.factor = base, factor

    def forward(self, x):
        return self.base(x) * self.factor


@pytest.fixture(scope="module")
def model():
    return randomize(SamHfModel(config_for_variant("tiny")), seed=6).eval()


# every kind of layer the fast paths read: ViT attention and MLP, the decoder's cross-attention projections in both
# directions and the final one, its MLP, a hypernetwork, the IoU head and the upscaling convolutions
WRAPPED = [
    "vision_encoder.layers.0.attn.qkv", "vision_encoder.layers.1.attn.proj", "vision_encoder.layers.1.mlp.lin1",
    "mask_decoder.transformer.layers.0.cross_attn_token_to_image.k_proj",
    "mask_decoder.transformer.layers.0.cross_attn_token_to_image.v_proj",
    "mask_decoder.transformer.layers.1.cross_attn_image_to_token.q_proj",
    "mask_decoder.transformer.layers.0.cross_attn_image_to_token.out_proj",
    "mask_decoder.transformer.final_attn_token_to_image.k_proj", "mask_decoder.transformer.layers.1.mlp.lin2",
    "mask_decoder.output_hypernetworks_mlps.1.layers.0", "mask_decoder.iou_prediction_head.proj_out",
    "mask_decoder.upscale_conv1", "mask_decoder.upscale_conv2",
]


def _wrapped_and_plain(model, name, factor=1.25):
    """The model with layer `name` wrapped in `Scaled`, and a plain copy whose layer computes the same."""
    wrapped, plain = copy.deepcopy(model), copy.deepcopy(model)
    parent, _, child = name.rpartition(".")
    setattr(wrapped.get_submodule(parent), child, Scaled(wrapped.get_submodule(name), factor))
    with torch.no_grad():
        for param in plain.get_submodule(name).parameters():
            param.mul_(factor)  # linear layers and convolutions: W x * f + b * f
    return wrapped, plain


def _inputs(seed=0, prompts=5):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, 3, IMAGE, IMAGE, generator=generator)
    points = torch.rand(1, prompts, 1, 2, generator=generator) * IMAGE
    return pixels, points


@pytest.mark.parametrize("name", WRAPPED)
def test_a_wrapped_layer_is_called(model, name):
    wrapped, plain = _wrapped_and_plain(model, name)
    assert not weights_readable(wrapped.vision_encoder if name.startswith("vision") else wrapped.mask_decoder)
    pixels, points = _inputs()
    masks = torch.randn(1, 5, 4 * 8, 4 * 8, generator=torch.Generator().manual_seed(1))  # per-prompt mask inputs
    with torch.no_grad():
        embeddings = plain.get_image_embeddings(pixels)
        assert_close(wrapped.get_image_embeddings(pixels), embeddings, rtol=1e-4, atol=1e-5)
        for kwargs in ({}, {"input_masks": masks}, {"mask_iou_threshold": 0.0}, {"multimask_output": False}):
            for prompts in (1, 5):  # the "fold" route's call size and the shared route's
                calls = [{"image_embeddings": embeddings, "input_points": points[:, :prompts], **kwargs}]
                if "input_masks" in kwargs:
                    calls[0]["input_masks"] = masks[:, :prompts]
                for call in calls:
                    got, expected = wrapped(**call), plain(**call)
                    assert_close(got.iou_scores, expected.iou_scores, rtol=1e-4, atol=1e-5)
                    assert_close(got.pred_masks, expected.pred_masks, rtol=1e-4, atol=1e-4)


def test_forward_hooks_fire_and_the_kept_image_cache_is_not_used(model):
    hooked = copy.deepcopy(model)
    calls = []
    hooked.mask_decoder.transformer.layers[0].cross_attn_token_to_image.k_proj.register_forward_hook(lambda *a: calls.append(1))
    hooked.vision_encoder.layers[0].mlp.lin1.register_forward_hook(lambda *a: calls.append(2))
    pixels, points = _inputs(2)
    cache = {}
    with torch.no_grad():
        embeddings = hooked.get_image_embeddings(pixels)
        got = hooked(image_embeddings=embeddings, input_points=points, image_cache=cache)
        expected = model(image_embeddings=model.get_image_embeddings(pixels), input_points=points)
    assert 1 in calls and 2 in calls
    assert cache == {}  # nothing kept across calls where a layer may change what it returns
    assert_close(got.pred_masks, expected.pred_masks, rtol=1e-5, atol=1e-5)


def test_readable_weights(model):
    assert weights_readable(model.vision_encoder) and weights_readable(model.mask_decoder)
    handle = nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert not weights_readable(model.mask_decoder)  # a global hook sees every call
    finally:
        handle.remove()
    assert weights_readable(model.mask_decoder)
    assert not module_calls.active()


def test_predictor_on_a_wrapped_model(model):
    wrapped, plain = _wrapped_and_plain(model, "mask_decoder.transformer.layers.0.cross_attn_token_to_image.v_proj", 0.8)
    image = (np.random.default_rng(3).random((90, 120, 3)) * 255).astype(np.uint8)
    results, kept = [], []
    for candidate in (wrapped, plain):
        predictor = SamHfPredictor(candidate)
        predictor.set_image(image)
        kept.append(len(predictor.image_cache))
        results.append(predictor.predict(point_coords=np.array([[40, 30]]), point_labels=np.array([1])))
    assert kept[0] == 0 and kept[1] > 0  # set_image prepares the kept work only where calls can keep it
    for a, b in zip(*results):
        assert_close(torch.as_tensor(a).float(), torch.as_tensor(b).float(), rtol=1e-4, atol=1e-4)


def test_peft_lora_adapters_count_in_inference_and_all_train(model):
    peft = pytest.importorskip("peft")  # a test extra (pyproject.toml): present wherever the suite is set up
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "q_proj", "v_proj", "lin1"], init_lora_weights=False)
    adapted = peft.get_peft_model(copy.deepcopy(model), config).eval()
    pixels, points = _inputs(4)
    with torch.no_grad():
        got = adapted(pixel_values=pixels, input_points=points)
        merged = copy.deepcopy(adapted).merge_and_unload()
        assert weights_readable(merged.mask_decoder)
        expected = merged(pixel_values=pixels, input_points=points)
        base = model(pixel_values=pixels, input_points=points)
    assert (expected.pred_masks - base.pred_masks).abs().max() > 0.1  # the adapters matter
    assert_close(got.pred_masks, expected.pred_masks, rtol=1e-4, atol=1e-4)
    adapted.train()
    adapted(pixel_values=pixels, input_points=points).pred_masks.square().mean().backward()
    adapters = {n: p for n, p in adapted.named_parameters() if "lora_" in n}
    assert adapters and all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters.values())


def test_a_swapped_activation_is_called(model):
    """An activation module put in place of the ViT MLP's GELU (stateless, so no weights to read) is called: the fused
    linear + GELU kernel would compute the GELU the block was made with instead."""
    swapped = copy.deepcopy(model)
    swapped.vision_encoder.layers[1].mlp.act = nn.SiLU()
    pixels, _ = _inputs(4)
    with torch.no_grad():
        got = swapped.get_image_embeddings(pixels)
        with module_calls.calling_modules():  # the reference paths, which call every layer
            expected = swapped.get_image_embeddings(pixels)
        unchanged = model.get_image_embeddings(pixels)
    assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, unchanged, rtol=1e-3, atol=1e-4)  # the swap changes what the model computes
