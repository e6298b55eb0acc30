"""Pure-torch NMS against the brute-force reference of torchvision's semantics (tests/_stubs)."""
import importlib.util
import os

import pytest
import torch

from sam_hf.generation.nms import batched_nms, box_area, nms

_REFERENCE = os.path.join(os.path.dirname(__file__), "..", "_stubs", "torchvision", "ops", "boxes.py")
_spec = importlib.util.spec_from_file_location("_nms_reference", _REFERENCE)
reference = importlib.util.module_from_spec(_spec)  # the brute-force reference of torchvision's NMS
_spec.loader.exec_module(reference)


def _random_boxes(n, generator, size=100.0, integer=False):
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 3 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    return boxes.round() if integer else boxes


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 1.0])
def test_nms_matches_reference(seed, threshold):
    g = torch.Generator().manual_seed(seed)
    boxes = _random_boxes(120, g, integer=seed % 2 == 0)
    scores = torch.rand(120, generator=g)
    if seed % 3 == 0:
        scores = (scores * 4).floor()  # many ties: visited in index order
    torch.testing.assert_close(nms(boxes, scores, threshold), reference.nms(boxes, scores, threshold))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_categories", [1, 3, 40])
def test_batched_nms_matches_reference(seed, n_categories):
    g = torch.Generator().manual_seed(seed)
    boxes = _random_boxes(150, g, integer=True)
    scores = torch.rand(150, generator=g)
    if seed % 2 == 0:
        scores = (scores * 3).floor()  # ties within and across categories
    idxs = torch.randint(0, n_categories, (150,), generator=g)
    ours = batched_nms(boxes, scores, idxs, 0.5)
    torch.testing.assert_close(ours, reference.batched_nms(boxes, scores, idxs, 0.5))


def test_identical_and_degenerate_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 5], [5, 5, 5, 5], [20, 20, 30, 30.0]])
    scores = torch.tensor([0.5, 0.9, 0.3, 0.3, 0.1])
    torch.testing.assert_close(nms(boxes, scores, 0.7), reference.nms(boxes, scores, 0.7))
    assert nms(boxes, scores, 0.7).tolist() == [1, 2, 3, 4]


def test_chain_of_suppressions_is_greedy():
    # Box 0 suppresses 1, so 1 cannot suppress 2: greedy keeps 0 and 2.
    boxes = torch.tensor([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.4).tolist() == [0, 2]


def test_empty_input():
    empty = torch.zeros(0, 4)
    assert nms(empty, torch.zeros(0), 0.5).shape == (0,)
    out = batched_nms(empty, torch.zeros(0), torch.zeros(0), 0.5)
    assert out.shape == (0,) and out.dtype == torch.int64


def test_box_area_and_bad_input():
    torch.testing.assert_close(box_area(torch.tensor([[1.0, 2, 4, 6]])), torch.tensor([12.0]))
    with pytest.raises(ValueError, match="boxes must be a \\(N, 4\\)"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2), 0.5)
