"""Growth: deepen_vision_encoder's appended ViT layers leave the outputs unchanged, then learn;
resize_image_size moves a model to a larger input with Meta's rel-pos interpolation."""
import pytest
import torch

from sam_hf import SamHfModel, config_for_variant
from sam_hf.training import deepen_vision_encoder, resize_image_size


def _model():
    torch.manual_seed(0)
    model = SamHfModel(config_for_variant("tiny")).eval()
    with torch.no_grad():  # non-trivial weights everywhere, so that "unchanged" means something
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def test_grown_model_computes_the_same_and_keeps_the_original():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = model.config.vision_config.num_hidden_layers
    grown = deepen_vision_encoder(model, num_layers=2).eval()
    vision = grown.config.vision_config
    assert vision.num_hidden_layers == layers + 2 and len(grown.vision_encoder.layers) == layers + 2
    assert list(vision.global_attn_indexes)[-2:] == [layers, layers + 1]
    before_config, after_config = model.config.to_dict(), grown.config.to_dict()
    changed = {key for key in before_config["vision_config"] if before_config["vision_config"][key] != after_config["vision_config"][key]}
    assert changed == {"num_hidden_layers", "global_attn_indexes"}
    assert {k: v for k, v in before_config.items() if k != "vision_config"} == {k: v for k, v in after_config.items() if k != "vision_config"}
    size = vision.image_size
    pixels = torch.randn(2, 3, size, size)
    points = torch.rand(2, 3, 1, 2) * size
    labels = torch.ones(2, 3, 1, dtype=torch.long)
    with torch.no_grad():
        a = model(pixel_values=pixels, input_points=points, input_labels=labels)
        b = grown(pixel_values=pixels, input_points=points, input_labels=labels)
    torch.testing.assert_close(b.pred_masks, a.pred_masks, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.iou_scores, a.iou_scores, rtol=0, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    new = grown.vision_encoder.layers[layers]
    assert new.attn.qkv.weight.abs().sum() > 0 and new.attn.proj.weight.abs().sum() == 0


def test_new_layers_learn_after_a_step():
    grown = deepen_vision_encoder(_model(), num_layers=1).train()
    new = grown.vision_encoder.layers[-1]
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.1)
    size = grown.config.vision_config.image_size
    for _ in range(2):  # step 1 moves the zero projections, step 2 the inner weights behind them
        optimizer.zero_grad()
        out = grown(pixel_values=torch.randn(1, 3, size, size), input_points=torch.rand(1, 1, 1, 2) * size,
                    input_labels=torch.ones(1, 1, 1, dtype=torch.long))
        out.pred_masks.square().mean().backward()
        optimizer.step()
    assert new.attn.proj.weight.abs().sum() > 0 and new.mlp.lin2.weight.abs().sum() > 0
    assert new.mlp.lin1.weight.grad.abs().sum() > 0


def test_windowed_layers_and_bad_counts():
    model = _model()
    grown = deepen_vision_encoder(model, num_layers=1, global_attention=False)
    assert list(grown.config.vision_config.global_attn_indexes) == list(model.config.vision_config.global_attn_indexes)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_layers"):
            deepen_vision_encoder(model, num_layers=bad)


def test_resized_model_has_the_new_grid_and_meta_rel_pos_interpolation():
    from segment_anything.modeling.image_encoder import get_rel_pos

    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vision = model.config.vision_config  # tiny: 128 input, patch 16 (grid 8), window 4, layer 1 global
    resized = resize_image_size(model, image_size=192).eval()
    assert resized.config.vision_config.image_size == resized.config.prompt_encoder_config.image_size == 192
    old_config, new_config = model.config.to_dict(), resized.config.to_dict()
    for part in ("vision_config", "prompt_encoder_config"):
        assert {k for k in old_config[part] if old_config[part][k] != new_config[part][k]} == {"image_size"}
    assert old_config["mask_decoder_config"] == new_config["mask_decoder_config"]
    assert resized.vision_encoder.pos_embed.shape == (1, 12, 12, vision.hidden_size)
    changed = {k for k, v in resized.state_dict().items() if v.shape != before[k].shape or not torch.equal(v, before[k])}
    assert changed == {"vision_encoder.pos_embed", "vision_encoder.layers.1.attn.rel_pos_h", "vision_encoder.layers.1.attn.rel_pos_w"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    # the global layer's tables are what Meta's get_rel_pos makes of the old ones for a 12 x 12 grid
    for name in ("rel_pos_h", "rel_pos_w"):
        old, new = getattr(model.vision_encoder.layers[1].attn, name), getattr(resized.vision_encoder.layers[1].attn, name)
        assert new.shape == (23, old.shape[1])
        torch.testing.assert_close(new[torch.arange(12)[:, None] - torch.arange(12)[None, :] + 11], get_rel_pos(12, 12, old))
        torch.testing.assert_close(new[11], old[7])  # distance 0 stays distance 0
    # the position embedding: a field that varies down the rows only (a channel apart) keeps that layout
    rows = torch.linspace(-1, 1, 8)[None, :, None, None]
    channels = torch.arange(vision.hidden_size, dtype=torch.float32)
    with torch.no_grad():
        model.vision_encoder.pos_embed.copy_(rows.expand(1, 8, 8, vision.hidden_size) + channels)
    field = resize_image_size(model, image_size=192).vision_encoder.pos_embed[0]  # (12, 12, C)
    torch.testing.assert_close(field - field[:, :1], torch.zeros_like(field), atol=1e-4, rtol=0)  # constant along columns
    torch.testing.assert_close(field - field[:, :, :1], (channels - channels[0]).expand_as(field), atol=1e-4, rtol=0)
    assert (field[1:, 0, 0] > field[:-1, 0, 0]).all() and field[0, 0, 0] < -0.9 and field[-1, 0, 0] > 0.9
    # it runs at the new size: low-resolution masks on a 4 x 12 grid
    pixels, points = torch.randn(1, 3, 192, 192), torch.tensor([[[[100.0, 60.0]]]])
    with torch.no_grad():
        out = resized(pixel_values=pixels, input_points=points, input_labels=torch.ones(1, 1, 1, dtype=torch.long))
    assert out.pred_masks.shape[-2:] == (48, 48) and torch.isfinite(out.pred_masks).all()


def test_resize_to_the_same_size_changes_nothing_and_bad_sizes_raise():
    model = _model()
    same = resize_image_size(model, image_size=128)
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in model.state_dict().items())
    for bad in (100, 0, -16, 192.0, True, "192"):
        with pytest.raises(ValueError, match="image_size"):
            resize_image_size(model, image_size=bad)
