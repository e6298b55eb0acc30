"""The ViT attention with relative positions where autograd records on a CPU (`relpos_training`): Meta's formula and
its gradients, whichever blocks the backward pass takes, with the compiled forward kernel and without it."""

import pytest
import torch
from torch.testing import assert_close

from sam_hf import kernels
from sam_hf.kernels import kernel, unavailable_reason
from sam_hf.modeling import attention, relpos_training
from sam_hf.modeling.attention import decomposed_rel_pos, eager_attention_with_rel_pos, grid_attention


def _inputs(groups, heads, size, head_dim, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    length = size[0] * size[1]
    qkv = [torch.randn(groups, heads, length, head_dim, generator=generator, dtype=dtype) for _ in range(3)]
    tables = [torch.randn(2 * n - 1, head_dim, generator=generator, dtype=dtype) * 0.5 for n in size]
    return [t.requires_grad_() for t in (*qkv, *tables)]


def _through(function, inputs, size, scale, grad_out):
    """Output and the gradients of query, key, value and both tables, relative positions by `decomposed_rel_pos`."""
    for t in inputs:
        t.grad = None
    query, key, value, table_h, table_w = inputs
    rel_h, rel_w = decomposed_rel_pos(query, table_h, table_w, size)
    out = function(query, key, value, rel_h, rel_w, scale=scale, size=size)
    out.backward(grad_out)
    return [out.detach(), *(t.grad.clone() for t in inputs)]


def _eager(query, key, value, rel_h, rel_w, *, scale, size):
    return eager_attention_with_rel_pos(query, key, value, scale=scale, rel_h=rel_h, rel_w=rel_w, size=size)[0]


@pytest.fixture(params=["kernel", "pytorch"])
def forward_path(request):
    """The forward pass by the compiled kernel (fp32 on AVX512-BF16 CPUs) and by PyTorch's blocks."""
    if request.param == "pytorch":
        with kernels.disabled():
            yield request.param
        return
    if kernel("relpos_attention") is None:
        pytest.skip(f"the relpos_attention kernel cannot be used here: {unavailable_reason('relpos_attention')}")
    yield request.param


@pytest.mark.parametrize("block_elements", [1 << 21, 40, 700])  # one block; a few rows each; several whole groups each
def test_gradcheck_in_float64(monkeypatch, block_elements):
    monkeypatch.setattr(relpos_training, "BLOCK_ELEMENTS", block_elements)
    query, key, value, table_h, table_w = _inputs(2, 2, (3, 4), 4, torch.float64)
    rel_h, rel_w = (t.detach().requires_grad_() for t in decomposed_rel_pos(query, table_h, table_w, (3, 4)))
    function = lambda q, k, v, h, w: relpos_training.rel_pos_attention(q, k, v, h, w, scale=0.7, size=(3, 4))  # noqa: E731
    assert torch.autograd.gradcheck(function, (query, key, value, rel_h, rel_w))


@pytest.mark.parametrize(
    "groups, heads, size, head_dim",
    [
        (1, 2, (64, 64), 64),  # ViT-B's global grid: row blocks of one head
        (6, 3, (14, 14), 64),  # windows: whole groups per block
        (2, 1, (9, 13), 16),  # a grid that is not square
    ],
)
def test_matches_eager_formula_and_its_gradients_in_fp32(forward_path, monkeypatch, groups, heads, size, head_dim):
    if size == (64, 64):  # several row blocks, as for ViT-B at full size, without ViT-B's memory
        monkeypatch.setattr(relpos_training, "BLOCK_ELEMENTS", 1 << 20)
    inputs = _inputs(groups, heads, size, head_dim, torch.float32)
    grad_out = torch.randn(groups, heads, size[0] * size[1], head_dim, generator=torch.Generator().manual_seed(1))
    scale = head_dim**-0.5
    expected = _through(_eager, inputs, size, scale, grad_out)
    got = _through(relpos_training.rel_pos_attention, inputs, size, scale, grad_out)
    for name, a, b in zip(["out", "query", "key", "value", "rel_pos_h", "rel_pos_w"], got, expected):
        assert_close(a, b, rtol=1e-4, atol=2e-5 * b.abs().max().item(), msg=name)


def test_grid_attention_takes_it_on_cpu(monkeypatch):
    calls = []
    original = relpos_training.rel_pos_attention
    monkeypatch.setattr(attention, "rel_pos_attention", lambda *a, **k: calls.append(a[0].dtype) or original(*a, **k))
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        query, key, value, table_h, table_w = _inputs(1, 2, (4, 4), 8, dtype)
        out, _ = grid_attention(query, key, value, scale=0.3, size=(4, 4), rel_pos_h=table_h, rel_pos_w=table_w)
        out.sum().backward()
        assert out.dtype == dtype and key.grad.dtype == dtype and table_w.grad is not None
    assert calls == [torch.float32, torch.float64, torch.bfloat16]


def _leaves(groups, heads, size, head_dim, dtype):
    """query, key, value and the relative-position terms as leaf tensors (B', heads, L, .)."""
    query, key, value, table_h, table_w = _inputs(groups, heads, size, head_dim, torch.float32)
    rel_h, rel_w = decomposed_rel_pos(query, table_h, table_w, size)
    return [t.detach().to(dtype).requires_grad_() for t in (query, key, value, rel_h, rel_w)]


def _attend(leaves, size, scale, grad_out):
    for t in leaves:
        t.grad = None
    out = relpos_training.rel_pos_attention(*leaves, scale=scale, size=size)
    out.backward(grad_out)
    return [out.detach(), *(t.grad.clone() for t in leaves)]


def test_bf16_is_computed_in_fp32(forward_path):
    """bf16 inputs: the fp32 result of the same (bf16-valued) inputs rounded once to bf16, gradients likewise."""
    size = (14, 14)
    leaves = _leaves(2, 3, size, 64, torch.bfloat16)
    grad_out = torch.randn(2, 3, 196, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    got = _attend(leaves, size, 0.125, grad_out)
    expected = _attend([t.detach().float().requires_grad_() for t in leaves], size, 0.125, grad_out.float())
    for a, b in zip(got, expected):
        assert a.dtype == torch.bfloat16
        assert_close(a, b.to(torch.bfloat16), rtol=0, atol=0)


def test_autocast_leaves_its_products_in_fp32():
    """Inside torch.autocast (Accelerate's mixed precision) the blocks' matmuls stay fp32, backward pass included."""
    size = (9, 13)
    leaves = _leaves(2, 1, size, 16, torch.float32)
    grad_out = torch.randn(2, 1, 117, 16, generator=torch.Generator().manual_seed(1))
    with kernels.disabled():  # the PyTorch blocks, the ones autocast would otherwise cast
        plain = _attend(leaves, size, 0.25, grad_out)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = _attend(leaves, size, 0.25, grad_out)
    for a, b in zip(cast, plain):
        assert_close(a, b, rtol=0, atol=0)


def test_eager_and_attention_weights_keep_the_explicit_form(monkeypatch):
    monkeypatch.setattr(attention, "rel_pos_attention", lambda *a, **k: pytest.fail("explicit weights wanted"))
    query, key, value, table_h, table_w = _inputs(1, 2, (4, 4), 8, torch.float32)
    for implementation, weights in (("eager", False), ("sdpa", True)):
        _, got = grid_attention(query, key, value, scale=0.3, size=(4, 4), rel_pos_h=table_h, rel_pos_w=table_w,
                                implementation=implementation, output_attentions=weights)
        assert (got is not None) == weights


def test_shapes_that_do_not_fit_the_grid_are_refused():
    query, key, value, table_h, table_w = _inputs(1, 2, (4, 4), 8, torch.float32)
    rel_h, rel_w = decomposed_rel_pos(query, table_h, table_w, (4, 4))
    with pytest.raises(ValueError, match=r"grid of \(4, 5\)"):
        relpos_training.rel_pos_attention(query, key, value, rel_h, rel_w, scale=0.3, size=(4, 5))
    with pytest.raises(ValueError, match="rel_w"):
        relpos_training.rel_pos_attention(query, key, value, rel_h, rel_w[..., :3], scale=0.3, size=(4, 4))


def test_other_devices_and_integer_tensors_are_not_claimed():
    assert relpos_training.rel_pos_attention_usable(torch.zeros(1, dtype=torch.float16))
    assert not relpos_training.rel_pos_attention_usable(torch.zeros(1, dtype=torch.int32))
    assert not relpos_training.rel_pos_attention_usable(torch.zeros(1, device="meta"))
