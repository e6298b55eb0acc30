"""Small reusable layers: the MLPs, channels-first LayerNorm, the random Fourier position encoding, and
the per-thread workspace that keeps large temporaries between calls when autograd records nothing."""

from __future__ import annotations

import functools
import math
import re
import threading
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .autocast import in_own_dtype
from .module_calls import active as calling_modules
from .tensor_state import TensorsState


_WORKSPACE = threading.local()
_WORKSPACE_ENTRIES = 24


def workspace(
    tag: str, shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device, init: Callable[[torch.Tensor], None] | None = None
) -> torch.Tensor:
    """A tensor of this thread for temporaries, created once per (tag, shape, dtype, device) and returned
    again on later calls (uninitialised, or as `init` left it the first time: callers rewrite what varies).
    At most `_WORKSPACE_ENTRIES` are kept; the least recently used goes first.

    Reusing memory avoids the page faults that a fresh large allocation costs on every call with glibc.
    Only for code where autograd records nothing; `clear_workspace()` releases it.
    """
    entries = getattr(_WORKSPACE, "entries", None)
    if entries is None:
        entries = _WORKSPACE.entries = {}
    key = (tag, tuple(shape), dtype, str(device), torch.is_inference_mode_enabled())
    tensor = entries.pop(key, None)  # re-inserted last: the least recently used entry goes first when full
    if tensor is None:
        while len(entries) >= _WORKSPACE_ENTRIES:
            entries.pop(next(iter(entries)))
        tensor = torch.empty(shape, dtype=dtype, device=device)
        if init is not None:
            init(tensor)
    entries[key] = tensor
    return tensor


def autograd_records(*tensors: torch.Tensor) -> bool:
    """True when autograd records ops on these tensors (grad enabled, and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def records_nothing(*tensors: torch.Tensor) -> bool:
    """True where the paths for calls without autograd may run: autograd records no op on these tensors, `torch.autocast`
    is off on their device (those paths call ops that autocast does not cast; see autocast.py), the layers are
    sam_hf's own (those paths read their weights; see module_calls.py), and `torch.compile` is not tracing the call
    (those paths call oneDNN's ops directly, which Inductor cannot lower, and reuse per-thread buffers: the compiler
    gets the reference paths, see `kernels.loader.kernel`)."""
    return (not torch.compiler.is_compiling() and not autograd_records(*tensors) and not torch.is_autocast_enabled(tensors[0].device.type)
            and not calling_modules())


def layer_norm_into(norm: nn.LayerNorm, states: torch.Tensor, out: torch.Tensor, *, rows: int = 1024) -> torch.Tensor:
    """`norm(states)` written into `out` (contiguous, same shape) `rows` rows at a time: the same values (the
    norm treats each row on its own) with one block of new memory instead of a tensor of the full size."""
    flat_in, flat_out = states.reshape(-1, states.shape[-1]), out.view(-1, out.shape[-1])
    for start in range(0, flat_in.shape[0], rows):
        flat_out[start : start + rows] = F.layer_norm(flat_in[start : start + rows], norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return out


def clear_workspace() -> None:
    """Release the temporaries this thread keeps (see `workspace`)."""
    _WORKSPACE.entries = {}


# oneDNN's fused CPU kernels (the ones torch.compile uses): linear + activation and linear + residual
# add in one pass over the output. Used where autograd records nothing, on CPU fp32/bf16, when present.
_ONEDNN_ACTIVATIONS = {"gelu": ("gelu", "none"), "relu": ("relu", ""), "silu": ("swish", "")}
# the same activations (ACT2FN's: the erf GELU) applied in place, after an MKL product
_IN_PLACE_ACTIVATIONS = {"gelu": torch.ops.aten.gelu_, "relu": torch.relu_, "silu": lambda t: F.silu(t, inplace=True)}


def _onednn_linear():
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_FUSED_LINEAR = _onednn_linear()
_FUSED_LINEAR_WORKS: dict[torch.dtype, bool] = {}


def _probe(dtype: torch.dtype) -> bool:
    """Whether the fused kernels run and agree with F.linear for this dtype (bf16 needs CPU support)."""
    try:
        inputs, weight, bias = torch.randn(4, 8), torch.randn(16, 8), torch.randn(16)
        expected = F.linear(inputs.to(dtype), weight.to(dtype), bias.to(dtype)).float()
        fused = _FUSED_LINEAR(inputs.to(dtype), weight.to(dtype), bias.to(dtype), "none", [], "").float()
        added = _FUSED_LINEAR.binary(inputs.to(dtype), expected.to(dtype), weight.to(dtype), bias.to(dtype), "add").float()
        return torch.allclose(fused, expected, rtol=1e-2, atol=1e-2) and torch.allclose(added, 2 * expected, rtol=1e-2, atol=2e-2)
    except (RuntimeError, NotImplementedError):
        return False


def fused_linear_available(tensor: torch.Tensor) -> bool:
    """True where oneDNN's fused linear kernels serve this tensor: CPU, fp32 or bf16, probed once per dtype."""
    if (_FUSED_LINEAR is None or tensor.device.type != "cpu" or tensor.dtype not in (torch.float32, torch.bfloat16)
            or torch.compiler.is_compiling()):  # Inductor cannot lower these ops on weights it has not frozen
        return False
    if tensor.dtype not in _FUSED_LINEAR_WORKS:
        with torch.inference_mode():
            _FUSED_LINEAR_WORKS[tensor.dtype] = _probe(tensor.dtype)
    return _FUSED_LINEAR_WORKS[tensor.dtype]


# fp32 products of at most this many rows onto a weight of at most this many values go to F.linear: oneDNN's call
# costs more there (two Zen 4 cores, 7 rows: 256 -> 256 27 against 16 us, 256 -> 128 21 against 9, 256 -> 32 17
# against 5; 256 -> 2048 it is faster, 120 against 165; bf16 oneDNN is as fast or faster everywhere)
_FEW_ROWS, _SMALL_WEIGHT = 64, 256 * 256


def _few_fp32_rows(hidden_states: torch.Tensor, weight: torch.Tensor) -> bool:
    return hidden_states.dtype == torch.float32 and weight.numel() <= _SMALL_WEIGHT and hidden_states.numel() <= _FEW_ROWS * weight.shape[1]


def linear_activation(hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None) -> torch.Tensor:
    """`act(F.linear(hidden_states, weight, bias))` for act in {None, "gelu", "relu", "silu"}; one fused kernel on
    CPU where autograd records nothing (the erf GELU, as F.gelu), except for small fp32 products (`_FEW_ROWS`)."""
    if (fused_linear_available(hidden_states) and records_nothing(hidden_states, weight) and weight.dtype == hidden_states.dtype
            and not _few_fp32_rows(hidden_states, weight)):
        algorithm, attribute = _ONEDNN_ACTIVATIONS[activation] if activation else ("none", "")
        return _FUSED_LINEAR(hidden_states, weight.contiguous(), bias, algorithm, [], attribute)
    out = F.linear(hidden_states, weight, bias)
    return ACT2FN[activation](out) if activation else out


def onednn_fp32(*tensors: torch.Tensor) -> bool:
    """fp32 products go through oneDNN (one per batch entry) on CPU where autograd records nothing, except on Intel
    CPUs (`_FP32_ON_MKL`): on AMD CPUs MKL's sgemm does not use AVX-512 (one Zen 5 core: about 100 GFLOP/s for MKL's
    batched gemm against 170-230 for oneDNN on the decoder's shapes); MKL's bf16 is as fast as oneDNN's and is kept."""
    return (not _FP32_ON_MKL and tensors[0].dtype == torch.float32 and fused_linear_available(tensors[0])
            and records_nothing(*tensors))


def onednn_linear(hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` by oneDNN (callers check `onednn_fp32` or `fused_linear_available`); `weight` may be a transposed view."""
    return _FUSED_LINEAR(hidden_states, weight, bias, "none", [], "")


def add_matmul_nt_(out: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """out (N, M, L) += left (N, M, K) @ right (N, L, K)^T, in place (oneDNN in fp32, see `onednn_fp32`)."""
    if onednn_fp32(out, left, right):
        for index in range(out.shape[0]):
            out[index] = _FUSED_LINEAR.binary(left[index], out[index], right[index], None, "add")
        return out
    return out.baddbmm_(left, right.transpose(1, 2))


def matmul_nn(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left (N, M, K) @ right (N, K, L) -> (N, M, L); in fp32 one oneDNN product per batch entry, `right` read through
    its transpose as the weight (no copy), see `onednn_fp32`."""
    if not onednn_fp32(left, right):
        return left @ right
    out = left.new_empty(left.shape[0], left.shape[1], right.shape[2])
    for index in range(out.shape[0]):
        out[index] = onednn_linear(left[index], right[index].t())
    return out


def matmul_nt(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left (N, M, K) @ right (N, L, K)^T -> (N, M, L); in fp32 one oneDNN product per batch entry, `right` as the
    weight (the mask upscaling's (3, 32) x (32, 8,192) hypernetwork products: 0.10 vs 0.19 ms), see `onednn_fp32`."""
    if not onednn_fp32(left, right):
        return torch.bmm(left, right.transpose(1, 2))
    out = left.new_empty(left.shape[0], left.shape[1], right.shape[1])
    for index in range(out.shape[0]):
        out[index] = onednn_linear(left[index], right[index])
    return out


def _cpuinfo_field(cpuinfo: str, name: str) -> str | None:
    """The first value of field `name` in /proc/cpuinfo's text (its first word), or None."""
    found = re.search(rf"^{re.escape(name)}\s*:\s*(\S+)", cpuinfo, re.MULTILINE)
    return found.group(1) if found else None


def wide_avx512_amd(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text describes an AMD CPU with 512-bit vector datapaths (Zen 5, family 0x1A, and
    later). MKL runs its AVX2 sgemm on AMD CPUs: half of oneDNN's AVX-512 speed there, but no loss on Zen 4 and
    older, which execute AVX-512 256 bits at a time."""
    family = _cpuinfo_field(cpuinfo, "cpu family")
    return _cpuinfo_field(cpuinfo, "vendor_id") == "AuthenticAMD" and family is not None and family.isdigit() and int(family) >= 0x1A


def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            return file.read(1 << 16)
    except OSError:  # not Linux
        return ""


def intel_cpu(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text describes an Intel CPU, where MKL's sgemm runs its own AVX-512 code."""
    return _cpuinfo_field(cpuinfo, "vendor_id") == "GenuineIntel"


# fp32 products on Intel CPUs go to MKL (`onednn_fp32`, `linear_add`, the ViT MLP), on others to oneDNN. An Ice Lake
# Xeon, 2 threads, the ViT-B encoder in fp32, same process, 8 interleaved runs each: median 5.21 s (oneDNN) against
# 4.50 s (MKL), faster in every pair (the qkv projection 207 vs 172 GFLOP/s, the attention output with its residual
# 11% faster, the MLP's first layer and GELU 7%, its second layer with the residual the same).
_FP32_ON_MKL = intel_cpu(_read_cpuinfo())

# MKL's `baddbmm` writes the shared-side product straight into its output; oneDNN's returns a new tensor that is
# then copied, and reads the transposed softmax weights through a copy. One Zen 4 core, ViT-B, 64 prompts: the
# decoder without upscaling 18.6-19.4 (oneDNN) vs 17.7-17.9 ms per prompt (MKL); on Zen 5 oneDNN's 149 vs 104 GFLOP/s.
_SHARED_ADD_ON_ONEDNN = wide_avx512_amd(_read_cpuinfo())


def matmul_add_shared(base: torch.Tensor, left: torch.Tensor, right: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """base (1, M, L) + left (N, M, K) @ right (N, K, L) -> (N, M, L) (into `out` when given): the shared image side
    plus each prompt's update; `baddbmm`, except in fp32 on AMD CPUs with full-width AVX-512 (`wide_avx512_amd`),
    where one oneDNN product per batch entry with the add fused is faster."""
    if not (_SHARED_ADD_ON_ONEDNN and onednn_fp32(left, right, base)):
        return torch.baddbmm(base, left, right, out=out)
    out = left.new_empty(left.shape[0], left.shape[1], right.shape[2]) if out is None else out
    for index in range(out.shape[0]):
        out[index] = _FUSED_LINEAR.binary(left[index], base[0], right[index].t(), None, "add")
    return out


def linear_add(hidden_states: torch.Tensor, linear: nn.Linear, residual: torch.Tensor) -> torch.Tensor:
    """residual + linear(hidden_states) as a new tensor: on CPU where autograd records nothing one fused oneDNN kernel,
    or in fp32 on Intel CPUs (`_FP32_ON_MKL`) MKL's `addmm` onto the residual, then the bias."""
    if fused_linear_available(hidden_states) and records_nothing(hidden_states, linear.weight, residual):
        if hidden_states.dtype == torch.float32 and _FP32_ON_MKL:
            flat = hidden_states.reshape(-1, linear.in_features)
            out = torch.addmm(residual.reshape(-1, linear.out_features), flat, linear.weight.t())
            return (out if linear.bias is None else out.add_(linear.bias)).view(residual.shape)
        return _FUSED_LINEAR.binary(hidden_states, residual, linear.weight, linear.bias, "add")
    return linear(hidden_states).add_(residual)


def linear_into(hidden_states: torch.Tensor, linear: nn.Linear, out: torch.Tensor, *, rows: int = 4096) -> torch.Tensor:
    """linear(hidden_states (..., in)) written into `out` (..., out_features), both contiguous. In fp32 on CPU where
    autograd records nothing, oneDNN `rows` rows at a time (see `onednn_fp32`; a block of new memory, not a tensor
    of the full size); otherwise one `addmm` into `out`."""
    flat_in, flat_out = hidden_states.view(-1, linear.in_features), out.view(-1, linear.out_features)
    if onednn_fp32(flat_in, linear.weight):
        for start in range(0, flat_in.shape[0], rows):
            flat_out[start : start + rows] = onednn_linear(flat_in[start : start + rows], linear.weight, linear.bias)
    elif linear.bias is None:
        torch.mm(flat_in, linear.weight.t(), out=flat_out)
    else:
        torch.addmm(linear.bias, flat_in, linear.weight.t(), out=flat_out)
    return out


class SamHfLinear(nn.Linear):
    """`nn.Linear` (same parameters, names and initialisation) computed by oneDNN on a CPU where autograd records
    nothing (`linear_activation`): in fp32 about twice MKL's speed on AMD CPUs, whose AVX-512 MKL leaves unused."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return linear_activation(hidden_states, self.weight, self.bias, None)


@functools.cache
def _activation_type(name: str) -> type:
    """The class of the activation module ACT2FN makes for `name`: what the fused kernels compute for it."""
    return type(ACT2FN[name])


class SamHfMLPBlock(nn.Module):
    """Two linear layers with an activation between them (the ViT and two-way-transformer MLP)."""

    def __init__(self, *, hidden_size: int, mlp_dim: int, hidden_act: str) -> None:
        super().__init__()
        self.lin1 = SamHfLinear(hidden_size, mlp_dim)
        self.lin2 = SamHfLinear(mlp_dim, hidden_size)
        self.act = ACT2FN[hidden_act]
        self.hidden_act = hidden_act

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(hidden_states)))

    def residual_forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + MLP(hidden_states) as a new tensor; fused kernels where autograd records nothing and `act` is
        still the activation the block made for `hidden_act` (one swapped in, stateless or not, is called)."""
        fused = _ONEDNN_ACTIVATIONS.get(self.hidden_act)
        if (fused is None or not records_nothing(hidden_states, residual, *self.parameters()) or not fused_linear_available(hidden_states)
                or type(self.act) is not _activation_type(self.hidden_act)):
            return residual + self.forward(hidden_states)
        if hidden_states.dtype == torch.float32 and _FP32_ON_MKL:  # MKL's product, then the activation in place
            flat = hidden_states.reshape(-1, self.lin1.in_features)
            inner = flat @ self.lin1.weight.t() if self.lin1.bias is None else torch.addmm(self.lin1.bias, flat, self.lin1.weight.t())
            inner = _IN_PLACE_ACTIVATIONS[self.hidden_act](inner)  # (N, mlp_dim)
            return linear_add(inner, self.lin2, residual)
        inner = _FUSED_LINEAR(hidden_states, self.lin1.weight, self.lin1.bias, fused[0], [], fused[1])  # (..., mlp_dim)
        return linear_add(inner, self.lin2, residual)


class SamHfFeedForward(nn.Module):
    """`num_layers` linear layers with ReLU between them: the hypernetwork MLPs and the IoU head.

    Weight names follow transformers: `proj_in`, `layers.{i}` (the middle ones), `proj_out`.
    """

    def __init__(self, *, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.proj_in = SamHfLinear(input_dim, hidden_dim)
        self.layers = nn.ModuleList([SamHfLinear(hidden_dim, hidden_dim) for _ in range(num_layers - 2)])
        self.proj_out = SamHfLinear(hidden_dim, output_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = F.relu(self.proj_in(hidden_states))
        for layer in self.layers:
            hidden_states = F.relu(layer(hidden_states))
        return self.proj_out(hidden_states)


class SamHfLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states.permute(0, 2, 3, 1)  # (B, H, W, C)
        hidden_states = F.layer_norm(hidden_states, self.normalized_shape, self.weight, self.bias, self.eps)
        return hidden_states.permute(0, 3, 1, 2)  # (B, C, H, W)


class SamHfPositionalEmbedding(nn.Module):
    """Random Fourier features of 2-D coordinates, shared by the prompt encoder and the image grid.

    `positional_embedding` is the (2, F) Gaussian matrix; an (x, y) in [0, 1]^2 maps to
    [sin(2 pi (2xy - 1) G), cos(...)] of size 2F, the prompt dimension.
    """

    def __init__(self, *, num_pos_feats: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(2, num_pos_feats))

    @in_own_dtype
    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (..., 2) normalised to [0, 1] -> (..., 2F)."""
        coords = (2 * coords - 1).to(self.positional_embedding.dtype) @ self.positional_embedding
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def encode_points(self, points: torch.Tensor, image_size: int) -> torch.Tensor:
        """points (..., 2) as x, y pixels of the square model input -> (..., 2F)."""
        return self(points / image_size)

    def grid(self, size: int) -> torch.Tensor:
        """Encoding of the centres of a size x size grid -> (2F, size, size). With grad disabled (no_grad or
        inference mode) the result is kept for the next such call until the Gaussian matrix changes (another
        tensor, dtype or device, or its values: `tensor_state.py`); callers do not write to it. Not kept while
        `torch.compile` traces the call (the compiled graph computes it)."""
        weight = self.positional_embedding
        if torch.compiler.is_compiling() or torch.is_grad_enabled():
            return self._grid(size)
        key = (size, torch.is_inference_mode_enabled())
        cached = getattr(self, "_grid_cache", None)
        if cached is not None and cached[0] == key and cached[1].holds((weight,)):
            return cached[2]
        self._grid_cache = (key, TensorsState((weight,)), self._grid(size))
        return self._grid_cache[2]

    def _grid(self, size: int) -> torch.Tensor:
        centres = (torch.arange(size, device=self.positional_embedding.device, dtype=torch.float32) + 0.5) / size
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        return self(torch.stack([x, y], dim=-1)).permute(2, 0, 1)  # (2F, size, size)
