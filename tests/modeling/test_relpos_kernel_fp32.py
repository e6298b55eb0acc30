"""sam_hf's compiled attention kernel with relative positions (sam_hf.kernels) in fp32: Meta's formula within fp32
rounding (no bf16 anywhere), and the fp32 encoder on it against the encoder without it and against transformers."""

import pytest
import torch
from torch.testing import assert_close

from references import randomize, transformers_from_ours
from sam_hf import SamHfModel, config_for_variant, kernels
from sam_hf.modeling import attention
from sam_hf.modeling.attention import eager_attention_with_rel_pos

KERNEL = "relpos_attention"  # the `module` fixture (conftest.py) builds it


@pytest.fixture(scope="module")
def relpos_attention(module):
    return module.relpos_attention


def _expected(q, k, v, rel_h, rel_w, scale, size):
    """Meta's formula in float64."""
    groups, length = q.shape[:2], q.shape[2]
    out, _ = eager_attention_with_rel_pos(
        q.double(), k.double(), v.double(), scale=scale, size=size,
        rel_h=rel_h.double().reshape(*groups, length, size[0]), rel_w=rel_w.double().reshape(*groups, length, size[1]),
    )
    return out


@pytest.mark.parametrize(
    "groups, size, head_dim",
    [
        ((2, 3), (14, 14), 64),  # ViT window: one key block, lane-permuted terms
        ((1, 2), (64, 64), 64),  # ViT-B global grid: 16 key blocks of 4 rows, whole-vector terms, lazy rescaling
        ((2, 1), (37, 20), 32),  # key blocks of 12 rows, the last one partial; gathered terms; odd block sizes
        ((1, 1), (5, 7), 16),
    ],
)
def test_matches_meta_formula_in_fp32(relpos_attention, threads, groups, size, head_dim):
    generator = torch.Generator().manual_seed(0)
    height, width = size
    length, count = height * width, groups[0] * groups[1]
    q, k, v = (torch.randn(*groups, length, head_dim, generator=generator) for _ in range(3))
    rel_h = torch.randn(count, height, width, height, generator=generator) * 2
    rel_w = torch.randn(count, height, width, width, generator=generator) * 2
    out = relpos_attention(q, k, v, rel_h, rel_w, head_dim**-0.5)
    assert out.dtype == torch.float32 and out.shape == (*groups, length, head_dim)
    assert_close(out.double(), _expected(q, k, v, rel_h, rel_w, head_dim**-0.5, size), rtol=0, atol=2e-5)


def test_rescales_when_later_key_blocks_dominate_in_fp32(relpos_attention):
    # each key block's max exceeds the previous one's by 20, beyond the kernel's lazy-rescale margin (16)
    generator = torch.Generator().manual_seed(3)
    height = width = 64
    length = height * width
    q, k, v = (torch.randn(1, 1, length, 64, generator=generator) for _ in range(3))
    rel_h = (5.0 * torch.arange(height, dtype=torch.float32)).expand(1, height, width, height)
    rel_w = torch.randn(1, height, width, width, generator=generator)
    out = relpos_attention(q, k, v, rel_h, rel_w, 0.125)
    expected = _expected(q, k, v, rel_h, rel_w, 0.125, (height, width))
    # logits reach 315, whose fp32 rounding (ulp 3e-5) alone moves the weights: no more error than the formula in fp32
    fp32, _ = eager_attention_with_rel_pos(q, k, v, scale=0.125, size=(height, width),
                                           rel_h=rel_h.reshape(1, 1, length, height), rel_w=rel_w.reshape(1, 1, length, width))
    assert torch.isfinite(out).all()
    assert (out.double() - expected).abs().max() <= 1.5 * (fp32.double() - expected).abs().max()


def test_fp32_encoder_on_the_kernel(relpos_attention, monkeypatch):
    """Every block's attention takes the kernel; the embeddings equal the PyTorch path's and transformers' within
    fp32 rounding (256 px: 4 x 4 windows of 4 x 4 tokens and a 16 x 16 global grid; rel-pos tables that matter)."""
    model = randomize(SamHfModel(config_for_variant("tiny", image_size=256)), seed=4).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos" in name:
                param.normal_(std=1.0)
    pixels = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    calls = []
    original = attention.kernel_attention_with_rel_pos
    monkeypatch.setattr(attention, "kernel_attention_with_rel_pos", lambda *a, **k: calls.append(1) or original(*a, **k))
    from sam_hf.modeling import image_encoder

    monkeypatch.setattr(image_encoder, "kernel_attention_with_rel_pos", attention.kernel_attention_with_rel_pos)
    with torch.inference_mode():
        with_kernel = model.get_image_embeddings(pixels)
        assert len(calls) == model.config.vision_config.num_hidden_layers
        with kernels.disabled():
            without = model.get_image_embeddings(pixels)
        reference = transformers_from_ours(model).get_image_embeddings(pixels)
    assert len(calls) == model.config.vision_config.num_hidden_layers  # not called with the kernels off
    assert_close(with_kernel, without, rtol=1e-5, atol=1e-5)
    assert_close(with_kernel, reference, rtol=1e-5, atol=1e-5)
