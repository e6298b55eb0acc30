"""The shipped model (models/sam-hf-shapes-352) keeps the numbers written in its model card.

The images here are fresh: synthetic seed 20000, while training used seeds 0 to 4 and the card's evaluation
(examples/evaluate_shipped_model.py) seed 10000. Fewer images than the card's, so the bounds allow for
sampling noise: prompted mIoU at least the card's minus 0.03, automatic-mask-generation recall at IoU 0.5
at least the card's minus 0.1 (few objects per test). This proves that the committed weights, config and
processor load and segment as the card says, through the model, SamHfAutomaticMaskGenerator and
transformers' stock `pipeline("mask-generation")`; it does not re-measure the card on its own images.
"""
import os
import re

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "sam-hf-shapes-352")
SEED = 20_000
IMAGE_SIZE = (128, 192)  # as in training and in the card's evaluation


def _amg_settings() -> dict:
    """The generator settings of the card's AMG numbers (flags of its evaluation command; none: defaults)."""
    card = open(os.path.join(MODEL, "README.md")).read()
    command = re.search(r"python examples/evaluate_shipped_model.py [^`]*", card).group(0)
    return {k: float(v) for k, v in re.findall(r"--(pred_iou_thresh|stability_score_thresh) ([0-9.]+)", command)}


def _card_number(name: str) -> float:
    card = open(os.path.join(MODEL, "README.md")).read()
    match = re.search(rf"\| {re.escape(name)} \| ([0-9.]+) \|", card)
    assert match, f"{name} missing from the card"
    return float(match.group(1))


@pytest.fixture(scope="module")
def shipped():
    from sam_hf import SamHfModel, SamHfProcessor

    assert os.path.exists(os.path.join(MODEL, "model.safetensors")), "the shipped model is committed under models/"
    return SamHfModel.from_pretrained(MODEL).eval(), SamHfProcessor.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def images():
    from sam_hf.training import synthetic_images

    return synthetic_images(num_images=32, seed=SEED, image_size=IMAGE_SIZE)


def test_the_shipped_model_is_small():
    size = os.path.getsize(os.path.join(MODEL, "model.safetensors"))
    assert size < 20 * 2**20
    card = open(os.path.join(MODEL, "README.md")).read()
    for field in ("license:", "library_name: transformers", "pipeline_tag: mask-generation", "datasets:", "python examples/finetune.py"):
        assert field in card


def test_point_and_box_miou_match_the_card(shipped, images):
    from sam_hf.training import evaluate_prompted

    model, processor = shipped
    torch.manual_seed(0)
    result = evaluate_prompted(model, processor, images)
    assert result["instances"] > 100
    assert result["point_miou"] >= _card_number("point_miou") - 0.03, result
    assert result["box_miou"] >= _card_number("box_miou") - 0.03, result


def test_generator_finds_the_objects(shipped, images):
    from sam_hf.training import evaluate_amg_recall

    model, processor = shipped
    result = evaluate_amg_recall(model, processor, images.select(range(6)), **_amg_settings())
    assert result["objects"] >= 15
    assert result["amg_recall"] >= _card_number("amg_recall") - 0.1, result


def test_stock_pipeline_finds_the_objects(images):
    from transformers import pipeline

    import sam_hf  # noqa: F401  registers model_type "sam_hf" with transformers' Auto classes
    from sam_hf.training import decode_instance_masks

    generator = pipeline("mask-generation", model=MODEL, device="cpu")
    found = total = 0
    for example in images.select(range(6, 8)):
        image = example["image"].convert("RGB")
        truth = torch.from_numpy(decode_instance_masks(example["masks"], height=image.height, width=image.width))
        masks = generator(image, points_per_batch=256, **_amg_settings())["masks"]
        assert len(masks) > 0
        pred = torch.from_numpy(np.stack([np.asarray(m, dtype=bool) for m in masks]))
        inter = (truth[:, None] & pred[None]).flatten(2).sum(-1).float()
        union = (truth[:, None] | pred[None]).flatten(2).sum(-1).float()
        found += int(((inter / union).max(1).values >= 0.5).sum())
        total += len(truth)
    assert found / total >= _card_number("amg_recall") - 0.2, (found, total)
