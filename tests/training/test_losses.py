"""The SAM loss against values computed by hand on 2x2 masks."""
import math

import pytest
import torch

from sam_hf.training import SamHfLoss, dice_loss, mask_iou, sigmoid_focal_loss

TARGET = torch.tensor([[1.0, 0.0], [0.0, 0.0]])


def test_focal_and_dice_by_hand():
    logits = torch.zeros(2, 2)  # p = 0.5 everywhere
    # foreground pixel: 0.25 * (1 - 0.5)^2 * ln 2; background: 0.75 * 0.5^2 * ln 2; mean over 4 pixels
    expected_focal = (0.25 * 0.25 + 3 * 0.75 * 0.25) * math.log(2) / 4
    torch.testing.assert_close(sigmoid_focal_loss(logits, TARGET), torch.tensor(expected_focal))
    # dice: 1 - (2 * 0.5 + 1) / (2 + 1 + 1)
    torch.testing.assert_close(dice_loss(logits, TARGET), torch.tensor(0.5))


def test_total_loss_by_hand():
    pred = torch.zeros(1, 1, 1, 2, 2)
    iou = torch.full((1, 1, 1), 0.3)
    out = SamHfLoss()(pred, iou, TARGET[None, None])
    focal = 0.15625 * math.log(2)
    # nothing predicted (logit 0 is not > 0) -> actual IoU 0 -> MSE 0.3^2
    torch.testing.assert_close(out.loss, torch.tensor(20 * focal + 0.5 + 0.09))
    torch.testing.assert_close(out.iou, torch.tensor(0.09))
    torch.testing.assert_close(out.mask_iou, torch.tensor(0.0))


def test_multimask_backpropagates_only_the_lowest_loss_mask():
    bad = torch.zeros(2, 2)
    good = torch.where(TARGET > 0, 10.0, -10.0)
    pred = torch.stack([bad, good])[None, None].requires_grad_(True)  # (1, 1, 2, 2, 2)
    iou = torch.full((1, 1, 2), 0.5)
    out = SamHfLoss()(pred, iou, TARGET[None, None])
    assert out.selected.tolist() == [[1]]
    torch.testing.assert_close(out.mask_iou, torch.tensor(1.0))
    torch.testing.assert_close(out.iou, torch.tensor(0.25))  # ((0.5 - 0)^2 + (0.5 - 1)^2) / 2
    out.loss.backward()
    assert pred.grad[0, 0, 0].abs().sum() == 0 and pred.grad[0, 0, 1].abs().sum() > 0
    # IoU supervised on the selected mask only
    only = SamHfLoss(iou_on_all_masks=False)(pred, iou, TARGET[None, None])
    torch.testing.assert_close(only.iou, torch.tensor(0.25))  # (0.5 - 1)^2


def test_padded_prompts_do_not_count():
    target = TARGET[None, None].expand(1, 2, 2, 2)
    pred = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 5.0)])[None, :, None]  # (1, 2, 1, 2, 2)
    iou = torch.zeros(1, 2, 1)
    alone = SamHfLoss()(pred[:, :1], iou[:, :1], target[:, :1])
    padded = SamHfLoss()(pred, iou, target, weights=torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(padded.loss, alone.loss)


def test_low_res_logits_are_upsampled_to_the_target():
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1
    small = SamHfLoss()(torch.full((1, 1, 1, 2, 2), 1.5), torch.zeros(1, 1, 1), target)
    full = SamHfLoss()(torch.full((1, 1, 1, 4, 4), 1.5), torch.zeros(1, 1, 1), target)
    torch.testing.assert_close(small.loss, full.loss)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="pred_masks"):
        SamHfLoss()(torch.zeros(1, 2, 2), torch.zeros(1, 1, 1), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="iou_scores"):
        SamHfLoss()(torch.zeros(1, 1, 3, 2, 2), torch.zeros(1, 1, 1), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="focal_weight"):
        SamHfLoss(focal_weight=-1)


def test_metrics_by_hand():
    pred = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.bool)
    target = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.bool)
    torch.testing.assert_close(mask_iou(pred, target), torch.tensor([0.5, 1.0]))  # empty vs empty -> 1
    from sam_hf.training import dice_score

    torch.testing.assert_close(dice_score(pred, target), torch.tensor([2 / 3, 1.0]))
