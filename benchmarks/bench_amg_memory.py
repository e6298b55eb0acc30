"""Peak memory of segment everything on a large image with crop layers: sam_hf's
`SamHfAutomaticMaskGenerator` vs Meta's `SamAutomaticMaskGenerator` (vs transformers' stock
`pipeline("mask-generation")`), same weights, same image, each in a fresh process.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_amg_memory.py --impls sam_hf   # 4000 x 3000, 16 x 16, 1 crop layer
    # Meta's and transformers' batches upscale every mask of the batch to float32 at the crop's size
    # (64 points x 3 masks x 4000 x 3000 x 4 bytes = 9.2 GB, plus copies): give them smaller batches
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_amg_memory.py --points-per-side 8 \\
        --impl-points-per-batch meta=16 transformers=16
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_amg_memory.py --image-size 1000 750 --points-per-side 8

Each implementation runs in its own process: it loads the weights (`--model`, default the shipped
`models/sam-hf-shapes-352`: a cheap encoder and decoder, so what happens at image size dominates) and the
seeded synthetic image (rendered once by the driver, saved as .npy) and builds its generator; then the
peak resident set is reset to the current one (Linux `/proc/self/clear_refs`; a line under the table says
if that was not possible) and one `generate` runs. Reported: the resident set before `generate` (baseline:
imports, weights, image), the peak during it (`VmHWM`), their difference, the wall time and the number of
masks returned.

sam_hf and Meta return uncompressed RLEs (`output_mode="uncompressed_rle"`, what Meta's `amg.py` uses for
big images), so the returned records are not the measured thing. transformers' pipeline has no such mode:
it returns one whole-image bool mask per kept mask, which its peak includes (the header prints their size).
Where torchvision is missing, Meta's and transformers' NMS calls go to sam_hf's pure-torch NMS (as in
bench_segment_everything.py). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import IMPLS, load_model, peak_rss_mb, print_table, proc_status_mb, run_worker, write_model_weights  # noqa: E402
from bench_segment_everything import failure, image_settings, synthetic_image, transformers_mask_pipeline  # noqa: E402

OUTPUT_MODE = "uncompressed_rle"
BOX_NMS_THRESH = 0.7  # Meta's default, within a crop (and transformers' one NMS)
CROP_NMS_THRESH = 0.7


def rss_mb() -> float:
    """Current resident set of this process in MB (Linux VmRSS; 0 where unavailable)."""
    return proc_status_mb("VmRSS") or 0.0


def reset_peak() -> bool:
    """Reset this process's peak resident set (VmHWM) to its current one; False where Linux refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def make_generate(impl: str, model, args, processor, settings):
    """A no-argument function: one whole `generate` of an (H, W, 3) uint8 image -> number of masks."""
    _, mean, std = settings
    common = dict(points_per_batch=args.points_per_batch, pred_iou_thresh=args.pred_iou_thresh,
                  stability_score_thresh=args.stability_score_thresh)
    if impl == "sam_hf":
        from sam_hf import SamHfAutomaticMaskGenerator

        generator = SamHfAutomaticMaskGenerator(
            model, processor, points_per_side=args.points_per_side, crop_n_layers=args.crop_n_layers,
            box_nms_thresh=BOX_NMS_THRESH, crop_nms_thresh=CROP_NMS_THRESH, output_mode=OUTPUT_MODE, **common,
        )
        return lambda image: len(generator.generate(image))
    if impl == "meta":
        import segment_anything.automatic_mask_generator as meta_amg

        if importlib.util.find_spec("torchvision") is None:  # bound at import to the tests' O(n^2) stand-in
            nms = importlib.import_module("sam_hf.generation.nms")

            meta_amg.batched_nms, meta_amg.box_area = nms.batched_nms, nms.box_area
        with torch.no_grad():  # load_model leaves them zero
            model.pixel_mean.copy_(torch.tensor(mean).view(-1, 1, 1))
            model.pixel_std.copy_(torch.tensor(std).view(-1, 1, 1))
        generator = meta_amg.SamAutomaticMaskGenerator(
            model, points_per_side=args.points_per_side, crop_n_layers=args.crop_n_layers,
            box_nms_thresh=BOX_NMS_THRESH, crop_nms_thresh=CROP_NMS_THRESH, output_mode=OUTPUT_MODE, **common,
        )
        return lambda image: len(generator.generate(image))
    if impl == "transformers":
        from PIL import Image

        pipe = transformers_mask_pipeline(model, settings)
        kwargs = dict(points_per_crop=args.points_per_side, crops_n_layers=args.crop_n_layers,
                      crops_nms_thresh=CROP_NMS_THRESH, **common)
        return lambda image: len(pipe(Image.fromarray(image), **kwargs)["masks"])
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def worker(args) -> None:
    """One implementation in this fresh process: load, build, reset the peak, one generate; print JSON."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from sam_hf import SamHfConfig, SamHfProcessor

    config = SamHfConfig.from_pretrained(args.model)
    try:
        processor = SamHfProcessor.from_pretrained(args.model)
    except Exception:  # a folder without a processor: the generator builds the default
        processor = None
    image = np.load(args.image_file)
    try:
        model = load_model(args.impl, "", args.weights, config=config)
        generate = make_generate(args.impl, model, args, processor, image_settings(config, processor))
    except Exception as error:
        print(json.dumps({"error": failure(error)}))
        return
    gc.collect()
    load_peak, baseline = peak_rss_mb(), rss_mb()
    was_reset = reset_peak()
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            n_masks = generate(image)
    except Exception as error:  # e.g. a pipeline that cannot run crops here
        print(json.dumps({"error": failure(error), "peak_mb": peak_rss_mb(), "baseline_mb": baseline}))
        return
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_mb": peak_rss_mb(), "baseline_mb": baseline, "load_peak_mb": load_peak,
                      "reset": was_reset, "seconds": seconds, "masks": n_masks}))


def parse_overrides(items: list[str]) -> dict[str, int]:
    overrides = {}
    for item in items:
        impl, _, value = item.partition("=")
        if impl not in IMPLS or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--impl-points-per-batch expects IMPL=N with IMPL in {IMPLS} and N >= 1, got {item!r}")
        overrides[impl] = int(value)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/sam-hf-shapes-352", help="a saved SamHf model folder, loaded into all")
    parser.add_argument("--image-size", nargs=2, type=int, default=[4000, 3000], metavar=("W", "H"))
    parser.add_argument("--impls", nargs="+", default=["sam_hf", "meta", "transformers"], choices=IMPLS)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--impl-points-per-batch", nargs="+", default=[], metavar="IMPL=N",
                        help="another batch size for some implementations, e.g. meta=16 transformers=16")
    parser.add_argument("--crop-n-layers", type=int, default=1)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.5)
    parser.add_argument("--stability-score-thresh", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--image-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    overrides = parse_overrides(args.impl_points_per_batch)

    width, height = args.image_size
    folder = tempfile.mkdtemp(prefix="sam_hf_bench_")
    config, paths = write_model_weights(args.model, ["fp32"], folder)
    image_file = os.path.join(folder, "image.npy")
    np.save(image_file, synthetic_image(width, height))
    results = {}
    try:
        for impl in args.impls:
            batch = overrides.get(impl, args.points_per_batch)
            worker_args = [
                "--impl", impl, "--weights", paths["fp32"], "--image-file", image_file, "--model", args.model,
                "--points-per-side", str(args.points_per_side), "--points-per-batch", str(batch),
                "--crop-n-layers", str(args.crop_n_layers), "--pred-iou-thresh", str(args.pred_iou_thresh),
                "--stability-score-thresh", str(args.stability_score_thresh),
            ]
            results[impl] = (batch, run_worker(os.path.abspath(__file__), worker_args, args.threads))
            print(f"{impl}: {results[impl][1]}", file=sys.stderr)
    finally:
        for path in [*paths.values(), image_file]:
            os.remove(path)
        os.rmdir(folder)
    report(args, results)


def report(args, results) -> None:
    import transformers
    from sam_hf.generation import generator as sam_hf_generator
    from sam_hf.generation.crops import generate_crop_boxes

    width, height = args.image_size
    crop_boxes, _ = generate_crop_boxes((height, width), args.crop_n_layers, 512 / 1500)
    sub_crops = crop_boxes[1:]
    largest_sub = max(((x1 - x0) * (y1 - y0), x1 - x0, y1 - y0) for x0, y0, x1, y1 in sub_crops) if sub_crops else None
    points = args.points_per_side**2
    mb = lambda n: f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e6:.1f} MB"  # noqa: E731
    nms_note = ("" if importlib.util.find_spec("torchvision") is not None else
                "; no torchvision: Meta's and transformers' batched_nms calls go to sam_hf's pure-torch NMS")
    print(f"\nSegment everything, peak memory: model {args.model}, {width} x {height} synthetic image, "
          f"crop_n_layers {args.crop_n_layers} ({len(crop_boxes)} crops"
          + (f", the largest sub-crop {largest_sub[1]} x {largest_sub[2]}" if largest_sub else "") + "), "
          f"{args.points_per_side} x {args.points_per_side} points per crop, pred_iou_thresh {args.pred_iou_thresh}, "
          f"stability_score_thresh {args.stability_score_thresh}, box/crop NMS {BOX_NMS_THRESH}/{CROP_NMS_THRESH}, "
          f"sam_hf and Meta output_mode={OUTPUT_MODE!r} (transformers: whole-image bool masks, its only form), "
          f"{args.threads} thread(s), one generate per fresh process, torch {torch.__version__}, "
          f"transformers {transformers.__version__}{nms_note}\n")
    print("For scale (one 'mask' = one of the 3 masks a point prompt gives):")
    for batch in sorted({batch for batch, _ in results.values()} | {args.points_per_batch}):
        print(f"- one batch of {batch} points x 3 upscaled float32 logits at image size: "
              f"{mb(batch * 3 * height * width * 4)} ({-(-points // batch)} batch(es) per crop)")
    print(f"- one whole-image bool mask: {mb(height * width)}; float32 logits of one: {mb(height * width * 4)}")
    budget = sam_hf_generator.UPSCALE_BUDGET
    per_chunk = max(1, budget // (height * width))  # the generator's rule, at layer 0 (the whole image)
    print(f"- sam_hf upscales max(1, UPSCALE_BUDGET // crop pixels) masks at a time (UPSCALE_BUDGET = {budget:,} "
          f"elements, {mb(budget * 4)} of float32): at image size {per_chunk} mask(s), {mb(per_chunk * height * width * 4)} "
          "of float32 logits\n")

    headers = ["implementation", "points/batch", "peak RSS MB", "baseline RSS MB", "peak - baseline MB", "seconds", "masks"]
    rows, not_reset = [], False
    for impl in args.impls:
        batch, result = results[impl]
        if "seconds" not in result:
            error = result.get("error", "failed")
            error = error if error.startswith("failed") else f"failed: {error}"
            rows.append([impl, str(batch), error, "", "", "", ""])
            continue
        not_reset |= not result["reset"]
        rows.append([impl, str(batch), f"{result['peak_mb']:,.0f}", f"{result['baseline_mb']:,.0f}",
                     f"{result['peak_mb'] - result['baseline_mb']:,.0f}", f"{result['seconds']:.1f}", str(result["masks"])])
    print_table(headers, rows)
    if not_reset:
        print("\nThe peak could not be reset before generate (no /proc/self/clear_refs): peaks include loading.")


if __name__ == "__main__":
    main()
