"""Fixtures for processing tests: a minimal Meta `Sam` (only to call its own preprocess/postprocess_masks)."""
import functools

import numpy as np
import pytest
import torch


@functools.lru_cache(maxsize=None)
def _meta_sam(image_size: int):
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = image_size // 16
    encoder = ImageEncoderViT(img_size=image_size, patch_size=16, embed_dim=16, depth=1, num_heads=1, out_chans=16)
    prompt = PromptEncoder(embed_dim=16, image_embedding_size=(grid, grid), input_image_size=(image_size, image_size), mask_in_chans=4)
    decoder = MaskDecoder(transformer_dim=16, transformer=TwoWayTransformer(depth=1, embedding_dim=16, num_heads=1, mlp_dim=16))
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()


@pytest.fixture
def meta_sam():
    """meta_sam(S) -> a segment_anything Sam whose image encoder takes S x S inputs."""
    return _meta_sam


@pytest.fixture
def meta_pixel_values(meta_sam):
    """Meta's own path: ResizeLongestSide.apply_image on (H, W, 3) uint8, then Sam.preprocess -> (1, 3, S, S)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    def run(rgb: np.ndarray, image_size: int) -> torch.Tensor:
        resized = ResizeLongestSide(image_size).apply_image(rgb)
        x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]  # (1, 3, h, w) uint8
        return meta_sam(image_size).preprocess(x)

    return run


@pytest.fixture
def rng():
    return np.random.RandomState(0)
