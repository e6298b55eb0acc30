"""`torch.compile` on sam_hf's models (modeling/compile_support.py). For CPU inference the model's forward,
`get_image_features` and the forwards of its vision encoder and mask decoder run eagerly on sam_hf's own paths (a graph
break: traced, they would get the much slower reference paths). Elsewhere the compiler traces them, and while it traces
sam_hf's fast paths step aside (`layers.records_nothing` and `layers.fused_linear_available` are False, `kernels.kernel`
returns None): their direct oneDNN calls are ops Inductor cannot lower on weights it has not frozen, and their compiled
kernels and per-thread buffers would break the graph. The traced reference paths give what eager calls give."""

import pytest
import torch
from torch.testing import assert_close

from references import randomize
from sam_hf import SamHfModel, config_for_variant, kernels
from sam_hf.modeling import compile_support, layers
from sam_hf.modeling.layers import SamHfLinear, SamHfMLPBlock, fused_linear_available, records_nothing

IMAGE = 128


@pytest.fixture(scope="module")
def model():
    return randomize(SamHfModel(config_for_variant("tiny")), seed=4).eval()


@pytest.fixture
def traced(monkeypatch):
    """The compiler traces the model's calls, as it does on a GPU or where autograd records."""
    monkeypatch.setattr(compile_support, "cpu_inference", lambda module: False)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _prompts():
    """Two prompts of two slots, one of them padding (the decoder's token mask), and a box per prompt."""
    points = torch.tensor([[[[40.0, 60.0], [90.0, 20.0]], [[10.0, 100.0], [0.0, 0.0]]]])  # (1, 2, 2, 2)
    labels = torch.tensor([[[1, 0], [1, -10]]])
    boxes = torch.tensor([[[20.0, 30.0, 100.0, 110.0], [5.0, 5.0, 60.0, 70.0]]])  # (1, 2, 4)
    return points, labels, boxes


def test_fast_paths_step_aside_while_compiling():
    def probe(x):
        flags = (records_nothing(x), fused_linear_available(x), kernels.kernel("decoder_attention") is not None)
        return x + sum(int(flag) for flag in flags)

    x = torch.zeros(3)
    with torch.no_grad():
        assert records_nothing(x)  # eager: the fast paths' gate is open
        compiled = torch.compile(probe, backend="eager", fullgraph=True)(x)
    assert torch.equal(compiled, x)  # traced: every flag False, and no graph break (fullgraph)


@pytest.mark.parametrize("rows", [100, 7])
def test_inductor_compiles_the_linear_layers(rows):
    """Eager, these sizes take oneDNN's fused linear where it runs (not the few-row F.linear); Inductor failed to
    lower that op on a parameter (an AssertionError in its lowering) before the layers stepped aside."""
    layer = SamHfLinear(256, 512).eval()
    block = SamHfMLPBlock(hidden_size=256, mlp_dim=1024, hidden_act="gelu").eval()
    x = torch.randn(1, rows, 256)
    with torch.no_grad():
        if layers._FUSED_LINEAR is not None and rows == 100:
            assert fused_linear_available(x) and not layers._few_fp32_rows(x, layer.weight)
        assert_close(torch.compile(layer)(x), layer(x), rtol=1e-5, atol=1e-5)
        assert_close(torch.compile(block.residual_forward)(x, x), block.residual_forward(x, x), rtol=1e-5, atol=1e-5)


def test_the_whole_model_traces_with_breaks_only_at_input_checks(model, traced):
    """No break at the kernels, the fast paths' buffers, the positional grid's cache or the decoder's padding check:
    the only breaks left are the loud checks of the inputs' values (NaN or inf raise a ValueError)."""
    points, labels, boxes = _prompts()
    pixels = torch.randn(1, 3, IMAGE, IMAGE)
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(pixel_values=pixels, input_points=points, input_labels=labels, input_boxes=boxes)
    frames = [[frame.filename for frame in reason.user_stack] for reason in explained.break_reasons]
    assert all(any(name.endswith("modeling/inputs.py") for name in stack) for stack in frames), explained.break_reasons
    assert explained.graph_count == explained.graph_break_count + 1


def test_traced_model_matches_eager(model, traced):
    """AOTAutograd's functionalisation (`aot_eager`) checks what Inductor would take, in seconds rather than a minute;
    Inductor itself on the layers above."""
    points, labels, boxes = _prompts()
    pixels = torch.randn(1, 3, IMAGE, IMAGE)
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        expected = model(pixel_values=pixels, input_points=points, input_labels=labels, input_boxes=boxes)
        got = compiled(pixel_values=pixels, input_points=points, input_labels=labels, input_boxes=boxes)
        embeddings = model.get_image_embeddings(pixels)
        again = compiled(image_embeddings=embeddings, input_points=points[:, :1], input_labels=labels[:, :1], multimask_output=False)
        eager_again = model(image_embeddings=embeddings, input_points=points[:, :1], input_labels=labels[:, :1], multimask_output=False)
    assert_close(got.pred_masks, expected.pred_masks, rtol=1e-4, atol=1e-4)
    assert_close(got.iou_scores, expected.iou_scores, rtol=1e-4, atol=1e-4)
    assert_close(again.pred_masks, eager_again.pred_masks, rtol=1e-4, atol=1e-4)
    assert_close(again.iou_scores, eager_again.iou_scores, rtol=1e-4, atol=1e-4)
    # the model itself is untouched: eager calls after compiling still take the fast paths and give the same
    with torch.no_grad():
        assert_close(model(pixel_values=pixels, input_points=points, input_labels=labels, input_boxes=boxes).pred_masks,
                     expected.pred_masks, rtol=0, atol=0)


def test_cpu_inference_under_compile_runs_sams_own_paths(model):
    """Under torch.compile (Inductor) a CPU inference call gives exactly what the eager call gives: the same paths ran
    (the traced reference paths differ in the last bits, as the test above allows)."""
    points, labels, boxes = _prompts()
    pixels = torch.randn(1, 3, IMAGE, IMAGE)
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        assert compile_support.cpu_inference(model)
        expected = model(pixel_values=pixels, input_points=points, input_labels=labels, input_boxes=boxes)
        got = compiled(pixel_values=pixels, input_points=points, input_labels=labels, input_boxes=boxes)
        embeddings = torch.compile(model.get_image_embeddings)(pixels)
        expected_embeddings = model.get_image_embeddings(pixels)
    assert_close(got.pred_masks, expected.pred_masks, rtol=0, atol=0)
    assert_close(got.iou_scores, expected.iou_scores, rtol=0, atol=0)
    assert_close(embeddings, expected_embeddings, rtol=0, atol=0)
    torch._dynamo.reset()


def test_compiled_training_step_matches_eager():
    """Where autograd records, the compiler traces the model (no CPU-inference break): the loss's gradients match eager's.
    Only the mask decoder trains, as in the usual fine-tuning: the model's first weights train nothing, and it still traces."""
    trained = randomize(SamHfModel(config_for_variant("tiny")), seed=5).train()
    trained.requires_grad_(False)
    trained.mask_decoder.requires_grad_(True)
    pixels, points = torch.randn(1, 3, IMAGE, IMAGE), torch.tensor([[[[40.0, 60.0]]]])
    assert not compile_support.cpu_inference(trained)

    def step(forward):
        trained.zero_grad()
        masks = forward(pixel_values=pixels, input_points=points).pred_masks
        masks.square().mean().backward()
        return masks.detach(), {name: p.grad.clone() for name, p in trained.named_parameters() if p.grad is not None}

    torch._dynamo.reset()
    expected, expected_grads = step(trained)
    got, grads = step(torch.compile(trained, backend="aot_eager"))
    torch._dynamo.reset()
    assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for name, grad in expected_grads.items():
        assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
