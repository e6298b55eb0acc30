"""deepen_vision_encoder: appended ViT layers leave the model's outputs unchanged, then learn."""
import pytest
import torch

from sam_hf import SamHfModel, config_for_variant
from sam_hf.training import deepen_vision_encoder


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
