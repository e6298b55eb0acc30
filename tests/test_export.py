"""sam_hf.export: torch.export programs and ONNX files of the encoder and the prompt decoder, with dynamic sizes,
against the eager model (which takes sam_hf's fast paths: kernels, caches, routes)."""

import numpy as np
import pytest
import torch

from references import randomize
from sam_hf import SamHfModel, config_for_variant
from sam_hf.export import export_onnx, export_program


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize(SamHfModel(config_for_variant("tiny")), seed=1).eval()


@pytest.fixture(scope="module")
def embeddings(model):
    size = model.config.vision_config.image_size
    with torch.no_grad():
        return model.get_image_embeddings(torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2)))


def prompts(model, images: int, count: int, points: int | None, boxes: bool = False, masks: bool = False, seed: int = 0) -> dict:
    """Random prompts for `images` images, `count` prompts each, in the model-input frame."""
    generator = torch.Generator().manual_seed(seed)
    size, grid = model.config.vision_config.image_size, model.config.prompt_encoder_config.image_embedding_size
    out = {}
    if points is not None:
        out["input_points"] = torch.rand(images, count, points, 2, generator=generator) * size
        out["input_labels"] = torch.randint(-1, 2, (images, count, points), generator=generator)
    if boxes:
        corners = torch.sort(torch.rand(images, count, 2, 2, generator=generator) * size, dim=2).values  # (x0, y0) <= (x1, y1)
        out["input_boxes"] = corners.reshape(images, count, 4)
    if masks:
        out["input_masks"] = torch.randn(images, count, 4 * grid, 4 * grid, generator=generator)
    return out


@pytest.fixture(scope="module")
def decoder_program(model):
    return export_program(model)


def test_decoder_program_matches_the_model_for_other_sizes(model, embeddings, decoder_program):
    # exported with 2 images x 3 prompts x 2 points; run with other numbers of each
    for images, count, points in [(1, 1, 1), (3, 5, 4), (2, 64, 1)]:
        inputs = prompts(model, images, count, points, seed=images + count)
        iou, masks = decoder_program.module()(image_embeddings=embeddings[:images], **inputs)
        with torch.no_grad():
            expected = model(image_embeddings=embeddings[:images], **inputs)
        assert masks.shape == expected.pred_masks.shape == (images, count, 3, 32, 32)
        torch.testing.assert_close(masks, expected.pred_masks, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(iou, expected.iou_scores, atol=2e-5, rtol=1e-5)


def _flops_per_prompt(model, embeddings, decode) -> float:
    """The FLOPs that `decode(image_embeddings, points, labels)` adds per one-point prompt, from 1 to 9 prompts."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for count in (1, 9):
        inputs = prompts(model, 1, count, 1, seed=count)
        inputs["input_labels"] = torch.ones_like(inputs["input_labels"])
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            decode(embeddings[:1], inputs["input_points"], inputs["input_labels"])
        counts.append(counter.get_total_flops())
    return (counts[1] - counts[0]) / 8


def test_decoder_program_shares_the_image_side_among_prompts(model, embeddings, decoder_program):
    # the program takes sam_hf's routes, not Meta's form: the image side that the prompts of an image share is projected
    # once per image. FLOP counts, so exact: ViT-B 1.32 against 3.01 GFLOP per added prompt; this model's 64 image tokens
    # gain less, 0.76x Meta's form (a program of Meta's form, as exported before: 0.87x, its final attention for the read
    # tokens only)
    from sam_hf.modeling.module_calls import calling_modules

    def program(image_embeddings, points, labels):
        return decoder_program.module()(image_embeddings=image_embeddings, input_points=points, input_labels=labels)

    def meta_form(image_embeddings, points, labels):
        with calling_modules():
            return model(image_embeddings=image_embeddings, input_points=points, input_labels=labels)

    model.requires_grad_(False)  # the counter's module hooks reject views of trainable weights made under no_grad
    try:
        ours, meta = (_flops_per_prompt(model, embeddings, decode) for decode in (program, meta_form))
    finally:
        model.requires_grad_(True)
    assert 0 < ours < 0.8 * meta, (ours, meta)


def test_decoder_program_upscales_without_convolutions(decoder_program, tmp_path, model):
    """The program's mask upscaling is the linear form: with a convolution in it, Inductor would lay the image tokens out
    channels-last (modeling/export_form.py). ONNX files keep Meta's transposed convolutions, onnxruntime's faster form."""
    import onnx

    targets = {str(node.target) for node in decoder_program.graph.nodes if node.op == "call_function"}
    assert not [target for target in targets if "conv" in target] and "aten.linear.default" in targets
    kinds = {node.op_type for node in onnx.load(str(export_onnx(model, tmp_path / "decoder.onnx"))).graph.node}
    assert "ConvTranspose" in kinds


def test_decoder_program_leaves_its_inputs_alone(model, embeddings, decoder_program):
    inputs = {"image_embeddings": embeddings[:2].clone(), **prompts(model, 2, 4, 2, seed=5)}
    kept = {name: value.clone() for name, value in inputs.items()}
    first = decoder_program.module()(**inputs)
    second = decoder_program.module()(**inputs)
    for name, value in inputs.items():
        assert torch.equal(value, kept[name]), name
    assert torch.equal(first[1], second[1])


def test_decoder_program_checks_values_when_called(model, embeddings, decoder_program):
    inputs = prompts(model, 1, 2, 1, seed=7)
    points = inputs["input_points"].clone()
    points[0, 1, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="input_points must contain only finite values"):
        decoder_program.module()(image_embeddings=embeddings[:1], input_points=points, input_labels=inputs["input_labels"])
    labels = inputs["input_labels"].clone()
    labels[0, 0, 0] = 7
    with pytest.raises(RuntimeError, match=r"input_labels must be in \(1, 0, -1, -10\)"):
        decoder_program.module()(image_embeddings=embeddings[:1], input_points=inputs["input_points"], input_labels=labels)
    bad = embeddings[:1].clone()
    bad[0, 3, 2, 1] = float("inf")
    with pytest.raises(RuntimeError, match="image_embeddings must contain only finite values"):
        decoder_program.module()(image_embeddings=bad, input_points=inputs["input_points"], input_labels=inputs["input_labels"])


@pytest.mark.parametrize("choice", [dict(boxes=True), dict(points=False, boxes=True, masks=True), dict(masks=True, multimask_output=False)])
def test_decoder_program_with_boxes_and_masks(model, embeddings, choice):
    program = export_program(model, **choice)
    multimask = choice.get("multimask_output", True)
    for images, count in [(1, 1), (3, 4)]:
        inputs = prompts(model, images, count, 3 if choice.get("points", True) else None, boxes=choice.get("boxes", False),
                         masks=choice.get("masks", False), seed=count)
        iou, masks = program.module()(image_embeddings=embeddings[:images], **inputs)
        with torch.no_grad():
            expected = model(image_embeddings=embeddings[:images], multimask_output=multimask, **inputs)
        assert masks.shape[2] == (3 if multimask else 1)
        torch.testing.assert_close(masks, expected.pred_masks, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(iou, expected.iou_scores, atol=2e-5, rtol=1e-5)
    if choice.get("boxes"):
        corners = inputs["input_boxes"].clone()
        corners[0, 0] = corners[0, 0, [2, 3, 0, 1]] + 1  # x1 < x0
        with pytest.raises(RuntimeError, match="input_boxes must be"):
            program.module()(image_embeddings=embeddings[:images], **{**inputs, "input_boxes": corners})


def test_encoder_program_matches_the_model(model, embeddings):
    program = export_program(model, "encoder")
    size = model.config.vision_config.image_size
    for images in (1, 3):
        pixels = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(images))
        with torch.no_grad():
            expected = model.get_image_embeddings(pixels)
        torch.testing.assert_close(program.module()(pixel_values=pixels), expected, atol=2e-5, rtol=1e-5)


def test_export_leaves_the_model_as_it_was(model, embeddings, decoder_program):
    # exporting takes Meta's form only while it traces: later eager calls are the same, bit for bit
    inputs = prompts(model, 2, 3, 2, seed=11)
    with torch.no_grad():
        before = model(image_embeddings=embeddings[:2], **inputs).pred_masks
        export_program(model, boxes=True)
        after = model(image_embeddings=embeddings[:2], **inputs).pred_masks
    assert torch.equal(before, after)
    assert not model.training


def test_export_rejects_bad_arguments(model, tmp_path):
    with pytest.raises(ValueError, match="part must be one of"):
        export_program(model, "neck")
    with pytest.raises(TypeError, match="model must be a SamHfModel"):
        export_program(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="needs points or boxes"):
        export_program(model, points=False)
    with pytest.raises(TypeError, match="boxes must be a bool"):
        export_program(model, boxes="yes")
    with pytest.raises(ValueError, match="must name a .onnx file"):
        export_onnx(model, tmp_path / "decoder.pt")
    with pytest.raises(ValueError, match="does not exist"):
        export_onnx(model, tmp_path / "missing" / "decoder.onnx")
    existing = tmp_path / "decoder.onnx"
    existing.write_bytes(b"kept")
    with pytest.raises(ValueError, match="overwrite=True"):
        export_onnx(model, existing)
    assert existing.read_bytes() == b"kept"


def test_onnx_decoder_and_encoder_run_in_onnxruntime(model, embeddings, tmp_path):
    import onnxruntime  # in the test extras
    decoder = onnxruntime.InferenceSession(str(export_onnx(model, tmp_path / "decoder.onnx")), providers=["CPUExecutionProvider"])
    assert [i.name for i in decoder.get_inputs()] == ["image_embeddings", "input_points", "input_labels"]
    assert [o.name for o in decoder.get_outputs()] == ["iou_scores", "pred_masks"]
    for images, count, points in [(1, 1, 1), (3, 7, 2)]:
        inputs = prompts(model, images, count, points, seed=count)
        iou, masks = decoder.run(None, {"image_embeddings": embeddings[:images].numpy(), **{k: v.numpy() for k, v in inputs.items()}})
        with torch.no_grad():
            expected = model(image_embeddings=embeddings[:images], **inputs)
        np.testing.assert_allclose(masks, expected.pred_masks.numpy(), atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(iou, expected.iou_scores.numpy(), atol=2e-5, rtol=1e-5)
    encoder = onnxruntime.InferenceSession(str(export_onnx(model, tmp_path / "encoder.onnx", "encoder")), providers=["CPUExecutionProvider"])
    size = model.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model.get_image_embeddings(pixels)
    np.testing.assert_allclose(encoder.run(None, {"pixel_values": pixels.numpy()})[0], expected.numpy(), atol=2e-5, rtol=1e-5)


def test_mixed_precision_decoder_program_takes_the_encoders_bf16_embeddings(model):
    # mixed_precision(): bf16 encoder, fp32 decoder; the program is traced on embeddings in the encoder's dtype
    mixed = randomize(SamHfModel(config_for_variant("tiny")), seed=1).eval().mixed_precision(torch.bfloat16)
    size = model.config.vision_config.image_size
    with torch.no_grad():
        embeddings = mixed.get_image_embeddings(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4)))
    assert embeddings.dtype == torch.bfloat16
    inputs = prompts(model, 2, 3, 1, seed=9)
    iou, masks = export_program(mixed).module()(image_embeddings=embeddings, **inputs)
    with torch.no_grad():
        expected = mixed(image_embeddings=embeddings, **inputs)
    assert masks.dtype == expected.pred_masks.dtype
    torch.testing.assert_close(masks, expected.pred_masks, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(iou, expected.iou_scores, atol=2e-5, rtol=1e-5)


def test_onnx_example_segments_like_the_pytorch_model(tmp_path, capsys):
    """examples/onnx_segment.py on the shipped model and the demo image: the click on the blue ellipse gives the PyTorch
    model's mask, pixel for pixel, and an existing mask is kept."""
    import importlib.util
    import os

    root = os.path.join(os.path.dirname(__file__), "..")
    spec = importlib.util.spec_from_file_location("onnx_segment_example", os.path.join(root, "examples", "onnx_segment.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = [os.path.join(root, "models", "sam-hf-shapes-352"), os.path.join(root, "examples", "sample.png"), "--point", "228", "65",
            "--output", str(tmp_path)]
    result = example.main(argv)
    assert result["pixels_differing_from_pytorch"] == 0 and result["max_iou_difference"] < 1e-4
    assert result["score"] > 0.9 and 1000 < result["area"] < 5000  # the ellipse, not the background
    assert sorted(os.listdir(tmp_path)) == ["decoder.onnx", "encoder.onnx", "mask.png"]
    kept = (tmp_path / "mask.png").read_bytes()
    with pytest.raises(SystemExit, match="exists"):
        example.main(argv)
    assert (tmp_path / "mask.png").read_bytes() == kept
