"""Prompt validation, scaling (Meta's apply_coords / apply_boxes) and padding."""
import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide as MetaResize

from sam_hf.processing import PAD_LABEL, SamHfImageProcessor, SamHfProcessor

SIZES = [(333, 517), (129, 127)]  # (H, W) of two non-square images


@pytest.fixture
def processor():
    return SamHfProcessor(SamHfImageProcessor(longest_edge=128))


def _prompts(processor, **kwargs):
    return processor(original_sizes=SIZES, **kwargs)


def test_points_scaled_as_meta(processor):
    pts = [[[[10.5, 20.0], [516.0, 332.0]]], [[[0.0, 0.0], [126.0, 128.0]]]]
    out = _prompts(processor, input_points=pts, input_labels=[[[1, 0]], [[-1, 1]]])
    assert out["input_points"].shape == (2, 1, 2, 2) and out["input_points"].dtype == torch.float32
    for i, size in enumerate(SIZES):
        expected = MetaResize(128).apply_coords(np.array(pts[i]), size)
        torch.testing.assert_close(out["input_points"][i], torch.as_tensor(expected, dtype=torch.float))
    assert out["input_labels"].tolist() == [[[1, 0]], [[-1, 1]]]
    assert out["prompt_mask"].tolist() == [[True], [True]]


def test_boxes_scaled_as_meta(processor):
    boxes = [[[10, 20, 300, 200], [0, 0, 517, 333]], [[1.5, 2.5, 3.5, 4.5], [5, 5, 5, 5]]]
    out = _prompts(processor, input_boxes=boxes)
    assert out["input_boxes"].shape == (2, 2, 4)
    for i, size in enumerate(SIZES):
        expected = MetaResize(128).apply_boxes(np.array(boxes[i], dtype=float), size)
        torch.testing.assert_close(out["input_boxes"][i], torch.as_tensor(expected, dtype=torch.float))
    assert "input_points" not in out and out["prompt_mask"].all()


def test_three_level_points_are_one_prompt(processor):
    a = _prompts(processor, input_points=[[[1, 2], [3, 4]], [[5, 6], [7, 8]]], input_labels=[[1, 0], [0, 1]])
    b = _prompts(processor, input_points=[[[[1, 2], [3, 4]]], [[[5, 6], [7, 8]]]], input_labels=[[[1, 0]], [[0, 1]]])
    for key in ("input_points", "input_labels", "prompt_mask"):
        torch.testing.assert_close(a[key], b[key])


def test_numpy_and_torch_inputs_equal_lists(processor, rng):
    pts = rng.rand(2, 3, 4, 2) * 100
    labels = rng.randint(0, 2, size=(2, 3, 4))
    boxes = np.concatenate([rng.rand(2, 3, 2) * 50, 50 + rng.rand(2, 3, 2) * 50], axis=-1)
    from_lists = _prompts(processor, input_points=pts.tolist(), input_labels=labels.tolist(), input_boxes=boxes.tolist())
    from_numpy = _prompts(processor, input_points=pts, input_labels=labels, input_boxes=boxes)
    from_torch = _prompts(processor, input_points=torch.tensor(pts), input_labels=torch.tensor(labels), input_boxes=torch.tensor(boxes))
    for key in ("input_points", "input_labels", "input_boxes", "prompt_mask"):
        torch.testing.assert_close(from_lists[key], from_numpy[key])
        torch.testing.assert_close(from_lists[key], from_torch[key])
    assert from_lists["input_points"].shape == (2, 3, 4, 2) and from_lists["input_boxes"].shape == (2, 3, 4)


def test_labels_default_to_positive(processor):
    out = _prompts(processor, input_points=[[[[1, 2]], [[3, 4], [5, 6]]], [[[7, 8]]]])
    assert out["input_labels"].tolist() == [[[1, PAD_LABEL], [1, 1]], [[1, PAD_LABEL], [PAD_LABEL, PAD_LABEL]]]


def test_ragged_points_and_prompts_are_padded(processor):
    pts = [[[[10, 20]], [[30, 40], [50, 60], [70, 80]]], [[[1, 1], [2, 2]]]]
    labels = [[[1], [0, 1, -1]], [[1, 0]]]
    boxes = [[[0, 0, 10, 10], [5, 5, 20, 20]], [[1, 1, 2, 2]]]
    out = _prompts(processor, input_points=pts, input_labels=labels, input_boxes=boxes)
    assert out["input_points"].shape == (2, 2, 3, 2)
    assert out["input_labels"].tolist() == [[[1, -10, -10], [0, 1, -1]], [[1, 0, -10], [-10, -10, -10]]]
    assert out["prompt_mask"].tolist() == [[True, True], [True, False]]
    padded = out["input_labels"] == PAD_LABEL
    assert (out["input_points"][padded] == 0).all()
    assert (out["input_boxes"][1, 1] == 0).all()
    # Real entries are the same as when each image is processed alone.
    alone = SamHfProcessor(SamHfImageProcessor(longest_edge=128))(
        original_sizes=[SIZES[1]], input_points=[pts[1]], input_labels=[labels[1]], input_boxes=[boxes[1]]
    )
    torch.testing.assert_close(out["input_points"][1, :1, :2], alone["input_points"][0])
    torch.testing.assert_close(out["input_boxes"][1, :1], alone["input_boxes"][0])


def test_return_numpy(processor):
    out = _prompts(processor, input_points=[[[1, 2]], [[3, 4]]], return_tensors="np")
    assert isinstance(out["input_points"], np.ndarray) and out["input_points"].dtype == np.float32
    assert out["input_labels"].dtype == np.int64 and out["prompt_mask"].dtype == bool


def test_matches_transformers_sam_processor(rng):
    # transformers' SamProcessor scales with the same formula; it has no ragged-N-within-an-image support
    # (and pads points with -10 coordinates), so only regular prompts are compared.
    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    image = rng.randint(0, 256, size=(333, 517, 3), dtype=np.uint8)
    theirs = SamProcessor(SamImageProcessorPil())
    ours = SamHfProcessor(SamHfImageProcessor())
    kwargs = dict(input_points=[[[10, 20], [30, 40]]], input_labels=[[1, 0]], input_boxes=[[[1, 2, 300, 200]]])
    a, b = ours(image, **kwargs), theirs(image, return_tensors="pt", **kwargs)
    torch.testing.assert_close(a["input_points"], b["input_points"].float())
    assert a["input_labels"].tolist() == b["input_labels"].tolist()
    torch.testing.assert_close(a["input_boxes"], b["input_boxes"].float())
    for key in ("original_sizes", "reshaped_input_sizes"):
        assert a[key].tolist() == b[key].tolist()
