"""Whether tensors changed since work derived from them was kept.

sam_hf keeps some work between calls: the mask decoder's fp32 copy of bf16 weights (`bf16_compute.py`), the image-wide
positional grid (`layers.SamHfPositionalEmbedding.grid`) and a caller's `image_cache` (`image_cache.py`). Each must be
remade when what it came from changes. PyTorch's version counters alone miss writes it does not count:
- through `.data` (`p.data.add_(delta)`: PEFT's `merge_and_unload`, hand-written EMA updates), whose tensor has a
  counter of its own;
- by fused optimizers (`torch.optim.AdamW(..., fused=True)`, the default optimizer of transformers' `Trainer`);
- under `torch.inference_mode()`, whose tensors keep no counter at all.

So a `TensorsState` records, besides each tensor's storage, dtype and version counter:
- the number of optimizer steps taken in this process so far (a hook on every `torch.optim` optimizer's step,
  registered when the first state is taken: any step of any optimizer counts);
- on the CPU, the bits of every element of a small tensor (at most `WHOLE` elements) and of about `SAMPLE` elements
  spread over a larger one, read again at each check through views kept from the start (one concatenation and one
  comparison per check: about 0.2 ms for a ViT-B mask decoder's 120 tensors on one Ice Lake core). Not on other
  devices: the comparison's answer would wait for the device's queued work (a host sync in every call).

A write that escapes all of them (through `.data` or under inference mode, outside an optimizer step, touching none of a
large tensor's sampled elements, or any such write on a GPU) is not noticed; `image_cache.clear()` (or a new dict)
always starts afresh.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

WHOLE = 4096  # tensors of at most this many elements are compared whole
SAMPLE = 64  # elements compared of a larger tensor, evenly spread over it
_INTEGER_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

_optimizer_steps = 0
_hook = None


def _count_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def optimizer_steps() -> int:
    """Optimizer steps taken in this process since this was first called (it registers the counting hook)."""
    global _hook
    if _hook is None:
        _hook = register_optimizer_step_post_hook(_count_step)
    return _optimizer_steps


def tensor_version(tensor: torch.Tensor) -> int | None:
    try:
        return tensor._version
    except RuntimeError:  # an inference tensor keeps no version counter
        return None


def _sample(tensor: torch.Tensor) -> torch.Tensor:
    """A view of some of `tensor`'s elements (all of a small one) as integers of the same width, so that bits are
    compared: 1-D for a contiguous tensor, else strided along each dimension (flattened at each check, a copy of the
    sample only)."""
    values = tensor.detach()
    if values.is_complex():
        values = torch.view_as_real(values)
    if values.dim() == 0:
        values = values.reshape(1)
    if values.is_contiguous():
        values = values.view(-1)
        if values.numel() > WHOLE:  # an odd step, so that the samples do not all fall in one column of a matrix
            values = values[:: (values.numel() // SAMPLE) | 1]
    elif values.numel() > WHOLE:
        values = values[tuple(slice(None, None, max(1, size // 4)) for size in values.shape)]
    return values.view(_INTEGER_OF_SIZE[values.element_size()])


def _key(tensors: tuple[torch.Tensor, ...]) -> tuple:
    return optimizer_steps(), tuple((t.data_ptr(), t.dtype, t.device, tensor_version(t)) for t in tensors)


def _read(samples: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([s if s.dim() == 1 else s.reshape(-1) for s in samples]) if samples else torch.empty(0, dtype=torch.uint8)


class TensorsState:
    """What `tensors` (a fixed list, in a fixed order) hold now; `holds(tensors)` tells whether they still do, as far as
    their storage, dtype, device, version counters, the optimizer steps taken and (on the CPU) the compared bits tell
    (see the module's notes)."""

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        tensors = tuple(tensors)
        self._key = _key(tensors)
        self._samples = [_sample(t) for t in tensors if t.numel() > 0 and t.device.type == "cpu"]
        self._bits = _read(self._samples).clone()

    def holds(self, tensors: Sequence[torch.Tensor]) -> bool:
        return _key(tuple(tensors)) == self._key and torch.equal(_read(self._samples), self._bits)
