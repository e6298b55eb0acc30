"""The fp32 inference forms of attention with relative positions agree with Meta's explicit formula."""

import pytest
import torch
from torch.testing import assert_close

import sam_hf.modeling.attention as attention
from sam_hf import SamHfModel, config_for_variant
from sam_hf.modeling.attention import (
    decomposed_rel_pos,
    eager_attention_with_rel_pos,
    mask_chunk_bytes,
    row_blocked_attention_with_rel_pos,
    row_blocked_usable,
    sdpa_with_rel_pos_mask,
)


def _inputs(batch, heads, size, head_dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    length = size[0] * size[1]
    q, k, v = torch.randn(3, batch, heads, length, head_dim, generator=generator)
    rel_h = torch.randn(2 * size[0] - 1, head_dim, generator=generator) * 0.3
    rel_w = torch.randn(2 * size[1] - 1, head_dim, generator=generator) * 0.3
    return q, k, v, rel_h, rel_w


def test_row_blocked_attention_matches_meta_formula_on_a_non_square_grid():
    size, head_dim = (24, 40), 16  # rows of one block do not divide the grid: a partial last block
    q, k, v, rel_pos_h, rel_pos_w = _inputs(2, 3, size, head_dim)
    scale = head_dim**-0.5
    rel_h, rel_w = decomposed_rel_pos(q, rel_pos_h, rel_pos_w, size)
    expected, _ = eager_attention_with_rel_pos(q, k, v, scale=scale, rel_h=rel_h, rel_w=rel_w, size=size)
    with torch.inference_mode():
        blocked = row_blocked_attention_with_rel_pos(q, k, v, rel_pos_h, rel_pos_w, size=size, scale=scale).clone()
        masked = sdpa_with_rel_pos_mask(q, k, v, rel_pos_h, rel_pos_w, size=size, scale=scale).clone()
    assert_close(blocked, expected, rtol=1e-5, atol=1e-5)
    assert_close(masked, expected, rtol=1e-5, atol=1e-5)


def test_encoder_with_a_large_global_grid_matches_its_training_form():
    # 512-pixel input, patch 16: a 32 x 32 global grid (1024 tokens) takes the row-blocked path at inference
    config = config_for_variant("tiny", image_size=512)
    torch.manual_seed(0)
    model = SamHfModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos" in name:
                param.normal_(std=1.0)  # zeros by default: make the relative positions matter
    pixels = torch.randn(1, 3, 512, 512)
    reference = model.get_image_embeddings(pixels)  # autograd records: the out-of-place reference form
    with torch.inference_mode():
        fast = model.get_image_embeddings(pixels)
    assert config.vision_config.grid_size**2 >= 1024 and config.vision_config.global_attn_indexes
    assert_close(fast, reference.detach(), rtol=2e-5, atol=2e-5)


def test_row_blocks_and_small_bias_chunks_are_for_cpus_only():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)  # a device object needs no GPU
    assert row_blocked_usable(device=cpu, tokens=64 * 64)
    assert not row_blocked_usable(device=cpu, tokens=14 * 14)  # windows take the dense-bias chunks
    assert not row_blocked_usable(device=gpu, tokens=64 * 64)  # thousands of tiny launches on a GPU
    assert mask_chunk_bytes(cpu) == attention.MASK_CHUNK_BYTES
    # a GPU's chunk holds the bias of a whole ViT-H global grid (16 heads, 4096 x 4096, fp32) in one call
    assert mask_chunk_bytes(gpu) >= 16 * 4096 * 4096 * 4


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 3 * 40 * 960 * 4, 2**30])  # one row, several rows, whole grids
def test_dense_bias_chunks_of_any_size_give_the_same_attention(monkeypatch, chunk_bytes):
    size, head_dim = (24, 40), 16
    q, k, v, rel_pos_h, rel_pos_w = _inputs(3, 3, size, head_dim, seed=1)
    scale = head_dim**-0.5
    rel_h, rel_w = decomposed_rel_pos(q, rel_pos_h, rel_pos_w, size)
    expected, _ = eager_attention_with_rel_pos(q, k, v, scale=scale, rel_h=rel_h, rel_w=rel_w, size=size)
    monkeypatch.setattr(attention, "MASK_CHUNK_BYTES", chunk_bytes)
    with torch.inference_mode():
        masked = sdpa_with_rel_pos_mask(q, k, v, rel_pos_h, rel_pos_w, size=size, scale=scale).clone()
    assert_close(masked, expected, rtol=1e-5, atol=1e-5)
