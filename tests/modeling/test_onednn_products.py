"""The oneDNN forms of the model's fp32 products (layers.py) against PyTorch's, and their autograd fallbacks."""
import pytest
import torch
from torch.testing import assert_close

from sam_hf.modeling import layers
from sam_hf.modeling.layers import SamHfLinear, linear_into, matmul_add_shared, matmul_nn, matmul_nt

pytestmark = pytest.mark.skipif(not layers.fused_linear_available(torch.zeros(1)), reason="oneDNN kernels unavailable")


def _tolerance(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 0.1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_nn_matches_bmm(dtype):
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(3, 10, 70, generator=generator).to(dtype)
    right = torch.randn(3, 70, 24, generator=generator).to(dtype)
    expected = left.float() @ right.float()
    with torch.no_grad():
        assert_close(matmul_nn(left, right).float(), expected, **_tolerance(dtype))
        assert_close(matmul_nn(left[:, :4], right).float(), expected[:, :4], **_tolerance(dtype))  # strided rows, as the final attention


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_nt_matches_bmm(dtype):
    generator = torch.Generator().manual_seed(5)
    left = torch.randn(2, 3, 32, generator=generator).to(dtype)
    right = torch.randn(2, 90, 32, generator=generator).to(dtype)
    with torch.no_grad():
        assert_close(matmul_nt(left, right).float(), left.float() @ right.float().transpose(1, 2), **_tolerance(dtype))


@pytest.mark.parametrize("on_onednn", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_add_shared_matches_baddbmm(dtype, on_onednn, monkeypatch):
    monkeypatch.setattr(layers, "_SHARED_ADD_ON_ONEDNN", on_onednn)  # both routes, whatever this CPU is
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(1, 50, 24, generator=generator).to(dtype)
    weights = torch.randn(3, 7, 50, generator=generator).to(dtype)  # stored (N, K, M) like the decoder's softmax weights
    right = torch.randn(3, 7, 24, generator=generator).to(dtype)
    expected = base.float() + weights.float().transpose(1, 2) @ right.float()
    with torch.no_grad():
        out = torch.empty(3, 50, 24, dtype=dtype)
        assert matmul_add_shared(base, weights.transpose(1, 2), right, out=out) is out
        assert_close(out.float(), expected, **_tolerance(dtype))
        assert_close(matmul_add_shared(base, weights.transpose(1, 2), right).float(), expected, **_tolerance(dtype))


def test_products_keep_autograd():
    left, right = torch.randn(2, 4, 5, requires_grad=True), torch.randn(2, 5, 6)
    matmul_nn(left, right).sum().backward()
    assert_close(left.grad, right.sum(2, keepdim=True).transpose(1, 2).expand(2, 4, 5))
    left.grad = None
    matmul_nt(left, right.transpose(1, 2)).sum().backward()
    assert_close(left.grad, right.sum(2, keepdim=True).transpose(1, 2).expand(2, 4, 5))
    base, left = torch.randn(1, 4, 6, requires_grad=True), torch.randn(2, 4, 5)
    matmul_add_shared(base, left, right).sum().backward()
    assert_close(base.grad, torch.full((1, 4, 6), 2.0))


@pytest.mark.parametrize("bias", [True, False])
def test_sam_hf_linear_is_nn_linear(bias):
    torch.manual_seed(2)
    ours = SamHfLinear(24, 40, bias=bias)
    reference = torch.nn.Linear(24, 40, bias=bias)
    reference.load_state_dict(ours.state_dict())
    states = torch.randn(2, 3, 24)
    with torch.no_grad():
        assert_close(ours(states), reference(states), rtol=1e-5, atol=1e-5)
    out = ours(states)  # autograd records: the plain path, with gradients
    out.sum().backward()
    assert ours.weight.grad is not None and out.grad_fn is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_small_fp32_products_skip_onednn(dtype, monkeypatch):
    """fp32 products of few rows onto a small weight go to F.linear (oneDNN's call costs more there); larger ones and
    bf16 stay on oneDNN. Either way the result is F.linear's within rounding, with the activation applied."""
    if not layers.fused_linear_available(torch.zeros(1, dtype=dtype)):  # probed before the spy goes in
        pytest.skip(f"oneDNN's fused linear does not take {dtype} here")
    calls = []
    fused = layers._FUSED_LINEAR
    monkeypatch.setattr(layers, "_FUSED_LINEAR", lambda *args: calls.append(args[0].shape) or fused(*args))
    torch.manual_seed(4)
    weight, bias = torch.randn(256, 256, dtype=dtype), torch.randn(256, dtype=dtype)
    with torch.no_grad():
        for rows, onednn in [(7, dtype == torch.bfloat16), (64, dtype == torch.bfloat16), (65, True)]:
            calls.clear()
            states = torch.randn(rows, 256, dtype=dtype)
            out = layers.linear_activation(states, weight, bias, "relu")
            assert bool(calls) == onednn, (rows, dtype)
            assert_close(out, torch.relu(torch.nn.functional.linear(states, weight, bias)), **_tolerance(dtype))
        calls.clear()
        layers.linear_activation(torch.randn(7, 256, dtype=dtype), torch.randn(2048, 256, dtype=dtype), None, None)
        assert calls  # a wide weight: oneDNN is faster even for few rows


def test_linear_into_in_row_blocks():
    torch.manual_seed(3)
    linear = torch.nn.Linear(16, 48)
    states = torch.randn(2, 37, 16)
    out = torch.empty(2, 37, 48)
    with torch.no_grad():
        assert linear_into(states, linear, out, rows=10) is out  # 74 rows: 7 full blocks and a partial one
        assert_close(out, linear(states), rtol=1e-5, atol=1e-5)


ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"


@pytest.mark.parametrize("text,wide", [
    (ZEN4, False),
    (ZEN4.replace("25", "26"), True),  # Zen 5
    (ZEN4.replace("AuthenticAMD", "GenuineIntel").replace("25", "6"), False),
    ("", False),  # no /proc/cpuinfo
])
def test_wide_avx512_amd_reads_vendor_and_family(text, wide):
    assert layers.wide_avx512_amd(text) is wide


@pytest.mark.parametrize("text,intel", [(ZEN4, False), (ZEN4.replace("AuthenticAMD", "GenuineIntel").replace("25", "6"), True), ("", False)])
def test_intel_cpu_reads_the_vendor(text, intel):
    assert layers.intel_cpu(text) is intel


@pytest.mark.parametrize("on_mkl", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_products_on_either_library(dtype, on_mkl, monkeypatch):
    """`linear_add` and the ViT MLP's fused residual form give the plain layers' result on both routes (MKL for fp32 on
    Intel CPUs, oneDNN elsewhere and for bf16), whatever this CPU is; the MKL route takes no oneDNN call."""
    if not layers.fused_linear_available(torch.zeros(1, dtype=dtype)):  # probed before the spy goes in
        pytest.skip(f"oneDNN's fused linear does not take {dtype} here")
    monkeypatch.setattr(layers, "_FP32_ON_MKL", on_mkl)
    calls = []
    fused = layers._FUSED_LINEAR
    spy = type("Spy", (), {"__call__": lambda self, *a: calls.append("linear") or fused(*a),
                           "binary": lambda self, *a: calls.append("binary") or fused.binary(*a)})()
    monkeypatch.setattr(layers, "_FUSED_LINEAR", spy)
    torch.manual_seed(6)
    mlp = layers.SamHfMLPBlock(hidden_size=32, mlp_dim=96, hidden_act="gelu").to(dtype)
    states, residual = torch.randn(2, 5, 7, 32, dtype=dtype), torch.randn(2, 5, 7, 32, dtype=dtype)
    linear = torch.nn.Linear(32, 32).to(dtype)
    with torch.no_grad():
        expected_add, expected_mlp = residual + linear(states), residual + mlp(states)
        calls.clear()
        added, mlp_out = layers.linear_add(states, linear, residual), mlp.residual_forward(states, residual)
    assert added.shape == mlp_out.shape == residual.shape
    assert_close(added.float(), expected_add.float(), **_tolerance(dtype))
    assert_close(mlp_out.float(), expected_mlp.float(), **_tolerance(dtype))
    assert (calls == []) is (dtype == torch.float32 and on_mkl)
    with torch.no_grad():
        assert layers.onednn_fp32(states) is (dtype == torch.float32 and not on_mkl)
