"""SamHfVisionModel: the image encoder alone, loaded from whole SAM folders (sam_hf's or transformers'), as
transformers' SamVisionModel."""

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModel, SamVisionModel

from references import randomize, transformers_from_ours
from sam_hf import SamHfConfig, SamHfModel, SamHfVisionConfig, SamHfVisionModel, config_for_variant


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    model = randomize(SamHfModel(config_for_variant("tiny")), seed=4).eval()
    folder = tmp_path_factory.mktemp("whole")
    model.save_pretrained(folder)
    return model, folder


PIXELS = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_loads_the_encoder_of_a_whole_sam_folder(whole):
    model, folder = whole
    vision, info = SamHfVisionModel.from_pretrained(folder, output_loading_info=True)
    assert isinstance(vision.config, SamHfVisionConfig) and not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(vision(PIXELS).last_hidden_state, model.get_image_embeddings(PIXELS))
    out = vision(PIXELS, output_hidden_states=True, output_attentions=True)  # the weights' path: the same as the model's
    reference = model.get_image_features(PIXELS, output_hidden_states=True, output_attentions=True)
    assert torch.equal(out.last_hidden_state, reference.image_embeddings)
    assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, reference.hidden_states))
    assert len(out.attentions) == model.config.vision_config.num_hidden_layers
    assert torch.equal(vision(PIXELS, return_dict=False)[0], vision(PIXELS).last_hidden_state)


@torch.no_grad()
def test_matches_transformers_sam_vision_model_on_a_transformers_folder(whole, tmp_path):
    model, _ = whole
    transformers_from_ours(model).save_pretrained(tmp_path)
    theirs = SamVisionModel.from_pretrained(tmp_path).eval()(PIXELS, output_hidden_states=True)
    ours = SamHfVisionModel.from_pretrained(tmp_path)(PIXELS, output_hidden_states=True)
    assert_close(ours.last_hidden_state, theirs.last_hidden_state, rtol=1e-4, atol=1e-4)
    assert [h.shape for h in ours.hidden_states] == [h.shape for h in theirs.hidden_states]


@torch.no_grad()
def test_saves_and_loads_through_auto_model(whole, tmp_path):
    _, folder = whole
    vision = SamHfVisionModel.from_pretrained(folder)
    vision.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is SamHfVisionModel
    assert torch.equal(loaded(PIXELS).last_hidden_state, vision(PIXELS).last_hidden_state)


def test_bad_inputs(whole):
    with pytest.raises(TypeError, match="config must be a SamHfVisionConfig, got SamHfConfig"):
        SamHfVisionModel(SamHfConfig())
    vision = SamHfVisionModel(config_for_variant("tiny").vision_config)
    with pytest.raises(ValueError, match="pixel_values must be given"):
        vision()
    with pytest.raises(ValueError, match=r"pixel_values must have shape"):
        vision(torch.randn(1, 3, 64, 128))
    with pytest.raises(TypeError, match=r"unexpected arguments \['input_points'\]"):
        vision(PIXELS, input_points=torch.rand(2, 1, 1, 2))
