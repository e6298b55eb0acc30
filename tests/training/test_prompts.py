"""Prompt simulation against hand-computed values, and its determinism under a seeded generator."""
import pytest
import torch

from sam_hf.training import (
    SimulatedPrompts,
    boxes_from_masks,
    error_points,
    initial_prompts,
    jitter_boxes,
    refine_prompts,
    sample_points,
)


def _mask(h, w, pixels):
    mask = torch.zeros(h, w, dtype=torch.bool)
    for y, x in pixels:
        mask[y, x] = True
    return mask


def test_boxes_from_masks():
    mask = torch.zeros(2, 6, 8, dtype=torch.bool)
    mask[0, 1:3, 3:6] = True  # rows 1..2, columns 3..5
    assert boxes_from_masks(mask).tolist() == [[3.0, 1.0, 5.0, 2.0], [0.0, 0.0, 0.0, 0.0]]


def test_jitter_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 9.0, 19.0], [0.0, 0.0, 999.0, 999.0]])  # sides 10x20 and 1000x1000
    noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(3))
    std = torch.tensor([[1.0, 2.0, 1.0, 2.0], [20.0, 20.0, 20.0, 20.0]])  # 10% of the side, at most 20
    expected = boxes + noise * std
    expected = torch.stack([torch.minimum(expected[:, 0], expected[:, 2]), torch.minimum(expected[:, 1], expected[:, 3]),
                            torch.maximum(expected[:, 0], expected[:, 2]), torch.maximum(expected[:, 1], expected[:, 3])], 1)
    out = jitter_boxes(boxes, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, expected)
    assert torch.equal(jitter_boxes(boxes, noise_std=0.0), boxes)


def test_points_fall_in_the_mask():
    single = _mask(5, 7, [(3, 6)])[None]
    assert sample_points(single, num_points=4).tolist() == [[[6.0, 3.0]] * 4]
    two = _mask(5, 7, [(0, 0), (4, 2)])[None]
    points = sample_points(two, num_points=200, generator=torch.Generator().manual_seed(0))[0].tolist()
    assert set(map(tuple, points)) == {(0.0, 0.0), (2.0, 4.0)}
    with pytest.raises(ValueError, match="empty"):
        sample_points(torch.zeros(1, 3, 3, dtype=torch.bool))


def test_initial_prompts_point_box_and_negatives():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:4, 2:4] = True
    masks[1, 5, 6] = True
    valid = torch.zeros(8, 8, dtype=torch.bool)
    valid[:, :4] = True  # negatives only in the left half
    gen = torch.Generator().manual_seed(0)
    prompts = initial_prompts(masks, mode="point", num_negative=3, valid=valid, generator=gen)
    assert prompts.boxes is None and prompts.points.shape == (2, 4, 2)
    assert prompts.labels.tolist() == [[1, 0, 0, 0]] * 2
    assert prompts.points[1, 0].tolist() == [6.0, 5.0]
    for k in range(2):
        for x, y in prompts.points[k, 1:].long().tolist():
            assert not masks[k, y, x] and valid[y, x]
    box = initial_prompts(masks, mode="box", box_noise_std=0.0, generator=gen)
    assert box.points is None and box.boxes.tolist() == [[2.0, 2.0, 3.0, 3.0], [6.0, 5.0, 6.0, 5.0]]
    with pytest.raises(ValueError, match="mode"):
        initial_prompts(masks, mode="scribble")


def test_error_points_by_hand():
    target = _mask(4, 4, [(1, 1), (1, 2)])[None].repeat(3, 1, 1)
    pred = target.clone()
    pred[0, 3, 0] = True  # a false positive at x=0, y=3 -> negative click there
    pred[1, 1, 2] = False  # a false negative at x=2, y=1 -> positive click there
    # pred[2] is perfect -> a positive click inside the target
    points, labels = error_points(pred, target, generator=torch.Generator().manual_seed(0))
    assert points[0, 0].tolist() == [0.0, 3.0] and labels[0].tolist() == [0]
    assert points[1, 0].tolist() == [2.0, 1.0] and labels[1].tolist() == [1]
    assert tuple(points[2, 0].long().tolist()[::-1]) in {(1, 1), (1, 2)} and labels[2].tolist() == [1]


def test_refinement_appends_a_click_and_feeds_back_the_best_logits():
    target = _mask(8, 8, [(y, x) for y in range(2, 6) for x in range(2, 6)])[None]  # 4x4 square
    low_res = torch.full((1, 2, 4, 4), -5.0)  # two candidates at half resolution
    low_res[0, 1, 1:3, 1:2] = 5.0  # the second covers the left half of the square only
    scores = torch.tensor([[0.1, 0.9]])
    first = SimulatedPrompts(points=torch.tensor([[[3.0, 3.0]]]), labels=torch.tensor([[1]]))
    out = refine_prompts(first, pred_logits=low_res, iou_scores=scores, target=target,
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.mask_inputs, low_res[:, 1:2])
    assert out.points.shape == (1, 2, 2) and out.labels.tolist() == [[1, 1]]  # only false negatives exist
    x, y = out.points[0, 1].long().tolist()
    assert target[0, y, x] and x >= 4  # in the missed right half
    same = refine_prompts(first, pred_logits=low_res, iou_scores=scores, target=target, add_point=False)
    assert same.points.shape == (1, 1, 2) and torch.equal(same.mask_inputs, low_res[:, 1:2])


def test_seeded_generator_reproduces():
    masks = torch.rand(6, 32, 32, generator=torch.Generator().manual_seed(1)) > 0.7

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        p = initial_prompts(masks, mode="point", num_negative=2, generator=gen)
        b = initial_prompts(masks, mode="box", generator=gen)
        return p.points, b.boxes

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
