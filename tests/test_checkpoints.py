"""Meta checkpoints: strict conversion both ways, safe loading, the conversion script."""

import os
import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close

from references import meta_from_ours, randomize
from sam_hf import SamHfModel, config_for_variant, convert_meta_state_dict, convert_to_meta_state_dict, infer_meta_config
from sam_hf.checkpoints import KEY_TABLE

class NotAStateDict:
    """An arbitrary object: a weights-only load must refuse to unpickle it."""


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def meta_state_dict():
    model = randomize(SamHfModel(config_for_variant("tiny")), seed=3)
    return meta_from_ours(model).state_dict(), model


def test_round_trip_is_exact_and_complete(meta_state_dict):
    meta_sd, model = meta_state_dict
    ours = convert_meta_state_dict(meta_sd)
    assert set(ours) == set(model.state_dict())
    back = convert_to_meta_state_dict(ours)
    assert set(back) == set(meta_sd)
    for key, value in meta_sd.items():
        assert torch.equal(back[key], value), key


def test_every_table_rule_is_used_by_a_real_model(meta_state_dict):
    meta_sd, _ = meta_state_dict
    from sam_hf.checkpoints import _META_TO_OURS

    used = {i for key in meta_sd for i, (pattern, _) in enumerate(_META_TO_OURS) if pattern.match(key)}
    assert used == set(range(len(KEY_TABLE)))


def test_deeper_iou_head_maps_middle_layers():
    config = config_for_variant("tiny")
    config.mask_decoder_config.iou_head_depth = 4
    model = SamHfModel(config)
    meta = meta_from_ours(model)
    assert "mask_decoder.iou_prediction_head.layers.3.weight" in meta.state_dict()
    assert set(convert_meta_state_dict(meta.state_dict())) == set(model.state_dict())


def test_infer_config_from_shapes(meta_state_dict):
    meta_sd, model = meta_state_dict
    inferred = infer_meta_config(meta_sd).to_dict()
    expected = model.config.to_dict()
    # The decoder's head count leaves no trace in the shapes: Meta's 8 is assumed (the tiny preset has 2).
    assert inferred["mask_decoder_config"].pop("num_attention_heads") == 8
    expected["mask_decoder_config"].pop("num_attention_heads")
    assert inferred == expected


@pytest.mark.parametrize("missing", ["image_encoder.blocks.0.attn.rel_pos_h", "image_encoder.pos_embed"])
def test_infer_config_names_a_missing_key(meta_state_dict, missing):
    meta_sd, _ = meta_state_dict
    incomplete = {key: value for key, value in meta_sd.items() if key != missing}
    with pytest.raises(ValueError, match=f"'{missing}' is missing"):
        infer_meta_config(incomplete)


def test_from_meta_checkpoint_file(meta_state_dict, tmp_path):
    meta_sd, model = meta_state_dict
    path = tmp_path / "sam_tiny.pth"
    torch.save(meta_sd, path)
    loaded = SamHfModel.from_meta_checkpoint(path, config=model.config)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    with pytest.raises(ValueError, match="exactly one of variant"):
        SamHfModel.from_meta_checkpoint(path)


def test_missing_and_extra_keys_are_listed(meta_state_dict):
    meta_sd, model = meta_state_dict
    incomplete = dict(meta_sd)
    del incomplete["mask_decoder.iou_token.weight"]
    with pytest.raises(ValueError, match=r"missing.*mask_decoder\.iou_token\.weight"):
        SamHfModel.from_meta_state_dict(incomplete, model.config)
    foreign = dict(meta_sd, **{"image_encoder.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"image_encoder\.extra\.weight"):
        SamHfModel.from_meta_state_dict(foreign, model.config)


def test_shape_mismatch_is_reported(meta_state_dict):
    meta_sd, _ = meta_state_dict
    with pytest.raises(ValueError, match="shape mismatches"):
        SamHfModel.from_meta_state_dict(meta_sd, config_for_variant("tiny", image_size=256))


def test_truncated_and_foreign_files_are_refused(meta_state_dict, tmp_path):
    meta_sd, model = meta_state_dict
    good = tmp_path / "good.pth"
    torch.save(meta_sd, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="could not be read"):
        SamHfModel.from_meta_checkpoint(truncated, config=model.config)

    pickled = tmp_path / "object.pth"
    torch.save({"model": NotAStateDict()}, pickled)
    with pytest.raises(ValueError, match="could not be read"):  # weights_only refuses arbitrary objects
        SamHfModel.from_meta_checkpoint(pickled, config=model.config)
    nested = tmp_path / "nested.pth"
    torch.save({"model": meta_sd}, nested)
    with pytest.raises(ValueError, match="plain state dict"):
        SamHfModel.from_meta_checkpoint(nested, config=model.config)
    with pytest.raises(ValueError, match="existing file"):
        SamHfModel.from_meta_checkpoint(tmp_path / "absent.pth", config=model.config)


def test_conversion_script_end_to_end(meta_state_dict, tmp_path):
    meta_sd, model = meta_state_dict
    source = tmp_path / "sam_vit_tiny.pth"
    torch.save(meta_sd, source)
    target = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "conversion", "convert_meta_checkpoint.py"), str(source), "--output", str(target)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "numerical check passed" in result.stdout or "numerical check skipped" in result.stdout
    # read off the shapes (no preset matches): the assumptions the check cannot test are said
    assert "head count (8) and GELU" in result.stdout
    assert {"config.json", "model.safetensors"} <= set(os.listdir(target))
    loaded = SamHfModel.from_pretrained(target)
    pixels = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert_close(loaded.get_image_embeddings(pixels), model.eval().get_image_embeddings(pixels))


def test_conversion_writes_a_card_only_for_meta_presets():
    sys.path.insert(0, os.path.join(ROOT, "conversion"))
    try:
        from convert_meta_checkpoint import _preset_of
    finally:
        sys.path.remove(os.path.join(ROOT, "conversion"))
    assert _preset_of(config_for_variant("vit_l")) == "vit_l"
    assert _preset_of(config_for_variant("vit_b", image_size=512)) is None
    assert _preset_of(config_for_variant("tiny")) is None
