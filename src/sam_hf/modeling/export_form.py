"""Which form of the mask upscaling an exported decoder program holds (`sam_hf.export`).

The eager model's CPU kernels stay out of exported programs, which hold sam_hf's PyTorch paths. For the mask upscaling
there are two, the same arithmetic:

- the linear form (`upscaling_linear.py`: both transposed convolutions as products on channels-last pixels), in
  `torch.export` programs. A program with a convolution in it would have Inductor (AOTInductor, `torch.compile` of the
  program) lay out every 4-D tensor upstream of that convolution channels-last, among them the decoder's (B, P, HW, C)
  image tokens, with the prompt axis innermost; every later product then copies them per prompt. ViT-B, 64 prompts
  per call, AOTInductor: 21.6 ms per prompt in the linear form against 115-152 with the convolutions.
- Meta's form (`SamHfMaskDecoder._upscale_by_modules`: the two `ConvTranspose2d` layers), in ONNX files
  (`with_convolutions()`, entered by `export_onnx`): onnxruntime's transposed convolution is faster there than the
  products of the linear form for one prompt per call (ViT-B: 34.9-39.5 against 39.4-46.6 ms), about the same for 64.
"""

from __future__ import annotations

from .thread_flag import ThreadFlag

_CONVOLUTIONS = ThreadFlag()


def convolutions() -> bool:
    """Whether a program exported now (in this thread) takes Meta's form of the mask upscaling."""
    return _CONVOLUTIONS()


def with_convolutions():
    """Within this context (in this thread), exported decoder programs take Meta's form of the mask upscaling."""
    return _CONVOLUTIONS.on()
