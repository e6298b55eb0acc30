"""sam_hf's compiled mask-upscaling kernel (`sam_hf.kernels`, "mask_upscaling") in fp32: against the upscaling
written as SAM writes it (transposed convolutions, LayerNorm2d, GELU, the hypernetwork product), against the
decoder's PyTorch path, and where it is not used. bf16: test_decoder_kernels_bf16.py."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from references import random_mask_decoder, randomize
from sam_hf import SamHfModel, config_for_variant, kernels
from sam_hf.modeling import mask_upscaling
from sam_hf.modeling.mask_decoder import SamHfMaskDecoder

KERNEL = "mask_upscaling"  # the `module` fixture (conftest.py) builds it


def _reference(decoder: SamHfMaskDecoder, image: torch.Tensor, hyper: torch.Tensor, grid: int) -> torch.Tensor:
    """SAM's upscaling on image tokens (n, g*g, C) and hypernetwork weights (n, M, C/8) -> masks (n, M, 4g, 4g)."""
    maps = image.transpose(1, 2).reshape(image.shape[0], -1, grid, grid)
    norm = decoder.upscale_layer_norm
    up = F.conv_transpose2d(maps, decoder.upscale_conv1.weight, decoder.upscale_conv1.bias, stride=2)
    up = F.gelu(F.layer_norm(up.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2))
    up = F.gelu(F.conv_transpose2d(up, decoder.upscale_conv2.weight, decoder.upscale_conv2.bias, stride=2))
    return torch.einsum("nmc,nchw->nmhw", hyper, up)


@pytest.mark.parametrize(
    "channels, grid, masks",
    [
        (256, 16, 3),  # SAM's decoder width, three masks
        (64, 22, 4),  # the shipped model's width; a grid that is not a multiple of 16 (edge columns and tiles)
        (32, 5, 1),  # the tiny test model's width: 8 channels after the first convolution, fewer than a vector
        (48, 17, 2),  # a width that is not a multiple of 16: transposed tiles and edges together
    ],
)
def test_matches_sams_upscaling(module, threads, channels, grid, masks):
    decoder = random_mask_decoder(channels)
    image = torch.randn(3, grid * grid, channels)
    hyper = torch.randn(3, masks, channels // 8)
    out = torch.full((3, masks, 4 * grid, 4 * grid), float("nan"))
    with torch.no_grad():
        module.upscale_masks(image, None, hyper, *decoder._kernel_weights(), out)
        expected = _reference(decoder, image, hyper, grid)
    assert_close(out, expected, rtol=1e-4, atol=2e-4 * expected.abs().max().item())


@pytest.mark.parametrize("bf16_path, tolerance", [(False, 1e-6), (True, 1e-5)])
def test_gelu_table_matches_the_erf_gelu(module, bf16_path, tolerance):
    """The kernel's GELU (a table of polynomials of Phi) against F.gelu in float64: at most `tolerance` off anywhere
    (PyTorch's own fp32 GELU is 1.2e-6 off), F.gelu's -0 far left and x far right, NaN for NaN and -inf."""
    x = torch.cat([torch.linspace(-12, 12, 240_001), torch.randn(10_000) * 3])
    expected = F.gelu(x.double())
    got = module.gelu(x, bf16_path)
    assert (got.double() - expected).abs().max().item() <= tolerance
    small = x.abs() < 1  # x Phi(x): relative accuracy holds near 0 too
    assert ((got.double() - expected)[small].abs() / expected[small].abs().clamp(min=1e-30)).max().item() < 50 * tolerance
    special = torch.tensor([float("nan"), -float("inf"), -30.0, -1e4, 30.0, 1e4, 0.0])
    got = module.gelu(special, bf16_path)
    assert got[:2].isnan().all()
    assert got[2:4].tolist() == [0.0, 0.0] and got[2:4].signbit().all()
    assert got[4:].tolist() == [30.0, 1e4, 0.0]


def test_index_reads_image_tokens_in_place(module, threads):
    """Row k of hyper meets image tokens index[k]: any order, repeats allowed."""
    decoder, grid = random_mask_decoder(64), 8
    image = torch.randn(4, grid * grid, 64)
    hyper = torch.randn(3, 3, 8)
    index = torch.tensor([2, 0, 2])
    out = torch.empty(3, 3, 4 * grid, 4 * grid)
    with torch.no_grad():
        module.upscale_masks(image, index, hyper, *decoder._kernel_weights(), out)
        expected = _reference(decoder, image[index], hyper, grid)
    assert_close(out, expected, rtol=1e-4, atol=2e-4 * expected.abs().max().item())


def test_decoder_upscale_masks_uses_it_and_equals_pytorch(module):
    """`SamHfMaskDecoder.upscale_masks` takes the kernel and gives the PyTorch path's masks, with `out` and `index`."""
    decoder, grid = random_mask_decoder(256), 16
    image = torch.randn(5, grid * grid, 256)
    hyper = torch.randn(4, 3, 32)
    index = torch.tensor([4, 1, 0, 3])
    with torch.no_grad():
        with kernels.disabled():
            expected = decoder.upscale_masks(image, hyper, grid, index=index)
        out = torch.empty(4, 3, 4 * grid, 4 * grid)
        written = decoder.upscale_masks(image, hyper, grid, index=index, out=out)
    assert written is out
    assert_close(out, expected, rtol=1e-4, atol=2e-4 * expected.abs().max().item())


def test_not_used_where_it_does_not_apply(module, monkeypatch):
    """fp16, bf16 tokens with fp32 weights, autograd recording, non-contiguous inputs: the PyTorch path, same results
    as the reference (bf16 throughout takes the kernel where the CPU runs oneDNN's bf16 products:
    test_decoder_kernels_bf16.py)."""
    calls = []
    monkeypatch.setattr(mask_upscaling, "kernel_for", lambda name, dtype: calls.append(name) or module)
    decoder, grid = random_mask_decoder(64), 6
    image, hyper = torch.randn(2, grid * grid, 64), torch.randn(2, 3, 8)
    with torch.no_grad():
        decoder.upscale_masks(image, hyper, grid)
    assert calls == [KERNEL]
    calls.clear()
    with torch.no_grad():
        decoder.to(torch.float16).upscale_masks(image.half(), hyper.half(), grid)
        decoder.float()
        with pytest.raises(RuntimeError):  # no kernel, and PyTorch refuses the mixed dtypes itself
            decoder.upscale_masks(image.bfloat16(), hyper.bfloat16(), grid)
        strided = torch.randn(2, grid * grid, 128)[..., ::2]
        assert_close(decoder.upscale_masks(strided, hyper, grid), _reference(decoder, strided, hyper, grid), rtol=1e-4, atol=1e-3)
    grads = decoder.upscale_masks(image, hyper.requires_grad_(), grid)
    assert grads.requires_grad and calls == []


def test_sam_sized_decoder_end_to_end(module):
    """The whole model on the kernel: same masks as with every kernel off (ViT-B's decoder sizes, small image)."""
    model = randomize(SamHfModel(config_for_variant("tiny", image_size=256)), seed=3).eval()
    embeddings = torch.randn(1, model.config.prompt_encoder_config.hidden_size, 16, 16)
    points = torch.rand(1, 6, 1, 2) * 256
    with torch.no_grad():
        got = model(image_embeddings=embeddings, input_points=points, multimask_output=True).pred_masks
        with kernels.disabled():
            expected = model(image_embeddings=embeddings, input_points=points, multimask_output=True).pred_masks
    assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_bad_shapes_are_refused(module):
    decoder = random_mask_decoder(64)
    with pytest.raises(RuntimeError, match="out must be"):
        module.upscale_masks(torch.randn(1, 16, 64), None, torch.randn(1, 3, 8), *decoder._kernel_weights(), torch.empty(1, 3, 8, 8))
    with pytest.raises(RuntimeError, match="index out of range"):
        module.upscale_masks(torch.randn(1, 16, 64), torch.tensor([1]), torch.randn(1, 3, 8), *decoder._kernel_weights(),
                             torch.empty(1, 3, 16, 16))
