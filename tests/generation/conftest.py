"""Fixtures for generation tests: a tiny Meta `Sam` and our model on the same weights, a cv2 stand-in."""
import sys
import types
from collections import deque
from functools import partial

import numpy as np
import pytest
import torch

from sam_hf.modeling.sam import SamHfModel
from sam_hf.variants import config_for_variant


def _tiny_meta_sam(seed: int):
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=32, img_size=128, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1], window_size=4,
            out_chans=32,
        ),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(128, 128), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
            transformer_dim=32, iou_head_depth=3, iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    with torch.no_grad():
        # Random weights give speckled masks spanning the whole image. Nearest-neighbour upscaling
        # kernels and larger logits give blobs of varied sizes, so every filter has work to do.
        for layer in sam.mask_decoder.output_upscaling:
            if isinstance(layer, torch.nn.ConvTranspose2d):
                layer.weight.copy_(layer.weight[..., :1, :1].expand_as(layer.weight))
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(60.0)
            mlp.layers[-1].bias.mul_(60.0)
    return sam.eval()


@pytest.fixture(scope="session")
def meta_and_ours():
    """(Meta's Sam, our SamHfModel) with identical tiny random weights, 128-pixel input."""
    meta = _tiny_meta_sam(0)
    ours = SamHfModel.from_meta_state_dict(meta.state_dict(), config_for_variant("tiny")).eval()
    return meta, ours


@pytest.fixture(scope="session")
def blocks_image():
    """(110, 150, 3) uint8 image of flat coloured blocks."""
    rng = np.random.default_rng(0)
    return np.kron((rng.random((5, 6, 3)) * 255).astype(np.uint8), np.ones((22, 25, 1), dtype=np.uint8))


def _reference_components(image, connectivity):
    """Brute-force stand-in for cv2.connectedComponentsWithStats: 8-connected BFS labels in raster order."""
    assert connectivity == 8
    h, w = image.shape
    labels = np.zeros((h, w), dtype=np.int32)
    sizes = [int((image == 0).sum())]
    for y in range(h):
        for x in range(w):
            if image[y, x] and not labels[y, x]:
                label = len(sizes)
                labels[y, x], queue, size = label, deque([(y, x)]), 0
                while queue:
                    cy, cx = queue.popleft()
                    size += 1
                    for ny in range(max(cy - 1, 0), min(cy + 2, h)):
                        for nx in range(max(cx - 1, 0), min(cx + 2, w)):
                            if image[ny, nx] and not labels[ny, nx]:
                                labels[ny, nx] = label
                                queue.append((ny, nx))
                sizes.append(size)
    stats = np.zeros((len(sizes), 5), dtype=np.int32)
    stats[:, -1] = sizes
    return len(sizes), labels, stats, None


@pytest.fixture
def fake_cv2(monkeypatch):
    """Meta's `remove_small_regions` imports cv2 (not installed): a brute-force stand-in."""
    module = types.ModuleType("cv2")
    module.connectedComponentsWithStats = _reference_components
    monkeypatch.setitem(sys.modules, "cv2", module)
