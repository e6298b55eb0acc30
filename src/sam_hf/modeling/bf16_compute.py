"""bf16 models on CPUs without bf16 arithmetic: their blocks compute in fp32 from the bf16 weights.

On x86 CPUs without AVX512-BF16 or AMX (Intel before Cooper Lake and Sapphire Rapids, AMD before Zen 4), PyTorch's
bf16 products convert their operands and run at a fraction of fp32's speed (an Ice Lake Xeon, 2 threads: 59 against
150-290 GFLOP/s measured; the bf16 ViT-B encoder took 15.9 s against 7.7 s in fp32, the decoder 41 against 8.6 ms per
prompt). There, where autograd records nothing, a bf16 model's ViT blocks, neck and mask decoder (`@fp32_for_bf16`)
compute in fp32: their floating inputs and weights are cast to fp32 for the call and their floating outputs are
rounded back to bf16. The weights stay bf16 in the model (the mask decoder's small fp32 copy is kept while its
weights are unchanged, as is its fp32 copy of the image embeddings while the same ones come back, so that an
`image_cache` keeps serving; the ViT's weights are cast block by block, call by call), the
activations between blocks and the outputs stay bf16, and the results are closer to fp32's than bf16 arithmetic's.

`SAM_HF_BF16_ARITHMETIC` chooses: `auto` (the default: fp32 where the CPU lacks bf16 arithmetic), `native` (bf16
arithmetic everywhere, as PyTorch runs it) or `fp32` (this path on any CPU; for tests and comparisons). GPUs and
training keep bf16 arithmetic.
"""

from __future__ import annotations

import functools
import os
import platform
import threading
import weakref

import torch
from torch.func import functional_call

from ..kernels.loader import cpu_flags
from .image_cache import tensor_version, weights_key
from .layers import records_nothing
from .module_calls import weights_readable

MODES = ("auto", "native", "fp32")
_ACTIVE = threading.local()  # inside a call this module made: the nested forward runs as it is
# per module: "weights" (key, fp32 tensors) and "inputs" {name: (source ref, version, fp32 copy)}, kept outside the
# module so that copying, pickling or saving it carries none of them
_KEPT: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


@functools.cache
def _cpu_has_bf16_arithmetic() -> bool:
    """x86 with AVX512-BF16 or AMX-BF16; True where that cannot be told (other architectures, no /proc/cpuinfo)."""
    flags = cpu_flags()
    if not flags or platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def bf16_computed_in_fp32(device: torch.device) -> bool:
    """Whether bf16 modules on `device` compute in fp32 here (see the module's notes)."""
    mode = os.environ.get("SAM_HF_BF16_ARITHMETIC", "auto")
    if mode not in MODES:
        raise ValueError(f"SAM_HF_BF16_ARITHMETIC must be one of {MODES}, got {mode!r}")
    if device.type != "cpu" or mode == "native":
        return False
    return mode == "fp32" or not _cpu_has_bf16_arithmetic()


def _cast(value, source: torch.dtype, target: torch.dtype):
    """`value` cast to `target` where it is a tensor of `source` dtype, else as it is. A broadcast tensor stays one:
    its single copy along the zero-stride dims is cast and expanded again (the decoder recognises a dense
    embedding that is the same everywhere, the no-mask one, by its zero strides)."""
    if not (isinstance(value, torch.Tensor) and value.dtype == source):
        return value
    if 0 not in value.stride():
        return value.to(target)
    single = tuple(slice(0, 1) if stride == 0 else slice(None) for stride in value.stride())
    return value[single].to(target).expand(value.shape)


def _cast_outputs(value):
    """A forward's outputs with their fp32 tensors rounded to bf16: a tensor, or tuples of tensors and None."""
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_cast_outputs(item) for item in value)
    return _cast(value, torch.float32, torch.bfloat16)


def _fp32_tensors(module: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """The module's parameters and buffers, bf16 ones cast to fp32: kept on the module (`keep`) and recast only
    when one of them changed (storage or version), else made for this call."""
    named = [*module.named_parameters(), *module.named_buffers()]
    if not keep:
        return {name: t.float() if t.dtype == torch.bfloat16 else t for name, t in named}
    key = weights_key(t for _, t in named)
    kept = _KEPT.setdefault(module, {})
    held = kept.get("weights")
    if held is None or held[0] != key:
        held = kept["weights"] = (key, {name: t.float() if t.dtype == torch.bfloat16 else t for name, t in named})
    return held[1]


def _kept_cast(module: torch.nn.Module, name: str, value):
    """Keyword argument `name` in fp32: the cast kept from the last call when `value` is the same tensor, unchanged
    (so that caches keyed on the input's identity, as `image_cache`, see the same fp32 tensor call after call)."""
    if not (isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16):
        return value
    kept = _KEPT.setdefault(module, {}).setdefault("inputs", {})
    held = kept.get(name)
    if held is not None and held[0]() is value and held[1] == tensor_version(value):
        return held[2]
    cast = value.float()
    kept[name] = (weakref.ref(value), tensor_version(value), cast)
    return cast


def fp32_for_bf16(*, keep_weights: bool, kept_inputs: tuple[str, ...] = ()):
    """Decorator for a module's `forward`: where the module is bf16 on a CPU without bf16 arithmetic and autograd
    records nothing, run it in fp32 (inputs and weights cast for the call) and round its outputs to bf16. With
    `keep_weights` the fp32 weights are kept between calls (for small modules whose calls are many), and so are the
    casts of the keyword arguments named in `kept_inputs` while the same tensor comes back."""

    def decorate(forward):
        @functools.wraps(forward)
        def wrapper(self, *args, **kwargs):
            if getattr(_ACTIVE, "on", False):
                return forward(self, *args, **kwargs)
            weight = next(self.parameters(), None)
            if (
                weight is None or weight.dtype != torch.bfloat16 or not bf16_computed_in_fp32(weight.device)
                or not records_nothing(weight, *[a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)])
                or not weights_readable(self)
            ):
                return forward(self, *args, **kwargs)
            tensors = _fp32_tensors(self, keep_weights)
            # the tensors among the arguments (not inside them: a kept `image_cache` dict is passed as it is)
            args = tuple(_cast(a, torch.bfloat16, torch.float32) for a in args)
            kwargs = {name: _kept_cast(self, name, a) if name in kept_inputs else _cast(a, torch.bfloat16, torch.float32)
                      for name, a in kwargs.items()}
            _ACTIVE.on = True
            try:
                out = functional_call(self, tensors, args, kwargs)
            finally:
                _ACTIVE.on = False
            return _cast_outputs(out)

        return wrapper

    return decorate
