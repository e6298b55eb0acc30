"""benchmarks/_flops.py counts what the original model computes: checked against torch's FLOP counter on Meta's
segment_anything modules (every matmul, bmm and convolution they run)."""

import os
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from references import meta_from_ours
from sam_hf import SamHfModel, config_for_variant

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from _flops import decoder_gflop, encoder_gflop  # noqa: E402

pytest.importorskip("segment_anything")


def counted_gflop(fn) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


@pytest.mark.parametrize("overrides", [
    {},  # windows that tile the grid, one global block
    {"image_size": 160, "window_size": 3, "global_attn_indexes": [1]},  # a 10 x 10 grid: windows padded to 12 x 12
    {"window_size": 0},  # global attention everywhere
])
def test_counts_match_metas_model(overrides):
    config = config_for_variant("tiny", **overrides)
    meta = meta_from_ours(SamHfModel(config).eval())
    size = config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size)
    assert counted_gflop(lambda: meta.image_encoder(pixels)) == pytest.approx(encoder_gflop(config), rel=1e-12)

    prompts = 5
    with torch.no_grad():
        embeddings = meta.image_encoder(pixels)
        points = torch.rand(prompts, 1, 2) * size
        sparse, dense = meta.prompt_encoder(points=(points, torch.ones(prompts, 1, dtype=torch.long)), boxes=None, masks=None)
        image_pe = meta.prompt_encoder.get_dense_pe()
    assert sparse.shape[1] == 2  # the point and the padding point the count assumes
    decoded = counted_gflop(lambda: meta.mask_decoder(
        image_embeddings=embeddings, image_pe=image_pe, sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
        multimask_output=True))
    assert decoded / prompts == pytest.approx(decoder_gflop(config), rel=1e-12)


def test_vit_presets():
    """The figures the benchmarks' README quotes."""
    assert [round(encoder_gflop(config_for_variant(v))) for v in ("vit_b", "vit_l", "vit_h")] == [972, 2986, 5961]
    assert round(decoder_gflop(config_for_variant("vit_b")), 2) == 3.62
