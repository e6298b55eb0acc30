"""How sam_hf runs inside `torch.autocast` (what Accelerate's `mixed_precision="bf16"` uses): as `mixed_precision()`.

Autocast picks a lower precision op by op; sam_hf picks it per component instead, the split `SamHfModel.mixed_precision`
measures best (README, "Speed and precision"):
- the vision encoder computes in the autocast dtype. Where autograd records nothing (inference, or a frozen encoder)
  it runs its own paths for that dtype (the compiled kernels, the workspace) on its weights cast for the call, as
  autocast casts them (`cast_call`). Where autograd records (training), it takes its reference ops under autocast's
  own rules (matmuls in the autocast dtype, norms and softmax in fp32), and the gradients reach the fp32 weights.
- the prompt encoder, the positional encoding and the mask decoder compute in their weights' dtype with autocast off
  (`in_own_dtype`): their outputs are the ones an fp32 model gives for the same image embeddings.
The paths for calls without autograd call ops that autocast does not cast (in-place, `out=`, compiled kernels); so
`layers.records_nothing` is False under autocast, and only the reference ops run there.
"""

from __future__ import annotations

import functools

import torch
from torch.func import functional_call


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype `torch.autocast` asks for on this device type, or None where it is off."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def in_own_dtype(forward):
    """Decorator for a module's `forward`: run with autocast off on the module's device (its weights' dtype)."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        device_type = next(self.parameters()).device.type
        if not torch.is_autocast_enabled(device_type):
            return forward(self, *args, **kwargs)
        with torch.autocast(device_type, enabled=False):
            return forward(self, *args, **kwargs)

    return wrapper


def cast_call(module: torch.nn.Module, dtype: torch.dtype, *args, **kwargs):
    """`module(*args, **kwargs)` with autocast off, its floating parameters and buffers and the floating tensors among
    `args` cast to `dtype` for this call (the module itself is not changed)."""
    device_type = next(module.parameters()).device.type
    with torch.autocast(device_type, enabled=False):
        tensors = {name: t.to(dtype) if t.is_floating_point() else t for name, t in [*module.named_parameters(), *module.named_buffers()]}
        args = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        return functional_call(module, tensors, args, kwargs)
