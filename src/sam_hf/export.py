"""sam_hf models for other runtimes: `torch.export` programs and ONNX files of the image encoder and of the prompt
decoder (prompt encoder + mask decoder on given image embeddings, the part Meta's ONNX example ships for browsers),
with the numbers of images, prompts and points left dynamic.

While `torch.export` traces, sam_hf takes its PyTorch paths, as under `torch.compile`: in the decoder the image side
that all prompts of an image share is projected once per image, not once per prompt, and each prompt's tokens are
folded into the projections of its own image tokens (`modeling/decoder_attention.py`, the "shared" and "per_prompt"
routes). The mask upscaling is its linear form in `torch.export` programs and Meta's transposed convolutions in ONNX
files, whichever runs faster where each goes (`modeling/export_form.py`). What depends on the call's sizes stays out of
the program: the compiled kernels, the caches, the "fold" route for one or two prompts, prompt groups. So one program
serves every size, and it does about half the work of Meta's form per prompt (onnxruntime, ViT-B, 64 prompts per call:
1.7x faster than Meta's form).

Some shape facts the exporter cannot prove (a view's contiguity for sizes of at least 1) are checked in the program at
run time instead (`prefer_deferred_runtime_asserts_over_guards`); they hold for every size. The input checks on values
(finite points, boxes and masks, known labels, ordered box corners) become runtime assertions inside the program; they
raise a `RuntimeError` with the same message there. Shapes are checked when the program is called.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from .modeling.export_form import with_convolutions

PARTS = ("encoder", "decoder")


class SamHfEncoderForExport(nn.Module):
    """pixel_values (B, 3, S, S) -> image_embeddings (B, C, g, g) of a `SamHfModel`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values).image_embeddings


class SamHfDecoderForExport(nn.Module):
    """(image_embeddings (B, C, g, g), input_points (B, P, N, 2), input_labels (B, P, N), input_boxes (B, P, 4),
    input_masks (B, P, 4g, 4g); prompt inputs optional as in `SamHfModel.forward`) -> (iou_scores (B, P, M), pred_masks
    (B, P, M, 4g, 4g)) of a `SamHfModel`, M = 3 with `multimask_output`, else 1."""

    def __init__(self, model: nn.Module, *, multimask_output: bool = True) -> None:
        super().__init__()
        self.model = model
        self.multimask_output = multimask_output

    def forward(self, image_embeddings: torch.Tensor, input_points: torch.Tensor | None = None, input_labels: torch.Tensor | None = None,
                input_boxes: torch.Tensor | None = None, input_masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(image_embeddings=image_embeddings, input_points=input_points, input_labels=input_labels, input_boxes=input_boxes,
                         input_masks=input_masks, multimask_output=self.multimask_output)
        return out.iou_scores, out.pred_masks


def _check_model(model) -> None:
    from .modeling import SamHfModel

    if not isinstance(model, SamHfModel):
        raise TypeError(f"model must be a SamHfModel, got {type(model).__name__}")


def _wrapper_and_inputs(model, part: str, points: bool, boxes: bool, masks: bool, multimask_output: bool):
    """The module to trace, example inputs (2 images, 3 prompts, 2 points: no size of 0 or 1, which the tracer would fix)
    and their dynamic sizes."""
    _check_model(model)
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    for name, value in (("points", points), ("boxes", boxes), ("masks", masks), ("multimask_output", multimask_output)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    if part == "decoder" and not (points or boxes):
        raise ValueError("the decoder needs points or boxes (or both): got points=False and boxes=False")
    parameter = next(model.vision_encoder.parameters())  # the images' and embeddings' dtype (bf16 under mixed_precision())
    device, dtype = parameter.device, parameter.dtype
    images = Dim("images", min=1)
    if part == "encoder":
        size = model.config.vision_config.image_size
        wrapper = SamHfEncoderForExport(model).train(model.training)  # the model's mode (the exporter warns in training mode)
        return wrapper, {"pixel_values": torch.zeros(2, 3, size, size, device=device, dtype=dtype)}, {"pixel_values": {0: images}}
    wrapper = SamHfDecoderForExport(model, multimask_output=multimask_output).train(model.training)
    prompt_cfg = model.config.prompt_encoder_config
    grid, size = prompt_cfg.image_embedding_size, prompt_cfg.image_size
    prompts, count = Dim("prompts", min=1), Dim("points", min=1)
    example = {"image_embeddings": torch.zeros(2, prompt_cfg.hidden_size, grid, grid, device=device, dtype=dtype)}
    shapes: dict = {"image_embeddings": {0: images}}
    if points:
        example["input_points"] = torch.full((2, 3, 2, 2), size / 2, device=device)
        example["input_labels"] = torch.ones(2, 3, 2, dtype=torch.long, device=device)
        shapes["input_points"] = shapes["input_labels"] = {0: images, 1: prompts, 2: count}
    if boxes:
        example["input_boxes"] = torch.tensor([0.0, 0.0, size / 2, size / 2], device=device).expand(2, 3, 4).contiguous()
        shapes["input_boxes"] = {0: images, 1: prompts}
    if masks:
        example["input_masks"] = torch.zeros(2, 3, 4 * grid, 4 * grid, device=device, dtype=dtype)
        shapes["input_masks"] = {0: images, 1: prompts}
    return wrapper, example, shapes


def export_program(model, part: str = "decoder", *, points: bool = True, boxes: bool = False, masks: bool = False,
                   multimask_output: bool = True) -> torch.export.ExportedProgram:
    """A `torch.export` program of `part` of `model` (a `SamHfModel`, on its device and in its dtype), called with
    keyword arguments:

    - "encoder": `program.module()(pixel_values=...)` -> image_embeddings, for any number of images;
    - "decoder": `program.module()(image_embeddings=..., input_points=..., input_labels=...)` -> (iou_scores,
      pred_masks), for any number of images, prompts and points. The prompt inputs are those chosen here: `points`
      (input_points and input_labels), `boxes` (input_boxes) and `masks` (input_masks, one per prompt: (B, P, 4g, 4g)).
      `multimask_output` is fixed in the program.
    """
    wrapper, example, shapes = _wrapper_and_inputs(model, part, points, boxes, masks, multimask_output)
    return _export(wrapper, example, shapes)


def _export(wrapper: nn.Module, example: dict, shapes: dict) -> torch.export.ExportedProgram:
    """The program of `wrapper` on keyword inputs `example` with `dynamic_shapes` `shapes`. The views of sam_hf's paths
    give the exporter contiguity conditions on the symbolic sizes (Min(P * (N + 6), N + 6) = N + 6 and the like) that
    it cannot prove, though they hold for every size of at least 1: they become checks in the program."""
    with torch.no_grad():
        return torch.export.export(wrapper, (), example, dynamic_shapes=shapes, prefer_deferred_runtime_asserts_over_guards=True)


def export_onnx(model, path: str | os.PathLike, part: str = "decoder", *, points: bool = True, boxes: bool = False,
                masks: bool = False, multimask_output: bool = True, overwrite: bool = False) -> Path:
    """`export_program`'s program written as an ONNX file at `path` (torch's dynamo exporter; needs `onnx` and
    `onnxscript`: `pip install "sam-hf[onnx]"`), with named inputs (as `export_program` lists them) and outputs
    ("image_embeddings"; "iou_scores", "pred_masks") and dynamic sizes. Runs in onnxruntime, for example. An
    existing file is kept (a `ValueError`) unless `overwrite`. Returns the path."""
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError as error:
            raise ImportError(f'export_onnx needs the packages onnx and onnxscript: pip install "sam-hf[onnx]" ({error})') from error
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"path must name a .onnx file, got {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"path's folder {str(path.parent)!r} does not exist")
    if path.exists() and not overwrite:
        raise ValueError(f"path {str(path)!r} exists: pass overwrite=True to replace it")
    wrapper, example, shapes = _wrapper_and_inputs(model, part, points, boxes, masks, multimask_output)
    outputs = ["image_embeddings"] if part == "encoder" else ["iou_scores", "pred_masks"]
    with with_convolutions():  # onnxruntime's transposed convolutions (modeling/export_form.py)
        exported = _export(wrapper, example, shapes)  # torch.onnx.export on the wrapper would not defer the unprovable size conditions
    with torch.no_grad(), warnings.catch_warnings():
        # the exporter names each dynamic axis once per input and warns that inputs share it (images, prompts, points)
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints", category=UserWarning)
        program = torch.onnx.export(exported, input_names=list(example), output_names=outputs, dynamo=True, verbose=False)
    program.save(str(path))
    return path
