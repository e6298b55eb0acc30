"""`sam-hf` end to end on small images with a tiny saved model (in-process), bad flags and bad files."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

import sam_hf
from sam_hf.cli import main

OPEN = ["--points-per-side", "4", "--pred-iou-thresh", "-1", "--stability-score-thresh", "0", "--box-nms-thresh", "0.9"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_model")
    sam_hf.SamHfModel(sam_hf.config_for_variant("tiny")).eval().save_pretrained(path)
    return str(path)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (40, 60)), ("b.jpg", (50, 30))):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(folder / name)
    return folder


def test_segment_everything_pngs(model_dir, images, tmp_path):
    out = tmp_path / "out"
    assert main(["segment-everything", str(images), "--model", model_dir, "--output", str(out), *OPEN]) == 0
    for name, size in (("a", (40, 60)), ("b", (50, 30))):
        assert Image.open(out / f"{name}_overlay.png").size == size[::-1]
        rows = list(csv.reader(open(out / name / "metadata.csv")))
        assert rows[0][:3] == ["id", "area", "bbox_x0"] and len(rows[0]) == 14
        assert len(rows) > 1
        for row in rows[1:]:
            mask = np.asarray(Image.open(out / name / f"{row[0]}.png")) > 0
            assert mask.shape == size and int(mask.sum()) == int(row[1])


def test_segment_everything_rle_and_overwrite(model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["segment-everything", str(images / "a.png"), "--model", model_dir, "--output", str(out), "--convert-to-rle", *OPEN]
    assert main(args) == 0
    records = json.load(open(out / "a.json"))
    assert records and {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"} <= set(records[0])
    for r in records:
        assert mask_utils.area(r["segmentation"]) == r["area"]
    stamp = os.path.getmtime(out / "a.json")
    assert main(args + ["--crop-n-layers", "1"]) == 0  # exists: kept and reported
    assert "exists" in capsys.readouterr().err and os.path.getmtime(out / "a.json") == stamp
    assert main(args + ["--pred-iou-thresh", "10", "--overwrite"]) == 0
    assert json.load(open(out / "a.json")) == []  # empty result is a normal empty output


def test_bad_files_are_skipped_with_failure_status(model_dir, images, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["segment-everything", str(images), "--model", model_dir, "--output", str(out), *OPEN]) == 1
    assert "broken.png" in capsys.readouterr().err
    assert (out / "a" / "metadata.csv").exists() and (out / "b" / "metadata.csv").exists()  # the others are done
    assert main(["segment-everything", str(tmp_path / "missing.png"), "--model", model_dir, "--output", str(out)]) == 1


def test_an_image_that_cannot_be_segmented_is_skipped(model_dir, images, tmp_path, capsys):
    Image.fromarray(np.zeros((1, 500, 3), np.uint8)).save(images / "thin.png")  # no row left at the model's 128 pixels
    out = tmp_path / "out"
    assert main(["segment-everything", str(images), "--model", model_dir, "--output", str(out), *OPEN]) == 1
    err = capsys.readouterr().err
    assert "could not segment" in err and "thin.png" in err
    assert (out / "a" / "metadata.csv").exists() and (out / "b" / "metadata.csv").exists()  # the others are done


def _unavailable_device() -> str:
    return next(name for name in ("cuda", "xpu", "mps") if not getattr(torch, name).is_available())


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--points", "10,12,0.5"], "label 1 (positive) or 0 (negative)"),
        (["--points", "10,12,inf"], "label 1 (positive) or 0 (negative)"),
        (["--points", "10,12", "--device", "nonsense"], "--device must be a torch device"),
        (["--points", "10,12", "--device", "UNAVAILABLE"], "device is available here"),
        (["--points", "10,12", "--model", "MISSING"], "is not a saved model folder"),
        (["--points", "10,12", "--output", "A_FILE"], "cannot be made a folder"),
    ],
)
def test_unusable_prompt_model_device_or_output_is_a_usage_error(model_dir, images, tmp_path, flags, words, capsys):
    (tmp_path / "a_file").write_text("kept")
    names = {"UNAVAILABLE": _unavailable_device(), "MISSING": str(tmp_path / "no_model"), "A_FILE": str(tmp_path / "a_file")}
    argv = ["segment", str(images / "a.png"), "--model", model_dir, "--output", str(tmp_path / "out"), *flags]
    with pytest.raises(SystemExit) as exit_info:
        main([names.get(a, a) for a in argv])  # the later --model / --output replace the earlier ones
    assert exit_info.value.code == 2 and words in capsys.readouterr().err
    assert (tmp_path / "a_file").read_text() == "kept"


def test_segment_with_points_and_box(model_dir, images, tmp_path):
    out = tmp_path / "out"
    args = ["segment", str(images / "a.png"), "--model", model_dir, "--output", str(out), "--points", "10,12", "--points", "30,20,0", "--box", "5,5,50,35"]
    assert main(args) == 0
    summary = json.load(open(out / "a.json"))
    mask = np.asarray(Image.open(out / "a_mask.png")) > 0
    assert mask.shape == (40, 60) and summary["area"] == int(mask.sum()) and isinstance(summary["score"], float)
    assert summary["points"] == [[10.0, 12.0], [30.0, 20.0, 0.0]] and summary["box"] == [5.0, 5.0, 50.0, 35.0]
    assert Image.open(out / "a_overlay.png").size == (60, 40)
    assert main(["segment", str(images / "b.jpg"), "--model", model_dir, "--output", str(out), "--points", "3,4"]) == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["segment-everything", "x.png", "--output", "o"],  # no --model
        ["segment-everything", "x.png", "--model", "m", "--output", "o", "--points-per-side", "many"],
        ["segment", "x.png", "--model", "m", "--output", "o", "--points", "1,2,3,4"],
        ["segment", "x.png", "--model", "m", "--output", "o"],  # no prompt
        ["segment", "x.png", "--model", "m", "--output", "o", "--box", "1,2,3"],
        ["frobnicate"],
    ],
)
def test_bad_flags(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_bad_generator_value(model_dir, images, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment-everything", str(images), "--model", model_dir, "--output", str(tmp_path / "o"), "--box-nms-thresh", "2"])
    assert exit_info.value.code == 2 and "box_nms_thresh" in capsys.readouterr().err


def test_meta_checkpoint_needs_model_type(tmp_path, images, capsys):
    with pytest.raises(SystemExit):
        main(["segment-everything", str(images), "--model", str(tmp_path / "sam.pth"), "--output", str(tmp_path / "o")])
    assert "--model-type" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["bf16", "bf16-encoder"])
def test_precision_modes(model_dir, images, tmp_path, precision):
    """Both reduced-precision modes load in their dtypes, run end to end, and find the fp32 run's masks (same
    model, same open thresholds) at IoU > 0.9 (measured: 0.99 bf16, 0.998 bf16-encoder; bf16 rounding moves edges)."""
    from sam_hf.cli import load_model

    model, _ = load_model(model_dir, None, "cpu", precision)
    assert model.vision_encoder.patch_embed.projection.weight.dtype == torch.bfloat16
    assert model.mask_decoder.iou_token.weight.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    runs = {}
    for mode in ("fp32", precision):
        out = tmp_path / mode
        assert main(["segment-everything", str(images / "a.png"), "--model", model_dir, "--output", str(out), "--precision", mode,
                     "--convert-to-rle", *OPEN]) == 0
        runs[mode] = [mask_utils.decode(a["segmentation"]).astype(bool) for a in json.load(open(out / "a.json"))]
    assert runs[precision] and all(m.shape == (40, 60) for m in runs[precision])
    for reference in runs["fp32"]:
        best = max(np.logical_and(reference, m).sum() / max(np.logical_or(reference, m).sum(), 1) for m in runs[precision])
        assert best > 0.9


def test_precision_is_checked(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "x.png", "--model", "m", "--output", "o", "--precision", "fp16"])
    assert "--precision" in capsys.readouterr().err
    from sam_hf.cli import load_model

    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, bf16-encoder, got 'half'"):
        load_model("m", None, "cpu", "half")


def test_export_onnx_writes_a_decoder_that_matches_the_model(model_dir, tmp_path, capsys):
    import onnxruntime  # in the test extras

    output = tmp_path / "decoder.onnx"
    assert main(["export-onnx", "--model", model_dir, "--output", str(output), "--boxes", "--single-mask"]) == 0
    assert "wrote" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image_embeddings", "input_points", "input_labels", "input_boxes"]
    model = sam_hf.SamHfModel.from_pretrained(model_dir).eval()
    generator = torch.Generator().manual_seed(0)
    grid = model.config.prompt_encoder_config.image_embedding_size
    inputs = dict(image_embeddings=torch.randn(1, 32, grid, grid, generator=generator), input_points=torch.rand(1, 2, 1, 2, generator=generator) * 100,
                  input_labels=torch.ones(1, 2, 1, dtype=torch.long), input_boxes=torch.tensor([[[10.0, 20.0, 90.0, 80.0], [0.0, 0.0, 50.0, 60.0]]]))
    iou, masks = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        expected = model(multimask_output=False, **inputs)
    assert masks.shape == (1, 2, 1, 4 * grid, 4 * grid)
    np.testing.assert_allclose(masks, expected.pred_masks.numpy(), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(iou, expected.iou_scores.numpy(), atol=2e-5, rtol=1e-5)
    # an existing file is kept without --overwrite
    before = output.read_bytes()
    assert main(["export-onnx", "--model", model_dir, "--output", str(output)]) == 0
    assert "kept" in capsys.readouterr().err and output.read_bytes() == before


@pytest.mark.parametrize(
    "flags",
    [["--output", "decoder.pt"], ["--output", "encoder.onnx", "--part", "encoder", "--boxes"], ["--output", "missing/decoder.onnx"]],
)
def test_export_onnx_bad_flags(model_dir, tmp_path, flags, capsys):
    flags = [tmp_path / f if f.endswith((".pt", ".onnx")) else f for f in flags]
    with pytest.raises(SystemExit) as exit_info:
        main(["export-onnx", "--model", model_dir, *map(str, flags)])
    assert exit_info.value.code == 2 and "usage" in capsys.readouterr().err
