"""The mask upscaling's first convolution folded through the decoder's last two image -> token attentions
(`mask_upscaling.upscale_masks_folded`, `SamHfMaskDecoder.folded_operands`): the kernel against the plain upscaling of
the image tokens the attention kernel makes, and the decoder with the fold against the decoder without it."""

import pytest
import torch
from torch.testing import assert_close

from references import random_mask_decoder, randomize
from sam_hf import SamHfModel, config_for_variant, kernels
from sam_hf.kernels import loader
from sam_hf.modeling import mask_upscaling, upscaling_linear
from sam_hf.modeling.mask_decoder import SamHfMaskDecoder

KERNEL = "mask_upscaling"  # the `module` fixture (conftest.py) builds it


def _two_passes(prompts: int, grid: int, channels: int, heads: int, tokens: int, seed: int = 0):
    """Two image -> token attentions of the compiled kernel on a shared image side x0, as the decoder runs them: the
    final image tokens, and what the fold reads (softmax weights, the first pass's times its LayerNorm 1 / std, LayerNorm
    statistics, values, norms)."""
    attention = kernels.kernel("decoder_attention")
    generator = torch.Generator().manual_seed(seed)
    length, n = grid * grid, tokens * heads
    x0, pe = torch.randn(1, length, channels, generator=generator), torch.randn(length, channels, generator=generator)
    out = torch.empty(prompts, length, channels)
    passes = []
    for _ in range(2):
        weight = torch.randn(prompts, channels, n, generator=generator) / channels**0.5
        bias, values = torch.randn(prompts, n, generator=generator), torch.randn(prompts, n, channels, generator=generator)
        norm = (1 + 0.3 * torch.randn(channels, generator=generator), 0.3 * torch.randn(channels, generator=generator))
        weights, stats = torch.empty(prompts, length, n), torch.empty(prompts, length, 2)
        residual = x0 if not passes else out
        attention.image_to_tokens(residual, None, pe, weight, bias, heads, values, *norm, 1e-6, out, None, weights, stats, not passes)
        passes.append((weights, stats, values, norm))
    return x0, out, passes


def _folded(decoder: SamHfMaskDecoder, x0, passes, grid: int, dtype=torch.float32) -> dict:
    """The folded operands, written out from the formula in `SamHfMaskDecoder.folded_operands`."""
    (first, stats1, values1, (g1, b1)), (second, stats2, values2, (g2, b2)) = passes
    conv1, bias1 = (t.float() for t in upscaling_linear.conv_transpose_weight(decoder.upscale_conv1))
    inner, outer = conv1 * (g2 * g1), conv1 * g2
    width, channels = -(-grid // 16) * 16, x0.shape[-1]
    shared = torch.nn.functional.pad((x0[0] @ inner.t()).view(grid, grid, channels), (0, 0, 0, width - grid)).transpose(1, 2).contiguous()
    return dict(shared=shared, mix=torch.cat([values1 @ inner.t(), values2 @ outer.t()], 1).transpose(1, 2).contiguous().to(dtype),
                first=first.to(dtype), second=second.to(dtype), stats1=stats1, stats2=stats2,
                terms=torch.stack([conv1 @ (g2 * g1), conv1 @ (g2 * b1), conv1 @ g2]), bias1=conv1 @ b2 + bias1)


def _run_folded(module, decoder, folded, hyper, grid, index=None, dtype=torch.float32):
    _, _, norm_weight, norm_bias, eps, conv2, bias2 = decoder._kernel_weights()
    out = torch.full((hyper.shape[0], hyper.shape[1], 4 * grid, 4 * grid), float("nan"), dtype=dtype)
    module.upscale_masks_folded(index, hyper, folded["shared"], folded["mix"], folded["first"], folded["second"], folded["stats1"],
                                folded["stats2"], folded["terms"], folded["bias1"], norm_weight, norm_bias, eps, conv2.to(dtype), bias2, out)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_kernel_records_what_the_fold_reads(dtype):
    """`image_to_tokens` with weights_out and stats_out: each image token's softmax weights (times its LayerNorm's
    1 / std with scale_weights) in the tokens' dtype, and that LayerNorm's mean and 1 / std, against float64 on the
    same inputs (bf16: the kernel's rounded operands move the weights by about 1e-2)."""
    attention = kernels.kernel_for("decoder_attention", dtype)
    if attention is None:
        pytest.skip(f"the decoder_attention kernel takes no {dtype} here")
    generator = torch.Generator().manual_seed(3)
    prompts, length, channels, heads, tokens = 2, 40, 64, 4, 3
    n = heads * tokens
    x = torch.randn(1, length, channels, generator=generator).to(dtype)
    pe = torch.randn(length, channels, generator=generator).to(dtype)
    weight = torch.randn(prompts, channels, n, generator=generator) / channels**0.5
    bias, values = torch.randn(prompts, n, generator=generator), torch.randn(prompts, n, channels, generator=generator)
    norm = (torch.ones(channels), torch.zeros(channels))
    logits = torch.einsum("lc,pcn->pln", (x[0] + pe).double(), weight.double()) + bias.double()[:, None]  # columns (t, head)
    w = logits.view(prompts, length, tokens, heads).softmax(dim=2).view(prompts, length, n)
    z = x[0].double() + w @ values.double()  # (P, L, C) before the LayerNorm
    mean, inverse_std = z.mean(-1), (z.var(-1, unbiased=False) + 1e-6).rsqrt()
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=0.05, atol=2e-2)
    records = {}
    for scale in (False, True):
        out = torch.empty(prompts, length, channels, dtype=dtype)
        weights, stats = torch.empty(prompts, length, n, dtype=dtype), torch.empty(prompts, length, 2)
        attention.image_to_tokens(x, None, pe, weight, bias, heads, values, *norm, 1e-6, out, None, weights, stats, scale)
        assert_close(weights.double(), w * inverse_std[..., None] if scale else w, **tolerance)
        assert_close(stats.double(), torch.stack([mean, inverse_std], -1), **tolerance)
        records[scale] = (weights, stats)
    # the same weights with and without the scale, up to the one rounding of each record
    exact = dict(rtol=1e-6, atol=0) if dtype == torch.float32 else dict(rtol=2**-7, atol=0)
    assert_close(records[True][0].double(), records[False][0].double() * records[False][1][..., 1:].double(), **exact)
    with pytest.raises(RuntimeError, match="scale_weights needs weights_out and stats_out"):
        attention.image_to_tokens(x, None, pe, weight, bias, heads, values, *norm, 1e-6, out, None, weights, None, True)
    with pytest.raises(RuntimeError, match="weights_out must be a contiguous"):
        other = torch.float32 if dtype == torch.bfloat16 else torch.bfloat16
        attention.image_to_tokens(x, None, pe, weight, bias, heads, values, *norm, 1e-6, out, None, weights.to(other), stats)


@pytest.mark.parametrize("prompts, grid, channels, heads, tokens", [(3, 22, 64, 4, 7), (2, 16, 256, 8, 7), (2, 5, 32, 2, 5)])
def test_folded_kernel_matches_the_upscaling_of_the_image_tokens(module, threads, prompts, grid, channels, heads, tokens):
    decoder = random_mask_decoder(channels)
    x0, image, passes = _two_passes(prompts, grid, channels, heads, tokens)
    hyper = torch.randn(prompts, 3, channels // 8)
    expected = torch.empty(prompts, 3, 4 * grid, 4 * grid)
    module.upscale_masks(image, None, hyper, *decoder._kernel_weights(), expected)
    folded = _folded(decoder, x0, passes, grid)
    scale = float(expected.abs().max())
    assert_close(_run_folded(module, decoder, folded, hyper, grid), expected, rtol=1e-4, atol=1e-5 * scale)
    index = torch.tensor([prompts - 1, 0])  # prompt k reads source index[k]'s factors
    expected_index = torch.empty(2, 3, 4 * grid, 4 * grid)
    module.upscale_masks(image, index, hyper[:2].contiguous(), *decoder._kernel_weights(), expected_index)
    assert_close(_run_folded(module, decoder, folded, hyper[:2].contiguous(), grid, index), expected_index, rtol=1e-4, atol=1e-5 * scale)


def test_folded_kernel_in_bf16(module):
    if kernels.kernel_for(KERNEL, torch.bfloat16) is None:
        pytest.skip("the mask_upscaling kernel takes no bf16 here (oneDNN's bf16 products need AVX512-BF16)")
    decoder = random_mask_decoder(64)
    x0, image, passes = _two_passes(3, 22, 64, 4, 7, seed=1)
    hyper = torch.randn(3, 3, 8)
    expected = torch.empty(3, 3, 88, 88)
    module.upscale_masks(image, None, hyper, *decoder._kernel_weights(), expected)
    got = _run_folded(module, decoder, _folded(decoder, x0, passes, 22, torch.bfloat16), hyper, 22, dtype=torch.bfloat16)
    scale = float(expected.abs().max())
    assert got.dtype == torch.bfloat16
    assert_close(got.float(), expected, rtol=2**-6, atol=2**-6 * scale)  # the mix and conv2 weights, their operands rounded


def test_bad_folded_operands_are_refused(module):
    decoder, grid = random_mask_decoder(64), 8
    x0, _, passes = _two_passes(2, grid, 64, 4, 3)
    folded = _folded(decoder, x0, passes, grid)
    hyper = torch.randn(2, 3, 8)
    with pytest.raises(RuntimeError, match=r"shared must be \(g, C, G\)"):
        _run_folded(module, decoder, dict(folded, shared=folded["shared"][:, :, :8].contiguous()), hyper, grid)
    with pytest.raises(RuntimeError, match=r"stats1 and stats2 \(S, L, 2\)"):
        _run_folded(module, decoder, dict(folded, stats2=folded["stats2"][:, 1:].contiguous()), hyper, grid)
    with pytest.raises(RuntimeError, match="mix must be fp32 or bf16, got Double"):
        _run_folded(module, decoder, dict(folded, mix=folded["mix"].double()), hyper, grid)
    with pytest.raises(RuntimeError, match="first must be a contiguous bf16"):  # mix, first, second, conv2 and out: one dtype
        _run_folded(module, decoder, dict(folded, mix=folded["mix"].bfloat16()), hyper, grid)
    with pytest.raises(RuntimeError, match="conv2 must be a contiguous bf16"):
        bf16 = {name: folded[name].bfloat16() for name in ("mix", "first", "second")}
        _run_folded(module, decoder, dict(folded, **bf16), hyper, grid)


@pytest.fixture(scope="module")
def sam_decoder():
    return randomize(SamHfModel(config_for_variant("vit_b")), seed=5).eval()


_EMBEDDINGS = {}


def _decode(model, prompts, seed=0, **kwargs):
    """The first `prompts` of six seeded one-point prompts on the seed's embeddings (one tensor per seed: a cache
    kept across calls knows embeddings by identity)."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = _EMBEDDINGS.setdefault(seed, torch.randn(1, 256, 64, 64, generator=generator))
    points = torch.rand(1, 6, 1, 2, generator=torch.Generator().manual_seed(seed + 100))[:, :prompts] * 1024
    return model(image_embeddings=embeddings, input_points=points, multimask_output=True, **kwargs)


def _spy(monkeypatch):
    """Counts the upscaling kernel's calls by function."""
    counts = {}

    class Spy:
        def __init__(self, module):
            self.module = module

        def __getattr__(self, name):
            def call(*args, **kwargs):
                counts[name] = counts.get(name, 0) + 1
                return getattr(self.module, name)(*args, **kwargs)

            return call

    monkeypatch.setattr(mask_upscaling, "kernel_for", lambda name, dtype: None if loader.kernel_for(name, dtype) is None else Spy(loader.kernel_for(name, dtype)))
    return counts


@torch.no_grad()
def test_decoder_folds_where_it_pays_and_gives_the_same_masks(module, sam_decoder, monkeypatch):
    """Six prompts: the fold, the same masks and scores as the plain kernel path; with the mask IoU threshold no fold.
    One prompt: no fold (the shared product would cost more than it saves), but with a kept `image_cache`. With
    `image_cache`: the shared product kept for the next call on the same embeddings, made again for other embeddings."""
    with monkeypatch.context() as patch:
        patch.setattr(SamHfMaskDecoder, "_folds_upscaling", lambda self, image, prompts, cache: False)
        plain = _decode(sam_decoder, 6)
    counts = _spy(monkeypatch)
    folded = _decode(sam_decoder, 6)
    assert counts == {"upscale_masks_folded": 1}
    scale = float(plain.pred_masks.abs().max())
    assert_close(folded.pred_masks, plain.pred_masks, rtol=1e-4, atol=1e-5 * scale)
    assert_close(folded.iou_scores, plain.iou_scores, rtol=1e-4, atol=1e-5)
    counts.clear()
    _decode(sam_decoder, 6, mask_iou_threshold=float(plain.iou_scores.median()))
    assert counts == {"upscale_masks": 1}  # the prompts above it, by index
    counts.clear()
    _decode(sam_decoder, 1)
    assert counts == {"upscale_masks": 1}
    counts.clear()
    one = _decode(sam_decoder, 1, image_cache={})  # kept: the shared product serves the later calls on the image
    assert counts == {"upscale_masks_folded": 1}
    assert_close(one.pred_masks, plain.pred_masks[:, :1], rtol=1e-4, atol=1e-5 * scale)
    counts.clear()
    image_cache = {}
    three = _decode(sam_decoder, 3, image_cache=image_cache)
    kept = image_cache["upscale_shared"][1]
    again = _decode(sam_decoder, 3, image_cache=image_cache)
    assert counts == {"upscale_masks_folded": 2} and image_cache["upscale_shared"][1] is kept
    assert torch.equal(three.pred_masks, again.pred_masks)
    assert_close(three.pred_masks, folded.pred_masks[:, :3], rtol=1e-4, atol=1e-5 * scale)  # the first three of the six prompts
    _decode(sam_decoder, 3, seed=1, image_cache=image_cache)  # other embeddings: the product is made again
    assert image_cache["upscale_shared"][1] is not kept
