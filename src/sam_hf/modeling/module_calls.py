"""Wrapped layers: where a component's layers are not sam_hf's own, every layer is called instead of read.

sam_hf's fast paths read weights straight from its layers: they fold projections into one another, fuse a linear layer
with its activation or residual, and hand weights to the compiled kernels. That is exact for sam_hf's own layers, but
it would skip whatever replaces or wraps them: PEFT adapters (LoRA on `qkv`, `q_proj`, `v_proj`, ...), forward hooks,
parametrizations, quantized layers. So the vision encoder and the mask decoder check their layers on every call
(`weights_readable`, about 20-30 us) and, where one is not their own, run with `calling_modules()` active: then
`layers.records_nothing` is False (the reference paths, which call every layer, as where autograd records) and the
decoder's attentions and mask upscaling take Meta's form (`SamHfAttention.by_modules`, `SamHfMaskDecoder.upscale_masks`).
"""

from __future__ import annotations

import functools

from torch import nn
from torch.nn.modules import module as torch_module

from .thread_flag import ThreadFlag

# torch building blocks that sam_hf instantiates, read by its fast paths exactly as torch computes them
_BUILDING_BLOCKS = (nn.Linear, nn.LayerNorm, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding, nn.ModuleList)
_OWN: dict[type, bool] = {}
_CALLING = ThreadFlag()  # calling_modules()


def _own(cls: type) -> bool:
    """sam_hf's classes (installed, or flattened into Hub remote code as `sam_hf_*` modules) and `_BUILDING_BLOCKS`."""
    verdict = _OWN.get(cls)
    if verdict is None:
        verdict = _OWN[cls] = cls in _BUILDING_BLOCKS or ".sam_hf" in "." + cls.__module__
    return verdict


def _readable(module: nn.Module) -> bool:
    if module._forward_hooks or module._forward_pre_hooks:
        return False
    if not _own(type(module)) and (module._parameters or module._buffers or module._modules):
        return False  # a stateless leaf (an activation, a dropout) holds nothing to read (SamHfMLPBlock checks its `act`)
    return all(child is None or _readable(child) for child in module._modules.values())  # None: a slot left empty


def weights_readable(module: nn.Module) -> bool:
    """True where the fast paths may read `module`'s weights: every submodule is sam_hf's own or a torch building block
    (or a stateless leaf), none has forward hooks, and no global module hook is registered."""
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return False
    return _readable(module)


def active() -> bool:
    """Whether this thread runs inside `calling_modules()`. (`torch.export` traces sam_hf's own PyTorch paths, as
    `torch.compile` does: see `sam_hf.export`.)"""
    return _CALLING()


def calling_modules():
    """Within this context (in this thread) sam_hf calls every layer instead of reading its weights."""
    return _CALLING.on()


def when_wrapped(forward):
    """Decorator for a component's `forward`: inside `calling_modules()` when its layers are not all readable."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        if active() or weights_readable(self):
            return forward(self, *args, **kwargs)
        with calling_modules():
            return forward(self, *args, **kwargs)

    return wrapper
