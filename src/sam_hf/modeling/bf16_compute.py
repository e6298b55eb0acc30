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
For the call the fp32 tensors take the weights' places in the modules' own dicts, as `torch.func.functional_call`
does, and the weights are put back after it; found by one walk of those dicts, without functional_call's name
lookups (a bf16 click on the shipped model, same process, Ice Lake: 20.4 -> 15.4 ms; ViT-B 29.6 -> 26.5 ms).

`SAM_HF_BF16_ARITHMETIC` chooses: `auto` (the default: fp32 where the CPU lacks bf16 arithmetic), `native` (bf16
arithmetic everywhere, as PyTorch runs it) or `fp32` (this path on any CPU; for tests and comparisons). GPUs and
training keep bf16 arithmetic.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import threading
import weakref

import torch

from ..kernels.loader import cpu_flags
from .layers import records_nothing
from .module_calls import weights_readable
from .tensor_state import TensorsState

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


def _slots(module: torch.nn.Module) -> list[tuple[dict, str, torch.Tensor]]:
    """Every parameter and buffer slot in `module`'s tree: (the dict that holds it, its name, its tensor), in a fixed
    order. One walk of the modules' own dicts: `named_parameters` and `named_buffers` build prefixed names through
    nested generators, about a millisecond per decoder call on a 2.8 GHz Ice Lake core."""
    slots, seen, stack = [], set(), [module]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for store in (current._parameters, current._buffers):
            slots.extend((store, name, tensor) for name, tensor in store.items() if tensor is not None)
        stack.extend(child for child in reversed(current._modules.values()) if child is not None)
    return slots


def _fp32_copies(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors with bf16 ones cast to fp32; a tensor held in two slots (tied weights) gets one copy."""
    copies: dict[int, torch.Tensor] = {}
    return [copies.setdefault(id(t), t.float() if t.dtype == torch.bfloat16 else t) for t in tensors]


def _fp32_tensors(module: torch.nn.Module, slots: list, keep: bool) -> list[torch.Tensor]:
    """The fp32 tensors for `slots` (`_slots(module)`): kept beside the module (`keep`) and recast only when one of
    its tensors changed (`tensor_state.py`), else made for this call."""
    tensors = [tensor for _, _, tensor in slots]
    if not keep:
        return _fp32_copies(tensors)
    kept = _KEPT.setdefault(module, {})
    held = kept.get("weights")
    if held is None or not held[0].holds(tensors):
        held = kept["weights"] = (TensorsState(tensors), _fp32_copies(tensors))
    return held[1]


@contextlib.contextmanager
def _swapped(slots: list, tensors: list[torch.Tensor]):
    """Within this context each slot holds its tensor from `tensors` (as `torch.func.functional_call` swaps them, by
    the modules' own dicts, without its name lookups); the originals are put back on the way out, error or not."""
    for (store, name, _), tensor in zip(slots, tensors):
        store[name] = tensor
    try:
        yield
    finally:
        for store, name, original in slots:
            store[name] = original


def call_in_fp32(module: torch.nn.Module, forward, slots: list, tensors: list[torch.Tensor], args: tuple, kwargs: dict):
    """`forward(module, *args, **kwargs)` with `module`'s slots holding `tensors` (the decorator's fp32 call)."""
    with _swapped(slots, tensors):
        return forward(module, *args, **kwargs)


def _kept_cast(module: torch.nn.Module, name: str, value):
    """Keyword argument `name` in fp32: the cast kept from the last call when `value` is the same tensor, unchanged
    (so that caches keyed on the input's identity, as `image_cache`, see the same fp32 tensor call after call)."""
    if not (isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16):
        return value
    kept = _KEPT.setdefault(module, {}).setdefault("inputs", {})
    held = kept.get(name)
    if held is not None and held[0]() is value and held[1].holds((value,)):
        return held[2]
    cast = value.float()
    kept[name] = (weakref.ref(value), TensorsState((value,)), cast)
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
            slots = _slots(self)
            tensors = _fp32_tensors(self, slots, keep_weights)
            # the tensors among the arguments (not inside them: a kept `image_cache` dict is passed as it is)
            args = tuple(_cast(a, torch.bfloat16, torch.float32) for a in args)
            kwargs = {name: _kept_cast(self, name, a) if name in kept_inputs else _cast(a, torch.bfloat16, torch.float32)
                      for name, a in kwargs.items()}
            _ACTIVE.on = True
            try:
                out = call_in_fp32(self, forward, slots, tensors, args, kwargs)
            finally:
                _ACTIVE.on = False
            return _cast_outputs(out)

        return wrapper

    return decorate
