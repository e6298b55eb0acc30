"""Work kept between calls (the positional grid, a bf16 decoder's fp32 weights, `image_cache`) follows writes that
PyTorch's version counters miss: fused optimizer steps, writes through `.data`, tensors of `torch.inference_mode()`
(modeling/tensor_state.py). Each call must equal the same call on a fresh copy of the model."""
import copy

import pytest
import torch

from sam_hf.modeling import bf16_compute
from sam_hf.modeling.tensor_state import SAMPLE, WHOLE, TensorsState


def _prompts():
    generator = torch.Generator().manual_seed(4)
    return torch.rand(1, 3, 1, 2, generator=generator) * 128, torch.ones(1, 3, 1, dtype=torch.long)


def _decode(model, embeddings, cache=None):
    points, labels = _prompts()
    with torch.no_grad():
        return model(image_embeddings=embeddings, input_points=points, input_labels=labels, image_cache=cache).pred_masks


@pytest.fixture(params=["fp32", "bf16"])
def model(request, tiny_model, monkeypatch):
    """The tiny model; in bf16 its decoder computes in fp32 from its bf16 weights with a kept fp32 copy (any CPU)."""
    monkeypatch.setenv("SAM_HF_BF16_ARITHMETIC", "fp32")
    model = copy.deepcopy(tiny_model)
    return model.to(torch.bfloat16) if request.param == "bf16" else model


def _embeddings(model):
    with torch.no_grad():
        pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(5))
        return model.get_image_embeddings(pixels.to(model.dtype))


def _assert_current(model, embeddings, cache):
    """A call on the model (kept work in use) equals the same call on a deep copy (nothing kept)."""
    torch.testing.assert_close(_decode(model, embeddings, cache), _decode(copy.deepcopy(model), embeddings.clone()), rtol=0, atol=0)


def test_fused_optimizer_steps_are_seen(model):
    embeddings, cache = _embeddings(model), {}
    before = _decode(model, embeddings, cache)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)  # transformers' Trainer default
    points, labels = _prompts()
    for _ in range(2):
        optimizer.zero_grad()
        out = model(image_embeddings=embeddings, input_points=points, input_labels=labels).pred_masks
        out.float().square().mean().backward()
        optimizer.step()
    model.eval()
    after = _decode(model, embeddings, cache)
    assert not torch.equal(after, before)
    _assert_current(model, embeddings, cache)


@pytest.mark.parametrize("target", ["decoder", "positions"])
def test_writes_through_data_are_seen(model, target):
    embeddings, cache = _embeddings(model), {}
    before = _decode(model, embeddings, cache)
    if target == "decoder":  # as PEFT's merge_and_unload and hand-written EMA updates write
        for parameter in model.mask_decoder.parameters():
            parameter.data.mul_(0.5)
    else:
        model.shared_image_embedding.positional_embedding.data.mul_(-1.0)
    assert not torch.equal(_decode(model, embeddings, cache), before)
    _assert_current(model, embeddings, cache)


def test_embeddings_of_inference_mode_changed_in_place_are_seen(model):
    """bf16: the decoder's kept fp32 cast of the embeddings; both dtypes: a kept `image_cache`."""
    first = _embeddings(model)
    with torch.inference_mode():
        embeddings = first.clone()
        cache = {}
        before = model(image_embeddings=embeddings, input_points=_prompts()[0], input_labels=_prompts()[1], image_cache=cache).pred_masks
        embeddings.copy_(torch.randn(first.shape, generator=torch.Generator().manual_seed(6)).to(first.dtype))
        after = model(image_embeddings=embeddings, input_points=_prompts()[0], input_labels=_prompts()[1], image_cache=cache).pred_masks
        plain = model(image_embeddings=embeddings, input_points=_prompts()[0], input_labels=_prompts()[1]).pred_masks
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, _decode(copy.deepcopy(model), embeddings.clone()), rtol=0, atol=0)
    torch.testing.assert_close(plain, after, rtol=0, atol=0)


def test_unchanged_work_stays_kept(model):
    """No false alarms: calls on unchanged weights and embeddings keep the same kept objects."""
    embeddings, cache = _embeddings(model), {}
    _decode(model, embeddings, cache)
    with torch.no_grad():
        key, grid = cache["sam_hf.image_cache.key"], model.get_image_wide_positional_embeddings()
        weights = bf16_compute._KEPT.get(model.mask_decoder, {}).get("weights")
        _decode(model, embeddings, cache)
        assert cache["sam_hf.image_cache.key"] is key and model.get_image_wide_positional_embeddings() is grid
        assert bf16_compute._KEPT.get(model.mask_decoder, {}).get("weights") is weights
        assert (weights is not None) == (model.dtype == torch.bfloat16)


def _tensors():
    generator = torch.Generator().manual_seed(7)
    return [
        torch.randn(WHOLE, generator=generator),  # small: compared whole
        torch.randn(300, 257, generator=generator),  # large, contiguous: sampled
        torch.randn(257, 300, generator=generator).t(),  # large, not contiguous: sampled along each dimension
        torch.randn(64, 64, generator=generator).bfloat16(),
        torch.tensor(3.0),
        torch.zeros(0),
        torch.randn(5000, dtype=torch.complex64, generator=generator),
        torch.ones(3, dtype=torch.bool),
        torch.arange(10),
    ]


def test_tensors_state_holds_until_a_change():
    tensors = _tensors()
    state = TensorsState(tensors)
    assert state.holds(tensors)
    assert not state.holds(tensors[:-1])  # another list
    for index, tensor in enumerate(tensors):
        if tensor.numel() == 0:
            continue
        flat = tensor.data.view(-1) if tensor.is_contiguous() else tensor.data.t().reshape(-1)
        original = flat[0].clone()
        flat[0] = original + 1 if tensor.dtype != torch.bool else ~original  # through .data: no version bump
        assert not state.holds(tensors), f"tensor {index}: a write through .data went unseen"
        flat[0] = original
        assert state.holds(tensors), f"tensor {index}"
        with torch.no_grad():
            tensor.copy_(tensor.clone())  # a counted write (the values stay)
        assert not state.holds(tensors)
        state = TensorsState(tensors)


def test_tensors_state_sees_dense_writes_and_swaps():
    weight = torch.randn(1024, 512)
    assert weight.numel() > WHOLE and SAMPLE < weight.numel()
    state = TensorsState([weight])
    weight.data.add_(torch.randn(1024, 8) @ torch.randn(8, 512))  # a LoRA merge
    assert not state.holds([weight])
    state = TensorsState([weight])
    assert not state.holds([weight.clone()])  # the same values in another tensor
    parameter = torch.nn.Parameter(torch.randn(3))
    state = TensorsState([parameter])
    torch.optim.SGD([parameter], lr=0.0).step()  # any optimizer step counts
    assert not state.holds([parameter])


def test_tensors_state_of_inference_tensors():
    with torch.inference_mode():
        tensor = torch.randn(10_000)
    state = TensorsState([tensor])
    assert state.holds([tensor])
    with torch.inference_mode():
        tensor.copy_(torch.randn(10_000))  # no version counter to bump
    assert not state.holds([tensor])
