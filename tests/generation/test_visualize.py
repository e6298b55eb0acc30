"""sam_hf.visualize: masks (arrays, records, RLEs) and prompts over an image."""
import numpy as np
import pytest
import torch
from PIL import Image

from sam_hf.generation.rle import coco_encode_rle, mask_to_rle
from sam_hf.visualize import draw_prompts, mask_colors, overlay


def _image():
    return np.full((20, 30, 3), 100, dtype=np.uint8)


def test_overlay_colors_only_the_masks():
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:10, 5:15] = True
    picture = np.asarray(overlay(_image(), mask, outline=False))
    assert picture.shape == (20, 30, 3)
    assert (picture[~mask] == 100).all() and (picture[mask] != 100).any()
    expected = np.rint(0.5 * 100 + 0.5 * mask_colors(1)[0].astype(np.float32)).astype(np.uint8)
    np.testing.assert_array_equal(picture[6, 6], expected)


def test_overlay_accepts_records_rles_and_stacks():
    masks = torch.zeros(2, 20, 30, dtype=torch.bool)
    masks[0, :10] = True
    masks[1, 12:, 20:] = True
    rles = mask_to_rle(masks)
    records = [{"segmentation": masks[0].numpy()}, {"segmentation": rles[1]}]
    a = np.asarray(overlay(_image(), records))
    b = np.asarray(overlay(_image(), [{"segmentation": rles[0]}, {"segmentation": coco_encode_rle(rles[1])}]))
    c = np.asarray(overlay(_image(), masks))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert np.asarray(overlay(_image(), [])).tolist() == _image().tolist()


def test_prompts_and_errors():
    picture = draw_prompts(Image.fromarray(_image()), points=[[5, 5], [20, 10]], labels=[1, 0], boxes=[[2, 2, 25, 15]])
    pixels = np.asarray(picture)
    assert tuple(pixels[5, 5]) == (46, 204, 64) and tuple(pixels[10, 20]) == (255, 65, 54)
    assert tuple(pixels[2, 12]) == (0, 116, 217)
    with pytest.raises(ValueError, match="labels must hold one label per point"):
        draw_prompts(Image.fromarray(_image()), points=[[1, 1]], labels=[1, 0])
    with pytest.raises(ValueError, match="image's size"):
        overlay(_image(), np.zeros((5, 5), dtype=bool))
    with pytest.raises(ValueError, match="alpha"):
        overlay(_image(), None, alpha=2)
