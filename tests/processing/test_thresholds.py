"""greater / count_true (numpy on the CPU) and any_along (a byte max) against torch's own `>`, bool sums and `any`,
bit for bit."""
import pytest
import torch

from sam_hf.processing.thresholds import any_along, count_true, greater


def _logits(dtype=torch.float32, shape=(3, 37, 53)):
    generator = torch.Generator().manual_seed(0)
    values = (torch.randn(shape, generator=generator) * 2).to(dtype)
    flat = values.view(-1)
    flat[::17] = float("nan")
    flat[5::29] = float("inf")
    flat[7::31] = float("-inf")
    flat[11::13] = 0.1  # exactly the float32 rounding of an inexact threshold
    return values


@pytest.mark.parametrize("threshold", [0.0, 0.1, -1.3, 1e-8, 2.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_greater_equals_torch_comparison(threshold, dtype):
    logits = _logits(dtype)
    ours = greater(logits, threshold)
    assert ours.dtype == torch.bool and ours.shape == logits.shape
    assert torch.equal(ours, logits > threshold)


def test_greater_threshold_is_cast_to_the_logits_dtype_as_torch_does():
    # 0.1 in float32 is above 0.1 in float64: a float64 comparison would call these pixels "greater"
    logits = torch.full((4, 4), 0.1, dtype=torch.float32)
    assert not greater(logits, 0.1).any()
    assert torch.equal(greater(logits, 0.1), logits > 0.1)


def test_greater_on_strided_and_empty_inputs():
    logits = _logits(shape=(4, 40, 60))
    view = logits.transpose(1, 2)[:, ::3, 1::2]
    assert not view.is_contiguous()
    assert torch.equal(greater(view, 0.3), view > 0.3)
    empty = torch.empty(0, 5, 7)
    assert greater(empty, 0.0).shape == (0, 5, 7)


@pytest.mark.parametrize("make", [
    lambda t: t.to(torch.bfloat16),
    lambda t: t.to(torch.float16),
    lambda t: t.clone().requires_grad_(True),
])
def test_greater_outside_numpy_path_still_equals_torch(make):
    logits = make(_logits())
    ours = greater(logits, 0.25)
    assert ours.dtype == torch.bool and not ours.requires_grad
    assert torch.equal(ours, logits > 0.25)


@pytest.mark.parametrize("shape", [(5, 33, 21), (2, 3, 9, 11), (8, 1), (0, 4, 4), (3, 0, 6), (7, 7)])
def test_count_true_equals_torch_sum(shape):
    masks = torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.4
    counts = count_true(masks)
    assert counts.dtype == torch.int32 and counts.shape == shape[:-2]
    assert torch.equal(counts, masks.flatten(-2).sum(-1, dtype=torch.int32))


def test_count_true_strided_view():
    masks = torch.rand(6, 30, 40, generator=torch.Generator().manual_seed(2)) > 0.5
    view = masks.permute(0, 2, 1)[::2, 3:, ::2]
    assert torch.equal(count_true(view), view.flatten(-2).sum(-1, dtype=torch.int32))


def test_count_true_rejects_non_bool_and_flat_inputs():
    with pytest.raises(TypeError, match="masks must be a boolean tensor, got dtype torch.uint8"):
        count_true(torch.ones(2, 3, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"masks must have shape \(\.\.\., H, W\), got 1 dimension"):
        count_true(torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 1, 40), (4, 33, 1), (6, 9)])
def test_any_along_equals_any(shape):
    generator = torch.Generator().manual_seed(len(shape))
    masks = torch.rand(shape, generator=generator) > 0.9
    masks[0] = False  # an empty mask
    for dim in (-1, -2, 0):
        assert torch.equal(any_along(masks, dim), masks.any(dim=dim))
        strided = masks.transpose(-1, -2)  # not contiguous: the byte view keeps the strides
        assert torch.equal(any_along(strided, dim), strided.any(dim=dim))


def test_any_along_over_an_empty_dimension_and_bad_dtype():
    empty = torch.zeros(2, 0, 4, dtype=torch.bool)
    assert torch.equal(any_along(empty, 1), torch.zeros(2, 4, dtype=torch.bool))
    assert any_along(empty, 2).shape == (2, 0)
    with pytest.raises(TypeError, match="masks must be a boolean tensor, got dtype torch.float32"):
        any_along(torch.zeros(2, 3), -1)
