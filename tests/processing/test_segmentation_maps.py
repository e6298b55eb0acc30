"""`segmentation_maps` -> `labels`, against transformers' SamProcessor (its PIL backend: torchvision is not installed)."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from sam_hf import config_for_variant
from sam_hf.processing import SamHfImageProcessor, SamHfProcessor


@pytest.fixture(scope="module")
def transformers_processor():
    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    return SamProcessor(image_processor=SamImageProcessorPil())


def test_labels_match_transformers_for_many_sizes(transformers_processor):
    """Sizes from 1 to 1500 pixels a side (several where PIL's rounding picks the lower neighbour at a tie)."""
    ours, rng = SamHfProcessor(), random.Random(0)
    sizes = [(28, 10), (231, 40), (138, 12), (1434, 684)]
    sizes += [(rng.choice([rng.randint(1, 40), rng.randint(40, 1500)]), rng.choice([rng.randint(1, 40), rng.randint(40, 1500)]))
              for _ in range(60)]
    for k, (h, w) in enumerate(sizes):
        if max(h, w) > 100 * min(h, w):  # a side of zero pixels once resized: refused by both
            continue
        image = np.zeros((h, w, 3), np.uint8)
        labels = np.random.default_rng(k).integers(0, 255, (h, w)).astype(np.uint8)
        theirs = transformers_processor(images=image, segmentation_maps=labels, return_tensors="pt")["labels"]
        mine = ours(images=image, segmentation_maps=labels)["labels"]
        assert mine.dtype == theirs.dtype == torch.int64 and mine.shape == theirs.shape == (1, 256, 256), (h, w)
        assert torch.equal(mine, theirs), (h, w)


def test_batches_kinds_and_the_image_processor(transformers_processor):
    images = [np.zeros((100, 200, 3), np.uint8), np.zeros((300, 150, 3), np.uint8)]
    masks = [np.random.default_rng(5).random((100, 200)) > 0.5, np.random.default_rng(6).random((300, 150)) > 0.5]
    theirs = transformers_processor(images=images, segmentation_maps=[m.astype(np.uint8) for m in masks], return_tensors="pt")["labels"]
    processor = SamHfProcessor()
    for maps in (masks, [torch.from_numpy(m) for m in masks], [Image.fromarray(m.astype(np.uint8) * 7) for m in masks]):
        labels = processor(images=images, segmentation_maps=maps)["labels"]
        scale = 7 if isinstance(maps[0], Image.Image) else 1  # label values pass through
        assert torch.equal(labels, theirs * scale)
    stacked = np.stack([np.zeros((50, 60), np.int32), np.full((50, 60), 300, np.int32)])  # (B, H, W): one map per image
    labels = processor(images=[np.zeros((50, 60, 3), np.uint8)] * 2, segmentation_maps=stacked, return_tensors="np")["labels"]
    assert labels.shape == (2, 256, 256) and labels.dtype == np.int64 and labels[1, 0, 0] == 300 and labels[1, 255, 0] == 0
    assert torch.equal(SamHfImageProcessor()(images, masks)["labels"], theirs)  # positional, as transformers' image processor
    assert "labels" not in processor(images=images)


def test_labels_land_in_the_models_low_res_frame():
    """A model with 8-pixel patches (mask side 176 at 352 pixels, as the shipped model's): labels of its mask side."""
    config = config_for_variant("tiny", image_size=352)
    config.vision_config.patch_size = config.prompt_encoder_config.patch_size = 8
    assert config.prompt_encoder_config.mask_input_size == 176
    mask = np.zeros((352, 352), np.uint8)
    mask[:176, :] = 3
    labels = SamHfImageProcessor.for_model(config)(np.zeros((352, 352, 3), np.uint8), mask)["labels"]
    assert labels.shape == (1, 176, 176) and (labels[0, :88] == 3).all() and (labels[0, 88:] == 0).all()


@pytest.mark.parametrize(
    "maps,error,words",
    [
        (np.zeros((10, 10), np.float32), TypeError, r"segmentation_maps must hold bool or integer labels, got dtype float32"),
        (np.zeros((10, 10, 3), np.uint8), ValueError, r"1 images, got 10 maps \(an array of shape \(10, 10, 3\), read as \(B, H, W\)\)"),
        ([[0, 1], [1, 0]], ValueError, r"1 images, got 2 maps \(a list of 2\)"),
        (np.full((4, 4), 2**63 + 5, np.uint64), ValueError, "labels must fit in int64"),
        ([np.zeros((10, 10, 3), np.uint8)], ValueError, r"segmentation_maps\[0\] must have shape \(H, W\)"),
        ([np.zeros((10, 10), np.uint8)] * 2, ValueError, "1 images, got 2 maps"),
        ("mask.png", TypeError, "segmentation_maps must be a numpy array, torch tensor or PIL image"),
        (np.zeros((1, 900), np.uint8)[:, :0], ValueError, "segmentation_maps is empty"),
        (np.zeros((1, 900), np.uint8), ValueError, "a side of zero pixels"),
    ],
)
def test_bad_segmentation_maps(maps, error, words):
    with pytest.raises(error, match=words):
        SamHfProcessor()(images=np.zeros((10, 10, 3), np.uint8), segmentation_maps=maps)
