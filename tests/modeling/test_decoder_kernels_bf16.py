"""sam_hf's compiled decoder kernels in bf16 ("decoder_attention" and "mask_upscaling", `sam_hf.kernels`, on CPUs
where oneDNN's bf16 products run): each function against the same kernel in fp32 on the same (bf16) inputs, where
the only differences are the kernel's own roundings (the products' operands, each new image token or mask), and
the bf16 decoder against the fp32 one and against PyTorch's bf16 path."""

import pytest
import torch
from torch.testing import assert_close

from references import random_mask_decoder, randomize
from sam_hf import SamHfModel, config_for_variant, kernels
from sam_hf.kernels import loader
from sam_hf.modeling import kernel_inputs, mask_upscaling

BF16 = torch.bfloat16


def _bf16_kernel(name: str):
    if loader._why_not(name) is not None:
        pytest.skip(f"the {name} kernel cannot be used here: {loader._why_not(name)}")
    assert kernels.kernel(name) is not None, kernels.unavailable_reason(name)
    module = kernels.kernel_for(name, BF16)
    if module is None:
        pytest.skip(f"the {name} kernel takes no bf16 here (oneDNN's bf16 products need AVX512-BF16)")
    return module


@pytest.fixture(scope="module")
def attention():
    return _bf16_kernel("decoder_attention")


@pytest.fixture(scope="module")
def upscaling():
    return _bf16_kernel("mask_upscaling")


def _bf16(*tensors):
    """bf16 copies, and their exact fp32 values."""
    rounded = [t.to(BF16) for t in tensors]
    return rounded, [t.float() for t in rounded]


def _assert_bf16_close(got: torch.Tensor, fp32: torch.Tensor, ulps: float = 4.0):
    """got (bf16) within a few bf16 roundings of the fp32 result, relative to the result's scale (a wrong layout or
    index gives errors of the order of the values themselves)."""
    assert got.dtype == BF16
    scale = float(fp32.abs().max())
    assert_close(got.float(), fp32, rtol=ulps * 2**-8, atol=ulps * 2**-8 * scale)


@pytest.mark.parametrize(
    "sides, prompts, channels, heads, tokens, tiled, length",
    [
        (1, 3, 256, 8, 7, True, 300),  # SAM's first pass: the shared query projection as fp32 tiles
        (3, 3, 256, 8, 6, False, 300),  # each prompt's own image side, x + pe folded
        (1, 2, 40, 5, 3, False, 301),  # an odd logit count (15: the bf16 product's K padded) and an odd last block (45 rows)
        (2, 4, 64, 4, 7, True, 97),  # two images, two prompts each; the shipped model's width
    ],
)
def test_image_to_tokens_bf16_matches_fp32(attention, threads, sides, prompts, channels, heads, tokens, tiled, length):
    generator = torch.Generator().manual_seed(0)
    n = tokens * heads
    (residual, pe), (residual32, pe32) = _bf16(torch.randn(sides, length, channels, generator=generator),
                                               torch.randn(length, channels, generator=generator))
    depth = channels // 2 if tiled else channels
    source = kernel_inputs.token_tiles(torch.randn(sides, length, depth, generator=generator)) if tiled else None
    weight = torch.randn(prompts, *((tokens, depth) if tiled else (depth, n)), generator=generator) / depth**0.5
    bias = torch.randn(prompts, n, generator=generator)
    bias[0, heads : 2 * heads] = float("-inf")  # prompt 0's token 1 is padding: exactly no weight
    values = torch.randn(prompts, n, channels, generator=generator)
    norm_weight, norm_bias = torch.randn(channels, generator=generator), torch.randn(channels, generator=generator)
    next_queries = torch.randn(prompts, 5, channels, generator=generator) / channels**0.5
    small = (weight, bias, heads, values, norm_weight, norm_bias, 1e-6)
    expected = torch.empty(prompts, length, channels)
    expected_mixed = attention.image_to_tokens(residual32, source, pe32, *small, expected, next_queries)
    out = torch.full((prompts, length, channels), float("nan"), dtype=BF16)
    mixed = attention.image_to_tokens(residual, source, pe, *small, out, next_queries)
    _assert_bf16_close(out, expected)
    assert mixed.dtype == torch.float32
    assert_close(mixed, expected_mixed, rtol=4 * 2**-8, atol=4 * 2**-8 * float(expected_mixed.abs().max()))
    if sides == prompts:  # in place: each prompt's own side is its output
        own = residual.clone()
        attention.image_to_tokens(own, source, pe, *small, own, None)
        assert torch.equal(own, out)


def test_tokens_to_image_and_head_attention_bf16_match_fp32(attention, threads):
    generator = torch.Generator().manual_seed(2)
    (keys, pe), (keys32, pe32) = _bf16(torch.randn(3, 301, 64, generator=generator), torch.randn(301, 64, generator=generator))
    queries, index = torch.randn(4, 7, 64, generator=generator), torch.tensor([2, 0, 2, 1])
    got, expected = attention.tokens_to_image(queries, keys, pe, index), attention.tokens_to_image(queries, keys32, pe32, index)
    assert got.dtype == torch.float32
    assert_close(got, expected, rtol=4 * 2**-8, atol=4 * 2**-8 * float(expected.abs().max()))
    heads_queries = torch.randn(2, 8, 28, 16, generator=generator) / 2  # (S, h, M, d)
    (k, v), (k32, v32) = _bf16(torch.randn(2, 700, 128, generator=generator), torch.randn(2, 700, 128, generator=generator))
    got, expected = attention.head_attention(heads_queries, k, v), attention.head_attention(heads_queries, k32, v32)
    assert_close(got, expected, rtol=4 * 2**-8, atol=4 * 2**-8 * float(expected.abs().max()))


def test_bf16_inputs_are_checked(attention, upscaling):
    residual = torch.randn(1, 64, 32, dtype=BF16)
    small = (torch.randn(1, 32, 8), torch.zeros(1, 8), 2, torch.randn(1, 8, 32), torch.ones(32), torch.zeros(32), 1e-6)
    with pytest.raises(RuntimeError, match="pe must be a contiguous bf16 CPU tensor"):  # the image tokens' dtype throughout
        attention.image_to_tokens(residual, None, torch.randn(64, 32), *small, torch.empty(1, 64, 32, dtype=BF16), None)
    with pytest.raises(RuntimeError, match="out must be a contiguous bf16"):
        attention.image_to_tokens(residual, None, torch.randn(64, 32, dtype=BF16), *small, torch.empty(1, 64, 32), None)
    with pytest.raises(RuntimeError, match="need an even channel count"):
        attention.tokens_to_image(torch.randn(1, 4, 33), torch.randn(1, 64, 33, dtype=BF16), torch.randn(64, 33, dtype=BF16))
    with pytest.raises(RuntimeError, match="residual must be fp32 or bf16"):
        attention.image_to_tokens(residual.half(), None, torch.randn(64, 32), *small, torch.empty(1, 64, 32), None)
    decoder = random_mask_decoder(64)
    with pytest.raises(RuntimeError, match="conv1 must be a contiguous bf16"):  # weights in fp32 for bf16 tokens
        upscaling.upscale_masks(torch.randn(1, 16, 64, dtype=BF16), None, torch.randn(1, 3, 8), *decoder._kernel_weights(),
                                torch.empty(1, 3, 16, 16, dtype=BF16))


@pytest.mark.parametrize("channels, grid, masks", [(256, 16, 3), (64, 22, 4), (32, 5, 1)])
def test_upscale_masks_bf16_matches_fp32(upscaling, threads, channels, grid, masks):
    """bf16 tokens and convolution weights: the fp32 kernel's masks on the same values, up to the bf16 rounding of the
    first convolution's activations (the second's operand) and of the masks."""
    decoder = random_mask_decoder(channels).to(BF16).float()  # weights exactly representable in bf16
    (image,), (image32,) = _bf16(torch.randn(3, grid * grid, channels))
    hyper = torch.randn(3, masks, channels // 8).to(BF16).float()
    expected = torch.empty(3, masks, 4 * grid, 4 * grid)
    upscaling.upscale_masks(image32, None, hyper, *decoder._kernel_weights(), expected)
    weights = list(decoder.to(BF16)._kernel_weights())
    out = torch.full((3, masks, 4 * grid, 4 * grid), float("nan"), dtype=BF16)
    upscaling.upscale_masks(image, torch.tensor([0, 1, 2]), hyper, *weights, out)
    # each mask pixel sums C/8 products of GELUs of C/4-term sums of bf16-rounded activations: a few roundings of the
    # terms' scale, which can exceed the mask's own where terms cancel
    _assert_bf16_close(out, expected, ulps=8.0)


@torch.no_grad()
def test_bf16_decoder_uses_both_kernels_and_stays_near_fp32(attention, upscaling, monkeypatch):
    """SAM's decoder sizes in bf16: both kernels run, and the masks and IoU scores are as close to the fp32 decoder's
    on the same weights as PyTorch's bf16 path (which rounds every intermediate) gets."""
    model = randomize(SamHfModel(config_for_variant("vit_b")), seed=4).eval().to(BF16)
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(1, 256, 64, 64, generator=generator).to(BF16)
    points = torch.rand(1, 6, 1, 2, generator=generator) * 1024
    calls = []
    monkeypatch.setattr(kernel_inputs, "kernel_for", lambda name, dtype: calls.append((name, dtype)) or loader.kernel_for(name, dtype))
    monkeypatch.setattr(mask_upscaling, "kernel_for", lambda name, dtype: calls.append((name, dtype)) or loader.kernel_for(name, dtype))
    ours = model(image_embeddings=embeddings, input_points=points, multimask_output=True)
    assert ("decoder_attention", BF16) in calls and ("mask_upscaling", BF16) in calls
    with kernels.disabled():
        plain = model(image_embeddings=embeddings, input_points=points, multimask_output=True)
    reference = model.float()(image_embeddings=embeddings.float(), input_points=points, multimask_output=True)
    assert ours.pred_masks.dtype == BF16
    ours_error = (ours.pred_masks.float() - reference.pred_masks).abs().mean()
    plain_error = (plain.pred_masks.float() - reference.pred_masks).abs().mean()
    assert ours_error <= 1.1 * plain_error, (ours_error, plain_error)
    assert ours_error < 0.02 * reference.pred_masks.abs().mean()
    assert_close(ours.iou_scores.float(), reference.iou_scores, rtol=0.0, atol=0.05 * float(reference.iou_scores.abs().max()))
