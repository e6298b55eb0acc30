"""`torch.compile` and sam_hf's CPU inference paths.

On a CPU where autograd records nothing, sam_hf's forward passes take paths that the compiler cannot trace and would
not make faster: compiled C++ kernels, oneDNN's fused products called directly, per-thread buffers and kept image work
(`layers.records_nothing`). Traced instead, the same calls would get the reference PyTorch paths, which is the work
transformers does: ViT-B, fp32, 2 threads, one process, Inductor's code against eager sam_hf was 101.8 against 9.6
ms per prompt for 64-prompt decoder calls (transformers 86.0; `benchmarks/bench_decoder.py --impls sam_hf
sam_hf_compiled transformers`) and 39.3 against 30.5 ms per click. So the model's forward, its
`get_image_features` (which `get_image_embeddings` calls) and the forwards of its vision encoder and mask decoder,
when traced for such a call, run outside the graph (a graph break) on those paths, as eager calls do. Elsewhere (other devices, autograd recording) the compiler traces them;
while it traces, the fast paths step aside (`records_nothing` is False, `kernels.kernel` gives None).
"""

from __future__ import annotations

import functools

import torch


def cpu_inference(module: torch.nn.Module) -> bool:
    """Whether a call of `module` would take sam_hf's CPU inference paths: its weights on a CPU, and autograd recording
    nothing on them (any trainable weight counts: fine-tuning the decoder of a frozen encoder is training)."""
    return next(module.parameters()).device.type == "cpu" and not (torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters()))


def eager_on_cpu_inference(forward):
    """Decorator for a method of a module (a forward): while `torch.compile` traces a call of it for CPU inference
    (`cpu_inference`), the call runs eagerly, outside the graph; otherwise (`torch.export` included: an exported program
    is the reference computation, see `sam_hf.export`) as it is."""
    eager = torch.compiler.disable(forward)

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        if torch.compiler.is_compiling() and not torch.compiler.is_exporting() and cpu_inference(self):
            return eager(self, *args, **kwargs)
        return forward(self, *args, **kwargs)

    return wrapper
