"""Model cards: the YAML header the Hub reads, and the body's sections."""
import pytest

from sam_hf import config_for_variant
from sam_hf.hub import conversion_model_card, training_model_card


def test_training_card():
    card = training_model_card(model_name="sam-hf-shapes", config=config_for_variant("tiny"), command="python examples/finetune.py --synthetic 8",
                               metrics={"eval_box_miou": 0.91234, "eval_instances": 12}, training_steps=100)
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "mask-generation" and "sam_hf" in data["tags"] and "base_model" not in data
    for text in ("trained from scratch", "python examples/finetune.py --synthetic 8", "| eval_box_miou | 0.9123 |",
                 "from_pretrained(\"sam-hf-shapes\")", "@article{kirillov2023segany", "100 optimizer steps"):
        assert text in card.content
    tuned = training_model_card(model_name="x", config=config_for_variant("tiny"), command="c", base_model="org/sam-hf-vit-b",
                                dataset_ids=["org/data"])
    assert tuned.data.to_dict()["base_model"] == "org/sam-hf-vit-b" and tuned.data.to_dict()["datasets"] == ["org/data"]


def test_conversion_card():
    card = conversion_model_card(variant="vit_h", config=config_for_variant("vit_h"), command="python conversion/x.py",
                                 metrics={"max |mask logit difference| vs Meta": 1e-5})
    data = card.data.to_dict()
    assert data["base_model"] == "facebook/sam-vit-huge" and data["pipeline_tag"] == "mask-generation"
    assert "sam_vit_h_4b8939.pth" in card.content and "32 layers, width 1280" in card.content
    with pytest.raises(ValueError, match="variant"):
        conversion_model_card(variant="vit_x", config=config_for_variant("tiny"), command="c")
    with pytest.raises(ValueError, match="command"):
        training_model_card(model_name="x", config=config_for_variant("tiny"), command="")
