"""Ground-truth masks to the model-input and low-resolution frames, and annotation decoding."""
import numpy as np
import torch

from sam_hf.training import decode_instance_masks, masks_to_model_frame, valid_region


def test_model_frame_resizes_like_the_image_and_pads():
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask[0, :, :2] = True  # left half of a 2x4 image
    out = masks_to_model_frame(mask, image_size=8)  # resized to 4x8, padded to 8x8
    expected = torch.zeros(1, 8, 8, dtype=torch.bool)
    expected[0, :4, :4] = True
    assert torch.equal(out, expected)
    assert torch.equal(valid_region((2, 4), image_size=8), torch.arange(8)[:, None].expand(8, 8) < 4)


def test_model_frame_agrees_with_the_processor_low_res_frame():
    from sam_hf.processing import masks_to_low_res

    masks = torch.rand(3, 37, 50, generator=torch.Generator().manual_seed(0)) > 0.6
    full = masks_to_model_frame(masks, image_size=64)  # (3, 64, 64)
    low = masks_to_low_res(masks, longest_edge=64, low_res_size=16, binarize=False)  # (3, 16, 16)
    pooled = torch.nn.functional.avg_pool2d(full.float()[:, None], 4)[:, 0]
    assert (pooled - low).abs().mean() < 0.1  # same frame: only thresholding before pooling differs


def test_decode_forms_agree():
    from pycocotools import mask as mask_utils
    from PIL import Image

    masks = np.zeros((2, 6, 5), dtype=bool)
    masks[0, 1:3, 1:4] = True
    masks[1, 4:6, 0:2] = True
    ids = masks[0] * 1 + masks[1] * 2
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    images = [Image.fromarray(m.astype(np.uint8) * 255) for m in masks]
    for value in (images, rles, Image.fromarray(ids.astype(np.uint8))):
        assert np.array_equal(decode_instance_masks(value, height=6, width=5), masks)
    square = decode_instance_masks([[[0, 0, 4, 0, 4, 4, 0, 4]]], height=6, width=5)  # a COCO polygon
    assert square.shape == (1, 6, 5) and square[0, 1:4, 1:4].all() and not square[0, 5].any()
