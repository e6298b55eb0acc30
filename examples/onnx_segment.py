#!/usr/bin/env python
"""Segment what a click shows with a sam_hf model exported to ONNX and run by onnxruntime: the image encoder and the
prompt decoder as two ONNX files (`sam_hf.export.export_onnx`), the processor for resizing, padding, point coordinates
and mask post-processing. Checks the mask against the PyTorch model's.

    python examples/onnx_segment.py models/sam-hf-shapes-352 examples/sample.png --point 228 65 --output outputs/onnx

Writes `encoder.onnx` and `decoder.onnx` into --output (kept if there, unless --overwrite) and `mask.png`, the best
of the three masks. Needs the onnx extra: pip install "sam-hf[onnx]".
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from PIL import Image

from sam_hf import SamHfModel, SamHfProcessor
from sam_hf.export import export_onnx


def onnx_files(model: SamHfModel, folder: str, overwrite: bool) -> dict[str, str]:
    """The encoder's and the decoder's ONNX files in `folder`, exported unless there already (or `overwrite`)."""
    paths = {}
    for part in ("encoder", "decoder"):
        paths[part] = os.path.join(folder, f"{part}.onnx")
        if overwrite or not os.path.exists(paths[part]):
            export_onnx(model, paths[part], part, overwrite=overwrite)
    return paths


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a saved sam_hf model folder (or Hub id)")
    parser.add_argument("image", help="an image file")
    parser.add_argument("--point", type=float, nargs=2, required=True, metavar=("X", "Y"), help="the click, in image pixels")
    parser.add_argument("--output", required=True, help="folder for the ONNX files and mask.png (created if missing)")
    parser.add_argument("--overwrite", action="store_true", help="export the ONNX files again and replace mask.png")
    args = parser.parse_args(argv)
    import onnxruntime

    mask_path = os.path.join(args.output, "mask.png")
    if os.path.exists(mask_path) and not args.overwrite:
        raise SystemExit(f"{mask_path} exists: pass --overwrite to replace it")
    model = SamHfModel.from_pretrained(args.model).eval()
    processor = SamHfProcessor.from_pretrained(args.model)
    os.makedirs(args.output, exist_ok=True)
    paths = onnx_files(model, args.output, args.overwrite)
    encoder, decoder = (onnxruntime.InferenceSession(paths[part], providers=["CPUExecutionProvider"]) for part in ("encoder", "decoder"))

    image = np.asarray(Image.open(args.image).convert("RGB"))
    inputs = processor(image, input_points=[[list(args.point)]], return_tensors="pt")  # one prompt of one point
    (embeddings,) = encoder.run(None, {"pixel_values": inputs["pixel_values"].numpy()})
    iou, low_res = decoder.run(None, {"image_embeddings": embeddings, "input_points": inputs["input_points"].numpy(),
                                      "input_labels": inputs["input_labels"].numpy()})
    masks = processor.post_process_masks(torch.from_numpy(low_res), inputs["original_sizes"], inputs["reshaped_input_sizes"])[0][0]  # (3, H, W)
    best = int(np.argmax(iou[0, 0]))

    with torch.no_grad():  # the same click through the PyTorch model
        reference = model(pixel_values=inputs["pixel_values"], input_points=inputs["input_points"], input_labels=inputs["input_labels"])
    expected = processor.post_process_masks(reference.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])[0][0]
    differing = int((masks != expected).sum())

    Image.fromarray(masks[best].numpy().astype(np.uint8) * 255).save(mask_path)
    result = {"score": float(iou[0, 0, best]), "area": int(masks[best].sum()), "pixels_differing_from_pytorch": differing,
              "max_iou_difference": float(np.abs(iou - reference.iou_scores.numpy()).max())}
    print(f"{args.image}: mask {best} of 3, predicted IoU {result['score']:.4f}, area {result['area']} px -> {mask_path}; "
          f"{differing} mask pixels differ from the PyTorch model's")
    return result


if __name__ == "__main__":
    main()
