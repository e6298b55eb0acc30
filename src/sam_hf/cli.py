"""`sam-hf` command line: segment everything in images, or segment what points and a box show.

    sam-hf segment-everything photos/ --model facebook/sam-vit-base --output masks/ [--convert-to-rle]
    sam-hf segment photo.jpg --points 500,375 --points 600,300,0 --box 400,300,700,500 --model ... --output out/
    sam-hf export-onnx --model facebook/sam-vit-base --output decoder.onnx [--part encoder] [--boxes] [--masks]

`--model` is a saved sam_hf/transformers folder or Hub id, or Meta's `.pth` checkpoint with
`--model-type vit_b|vit_l|vit_h`; `--precision fp32|bf16|bf16-encoder` (default fp32, exact; bf16-encoder is
`SamHfModel.mixed_precision()`). Generator flags carry the names of Meta's scripts/amg.py. Images that
cannot be read or segmented (too thin for the model's frame, say) are reported and skipped, and the exit status is 1
at the end; outputs already written stay; an existing output is kept (and reported) unless `--overwrite`. A model,
device or output folder that cannot be used is a usage error (status 2), found before any work. Outputs: see
`cli_outputs.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Sequence

import numpy as np

GENERATOR_FLAGS = [
    # (flag, type, help): Meta's scripts/amg.py names; defaults are the generator's.
    ("--points-per-side", int, "points sampled along one side of the image (total: its square)"),
    ("--points-per-batch", int, "points run through the decoder at once"),
    ("--pred-iou-thresh", float, "keep masks whose predicted IoU is above this"),
    ("--stability-score-thresh", float, "keep masks whose stability score is at least this"),
    ("--stability-score-offset", float, "logit shift used to compute the stability score"),
    ("--box-nms-thresh", float, "box IoU cutoff of the NMS within a crop"),
    ("--crop-n-layers", int, "if > 0, run again on crops of the image, this many layers"),
    ("--crop-nms-thresh", float, "box IoU cutoff of the NMS across crops"),
    ("--crop-overlap-ratio", float, "overlap of the crops, as a fraction of the image side in the first layer"),
    ("--crop-n-points-downscale-factor", int, "points per side in layer n divided by this**n"),
    ("--min-mask-region-area", float, "remove holes and islands smaller than this many pixels (needs scipy)"),
    ("--mask-threshold", float, "logit threshold of the binary masks"),
]
PRECISIONS = ("fp32", "bf16", "bf16-encoder")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="saved model folder, Hub id, or Meta .pth checkpoint")
    parser.add_argument("--model-type", choices=["vit_b", "vit_l", "vit_h"], help="variant of a Meta .pth checkpoint")
    parser.add_argument("--output", required=True, help="folder for the outputs (created if missing)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp32",
        help="fp32 (exact), bf16 (weights and activations), or bf16-encoder (SamHfModel.mixed_precision(): "
             "the image encoder in bf16, the decoder in fp32)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam-hf", description="Segment Anything (sam_hf) from the command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    everything = commands.add_parser("segment-everything", help="every object in an image or a folder of images")
    everything.add_argument("input", help="an image file or a folder of images")
    _add_common(everything)
    everything.add_argument("--convert-to-rle", action="store_true", help="one COCO-RLE JSON per image instead of PNG masks")
    for flag, kind, text in GENERATOR_FLAGS:
        everything.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=text)
    everything.add_argument("--single-mask", action="store_true", help="one mask per point instead of three")
    prompted = commands.add_parser("segment", help="the object shown by points and/or a box")
    prompted.add_argument("input", help="an image file")
    _add_common(prompted)
    prompted.add_argument("--points", action="append", default=[], metavar="X,Y[,LABEL]", help="a point (label 1 positive, 0 negative); repeat for more")
    prompted.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box around the object")
    exporter = commands.add_parser("export-onnx", help="the prompt decoder or the image encoder as an ONNX file (sam_hf.export)")
    exporter.add_argument("--model", required=True, help="saved model folder, Hub id, or Meta .pth checkpoint")
    exporter.add_argument("--model-type", choices=["vit_b", "vit_l", "vit_h"], help="variant of a Meta .pth checkpoint")
    exporter.add_argument("--output", required=True, help="the .onnx file to write")
    exporter.add_argument("--part", choices=["decoder", "encoder"], default="decoder",
                          help="decoder: image embeddings and prompts -> IoU scores and low-res mask logits; encoder: pixels -> embeddings")
    exporter.add_argument("--no-points", action="store_true", help="the decoder takes no input_points / input_labels (use with --boxes)")
    exporter.add_argument("--boxes", action="store_true", help="the decoder takes input_boxes")
    exporter.add_argument("--masks", action="store_true", help="the decoder takes input_masks, one low-res mask per prompt")
    exporter.add_argument("--single-mask", action="store_true", help="one mask per prompt instead of three")
    exporter.add_argument("--overwrite", action="store_true", help="replace the file if it exists")
    return parser


def _numbers(text: str, counts: tuple[int, ...], flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = None
    if values is None or len(values) not in counts:
        raise argparse.ArgumentTypeError(f"{flag} expects {' or '.join(str(c) for c in counts)} comma-separated numbers, got {text!r}")
    return values


def _point(text: str) -> list[float]:
    """--points X,Y[,LABEL] -> [x, y] or [x, y, label] with the label 0 or 1."""
    values = _numbers(text, (2, 3), "--points")
    if len(values) == 3 and values[2] not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"--points X,Y,LABEL takes the label 1 (positive) or 0 (negative), got {text!r}")
    return values


def _device(device: str | None):
    """--device as a torch.device (default: cuda where available, else cpu); one this machine lacks is a usage error."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device must be a torch device such as cpu or cuda:0, got {device!r} ({err})") from None
    accelerator = getattr(torch, parsed.type, None)
    if parsed.type != "cpu" and not (accelerator is not None and hasattr(accelerator, "is_available") and accelerator.is_available()):
        raise ValueError(f"--device {device!r}: no {parsed.type} device is available here")
    return parsed


def _output_folder(path: str) -> None:
    """Make the --output folder now, before any work: a path that cannot be one is a usage error."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--output {path!r} cannot be made a folder: {err.strerror or err}") from None


def load_model(model: str, model_type: str | None, device: str | None, precision: str = "fp32"):
    """(model, processor) from a saved folder / Hub id, or from a Meta checkpoint with its variant, in `precision`
    (one of PRECISIONS)."""
    import torch

    from .modeling import SamHfModel
    from .processing import SamHfImageProcessor, SamHfProcessor

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = _device(device)
    if model.endswith((".pth", ".pt")):
        if model_type is None:
            raise ValueError(f"--model-type (vit_b, vit_l or vit_h) is needed with a Meta checkpoint, got --model {model}")
        sam = SamHfModel.from_meta_checkpoint(model, variant=model_type)
        processor = SamHfImageProcessor.for_model(sam.config)
    else:
        try:
            sam = SamHfModel.from_pretrained(model)
        except OSError as err:
            raise ValueError(f"--model {model!r} is not a saved model folder or a Hub id that can be reached: {err}") from None
        try:
            processor = SamHfProcessor.from_pretrained(model).image_processor
        except (OSError, ValueError):
            processor = SamHfImageProcessor.for_model(sam.config)
    sam = sam.to(device).eval()
    if precision == "bf16":
        sam = sam.to(torch.bfloat16)
    elif precision == "bf16-encoder":
        sam = sam.mixed_precision(torch.bfloat16)
    return sam, processor


def list_images(path: str) -> list[str]:
    """The image itself, or the files of a folder (hidden files and subfolders left out), sorted."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if not n.startswith(".") and os.path.isfile(os.path.join(path, n)))
        return [os.path.join(path, n) for n in names]
    return [path]


def read_image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))  # (H, W, 3) uint8


def _report(message: str) -> None:
    print(f"sam-hf: {message}", file=sys.stderr)


def _segment_everything(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .cli_outputs import everything_targets, write_everything
    from .generation.generator import SamHfAutomaticMaskGenerator
    from .visualize import overlay

    knobs = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag, _, _ in GENERATOR_FLAGS
             if hasattr(args, flag[2:].replace("-", "_"))}
    if not os.path.exists(args.input):
        _report(f"input {args.input!r} does not exist")
        return 1
    _output_folder(args.output)
    model, processor = load_model(args.model, args.model_type, args.device, args.precision)
    generator = SamHfAutomaticMaskGenerator(
        model, processor, output_mode="coco_rle" if args.convert_to_rle else "binary_mask",
        multimask_output=not args.single_mask, **knobs,
    )
    failures = 0
    for path in tqdm(list_images(args.input), desc="images", unit="image"):
        name = os.path.splitext(os.path.basename(path))[0]
        if not args.overwrite and any(os.path.exists(t) for t in everything_targets(args.output, name, args.convert_to_rle)):
            _report(f"{path}: output for {name!r} exists in {args.output}, skipped (use --overwrite to replace it)")
            continue
        try:
            image = read_image(path)
        except (OSError, ValueError) as err:
            _report(f"could not read {path!r} as an image, skipped ({err})")
            failures += 1
            continue
        try:
            records = generator.generate(image)
        except ValueError as err:  # this image cannot be segmented (too thin for the model's frame, say): the next can
            _report(f"could not segment {path!r}, skipped ({err})")
            failures += 1
            continue
        write_everything(records, overlay(image, records), args.output, name, args.convert_to_rle)
    return 1 if failures else 0


def _segment(args: argparse.Namespace) -> int:
    from .cli_outputs import prompted_targets, write_prompted
    from .predictor import SamHfPredictor
    from .visualize import overlay

    points = [_point(p) for p in args.points]
    box = _numbers(args.box, (4,), "--box") if args.box else None
    if not points and box is None:
        raise argparse.ArgumentTypeError("segment needs at least one --points or a --box")
    name = os.path.splitext(os.path.basename(args.input))[0]
    if not args.overwrite and any(os.path.exists(t) for t in prompted_targets(args.output, name)):
        _report(f"{args.input}: output for {name!r} exists in {args.output}, skipped (use --overwrite to replace it)")
        return 0
    try:
        image = read_image(args.input)
    except (OSError, ValueError) as err:
        _report(f"could not read {args.input!r} as an image ({err})")
        return 1
    _output_folder(args.output)
    model, processor = load_model(args.model, args.model_type, args.device, args.precision)
    predictor = SamHfPredictor(model, processor)
    predictor.set_image(image)
    coords = np.array([p[:2] for p in points]) if points else None
    labels = np.array([int(p[2]) if len(p) == 3 else 1 for p in points]) if points else None
    # Meta's advice: three candidates for an ambiguous single point, one otherwise.
    multimask = box is None and len(points) == 1
    masks, scores, _ = predictor.predict(
        point_coords=coords, point_labels=labels, box=None if box is None else np.array(box), multimask_output=multimask
    )
    best = int(np.argmax(scores))
    summary = {"score": float(scores[best]), "area": int(masks[best].sum()), "points": points, "box": box}
    picture = overlay(image, masks[best], points=coords, labels=labels, boxes=None if box is None else [box])
    write_prompted(masks[best], summary, picture, args.output, name)
    print(f"{args.input}: score {summary['score']:.4f}, area {summary['area']} px")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from .export import export_onnx

    if not args.output.endswith(".onnx"):
        raise ValueError(f"--output must name a .onnx file, got {args.output!r}")
    if os.path.exists(args.output) and not args.overwrite:
        _report(f"{args.output} exists, kept (use --overwrite to replace it)")
        return 0
    if args.part == "encoder" and (args.no_points or args.boxes or args.masks or args.single_mask):
        raise ValueError("--no-points, --boxes, --masks and --single-mask choose the decoder's inputs and outputs: not with --part encoder")
    folder = os.path.dirname(os.path.abspath(args.output))
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise ValueError(f"--output {args.output!r}: no file can be written in {folder!r} ({err.strerror or err})") from None
    model, _ = load_model(args.model, args.model_type, "cpu")
    path = export_onnx(model, args.output, args.part, points=not args.no_points, boxes=args.boxes, masks=args.masks,
                       multimask_output=not args.single_mask, overwrite=args.overwrite)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `sam-hf`; returns the exit status (0 success, 1 some image failed, 2 bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "segment-everything":
            return _segment_everything(args)
        if args.command == "export-onnx":
            return _export_onnx(args)
        return _segment(args)
    except (argparse.ArgumentTypeError, ValueError, TypeError, ImportError) as err:
        parser.error(str(err))  # exits with status 2
    return 2


def entry_point() -> int:
    """The `sam-hf` console command: `main` in a process that keeps freed memory (see `sam_hf.allocator`;
    faster decoding on CPU with glibc; the process ends when the command does)."""
    from .allocator import keep_freed_memory

    keep_freed_memory()
    return main()


if __name__ == "__main__":
    sys.exit(entry_point())
