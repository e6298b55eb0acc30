"""save_pretrained / from_pretrained, Auto classes, and folders written by transformers' SamModel."""

import os

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForMaskGeneration, AutoProcessor, SamModel

import sam_hf
from references import randomize, transformers_from_ours
from sam_hf import SamHfConfig, SamHfImageProcessor, SamHfModel, SamHfProcessor, config_for_variant


@pytest.fixture(scope="module")
def model():
    return randomize(SamHfModel(config_for_variant("tiny")), seed=5).eval()


def _outputs(model, **kwargs):
    torch.manual_seed(11)
    pixels = torch.randn(1, 3, 128, 128)
    points = torch.rand(1, 2, 2, 2) * 128
    with torch.no_grad():
        return model(pixel_values=pixels, input_points=points, **kwargs)


def test_saved_folder_is_complete_and_loads_with_auto_classes(model, tmp_path):
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors"} <= files
    assert files & {"processor_config.json", "preprocessor_config.json"}
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SamHfConfig)
    for auto in (AutoModel, AutoModelForMaskGeneration):
        loaded = auto.from_pretrained(tmp_path)
        assert isinstance(loaded, SamHfModel)
        assert_close(_outputs(loaded).pred_masks, _outputs(model).pred_masks)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, SamHfProcessor)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), SamHfImageProcessor)
    assert processor.image_processor.longest_edge == 128


def test_explicit_processor_is_saved(model, tmp_path):
    processor = SamHfProcessor(image_processor=SamHfImageProcessor(longest_edge=128))
    model.save_pretrained(tmp_path, processor=processor)
    assert AutoProcessor.from_pretrained(tmp_path).image_processor.longest_edge == 128


def test_transformers_saved_folder_loads_as_is(model, tmp_path):
    """A folder written by transformers.SamModel (model_type "sam", like facebook/sam-vit-base)."""
    reference = transformers_from_ours(model)
    reference.save_pretrained(tmp_path)
    ours = SamHfModel.from_pretrained(tmp_path)
    assert ours.config.model_type == "sam_hf"
    expected = _outputs(reference)
    got = _outputs(ours)
    assert_close(got.pred_masks, expected.pred_masks, rtol=1e-4, atol=1e-4)
    assert_close(got.iou_scores, expected.iou_scores, rtol=1e-4, atol=1e-4)
    # AutoModel keeps transformers' own mapping for "sam" (sam_hf does not take it over); same outputs.
    auto = AutoModel.from_pretrained(tmp_path)
    assert isinstance(auto, SamModel)
    assert_close(_outputs(auto).pred_masks, got.pred_masks, rtol=1e-4, atol=1e-4)


def test_dtype_round_trip(model, tmp_path):
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    model.to(torch.float32)
    loaded = SamHfModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.vision_encoder.patch_embed.projection.weight.dtype == torch.bfloat16
    out = _outputs(loaded)
    assert out.pred_masks.dtype == torch.bfloat16 and torch.isfinite(out.pred_masks.float()).all()


@pytest.mark.parametrize("auto", [{}, {"dtype": "auto"}, {"torch_dtype": "auto"}])
def test_mixed_precision_round_trip_with_auto_dtype(tmp_path, auto):
    mixed = randomize(SamHfModel(config_for_variant("tiny")), seed=6).eval().mixed_precision()
    mixed.save_pretrained(tmp_path)
    assert SamHfConfig.from_pretrained(tmp_path).encoder_dtype == "bfloat16"
    for loaded in (SamHfModel.from_pretrained(tmp_path, **auto), AutoModelForMaskGeneration.from_pretrained(tmp_path, **auto)):
        assert isinstance(loaded, SamHfModel)
        assert {p.dtype for p in loaded.vision_encoder.parameters()} == {torch.bfloat16}
        assert {p.dtype for name, p in loaded.named_parameters() if not name.startswith("vision_encoder.")} == {torch.float32}
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), mixed.state_dict().values()))
        assert torch.equal(_outputs(loaded).pred_masks, _outputs(mixed).pred_masks)
    loaded, info = SamHfModel.from_pretrained(tmp_path, output_loading_info=True, **auto)
    assert loaded.vision_encoder.patch_embed.projection.weight.dtype == torch.bfloat16 and not info["missing_keys"]
    # a dtype asked for: every weight in it
    assert {p.dtype for p in SamHfModel.from_pretrained(tmp_path, dtype=torch.float32).parameters()} == {torch.float32}
    assert {p.dtype for p in SamHfModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16).parameters()} == {torch.bfloat16}
    # the encoder alone loads in the dtype it was saved in
    from sam_hf import SamHfVisionModel

    assert {p.dtype for p in SamHfVisionModel.from_pretrained(tmp_path, **auto).parameters()} == {torch.bfloat16}


def test_encoder_dtype_is_written_from_the_weights(model, tmp_path):
    mixed = randomize(SamHfModel(config_for_variant("tiny")), seed=6).eval().mixed_precision(torch.float16)
    mixed.save_pretrained(tmp_path / "float")
    mixed.float().save_pretrained(tmp_path / "float")  # back to one dtype: no split recorded, the encoder's dtype rewritten
    assert SamHfConfig.from_pretrained(tmp_path / "float").encoder_dtype is None
    from sam_hf import SamHfVisionModel

    assert {p.dtype for p in SamHfVisionModel.from_pretrained(tmp_path / "float").parameters()} == {torch.float32}
    mixed.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")  # one dtype throughout: config.dtype says it
    assert SamHfConfig.from_pretrained(tmp_path / "bf16").encoder_dtype is None
    mixed.float().mixed_precision(torch.float16).save_pretrained(tmp_path / "fp16")
    loaded = SamHfModel.from_pretrained(tmp_path / "fp16", dtype="auto")
    assert loaded.vision_encoder.neck.conv1.weight.dtype == torch.float16 and loaded.mask_decoder.iou_token.weight.dtype == torch.float32
    for bad in ("int8", "bfloat17", 16):
        with pytest.raises(ValueError, match="encoder_dtype"):
            SamHfConfig(encoder_dtype=bad)


@pytest.mark.parametrize("stored", ["prompt encoder's name only", "both names"])
def test_positional_matrix_under_the_prompt_encoders_tied_name_loads(model, tmp_path, stored):
    """transformers' SamModel ties prompt_encoder.shared_embedding.positional_embedding to the model's matrix; a
    checkpoint holding it only under that name loaded a random matrix before (reported as missing)."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    matrix = weights["shared_image_embedding.positional_embedding"]
    weights["prompt_encoder.shared_embedding.positional_embedding"] = matrix.clone()
    if stored != "both names":
        del weights["shared_image_embedding.positional_embedding"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded, info = SamHfModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(loaded.shared_image_embedding.positional_embedding, matrix)
    assert torch.equal(_outputs(loaded).pred_masks, _outputs(model).pred_masks)


def test_import_registers_only(model):
    assert "sam_hf" in AutoConfig.for_model("sam_hf").model_type
    assert sam_hf.__all__ and all(hasattr(sam_hf, name) for name in sam_hf.__all__)
