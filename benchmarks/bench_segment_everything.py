"""Segment everything (automatic mask generation) end to end: sam_hf's `SamHfAutomaticMaskGenerator` vs
transformers' stock `pipeline("mask-generation")` on its `SamModel` vs Meta's `SamAutomaticMaskGenerator`,
same weights, same image, fp32 and bf16. `sam_hf_stock` is transformers' stock pipeline on sam_hf's model and
image processor: what `pipeline("mask-generation", model=<a sam_hf folder>)` runs without `pipeline_class`;
`sam_hf_pytorch` is sam_hf's generator with its compiled kernels off.

    nice -n 10 python benchmarks/bench_segment_everything.py --variant vit_b --runs 1
    nice -n 10 python benchmarks/bench_segment_everything.py --model models/sam-hf-shapes-352 --image-size 192 160 \\
        --points-per-side 16 --pred-iou-thresh 0.5 --stability-score-thresh 0.8

One process, implementations timed round-robin (read the ratios), each called as its users call it: image
in, masks out (encoder, point batches through the decoder, filters, NMS, masks at image size). The image
is a seeded synthetic-shapes picture (`sam_hf.training.synthetic`), identical for all. Weights are random
and seeded (`--variant`) or a saved SamHf model folder (`--model`), loaded into all three.

Each row also compares its masks with sam_hf's fp32 masks: for every reference mask the best IoU among
the row's masks ("found": IoU >= 0.95), and the other way round (the row's masks found among the
reference's), so that both missing and extra masks show. bf16 is the model in bf16 (Meta's under
autocast, as in bench_decoder.py); `bf16+fp32` is sam_hf's `SamHfModel.mixed_precision()` on the fp32
weights (bf16 vision encoder, fp32 prompt encoder and mask decoder; sam_hf only). An implementation that
cannot run a mode is reported as `failed: ...` with the place it failed. `--mode both|rss` also runs each
(implementation, dtype) once in a fresh process for its peak resident set. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import traceback
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    DTYPES, IMPLS, WITHOUT_KERNELS, add_worker_arguments, interleaved, load_model, matmul_peak, memory_cell, peak_rss_mb,
    per_process_runs, print_table, summary, timed, without_kernels, write_model_weights, write_weights,
)
from _flops import decoder_gflop, encoder_gflop  # noqa: E402

MATCH_IOU = 0.95


def synthetic_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: shapes with solid, gradient, noise, stripe or checker fills on a background."""
    from sam_hf.training.synthetic import render_sample

    image, _, _ = render_sample(rng=np.random.default_rng(seed), height=height, width=width, max_objects=8)
    return image


@contextlib.contextmanager
def torchvision_nms():
    """`torchvision.ops.boxes.batched_nms` for the duration of a call where torchvision is missing.

    transformers' image processor imports it inside `post_process_for_mask_generation` (behind a
    torchvision check that `make_runner` steps past); the stand-in is
    sam_hf's pure-torch NMS (torchvision's semantics; the tests' brute-force stand-in is O(n^2) Python and
    would dominate the timing). Withdrawn from `sys.modules` right after.
    """
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        yield
        return
    nms = importlib.import_module("sam_hf.generation.nms")

    package, ops, boxes = (types.ModuleType(n) for n in ("torchvision", "torchvision.ops", "torchvision.ops.boxes"))
    boxes.batched_nms, boxes.box_area, boxes.nms = nms.batched_nms, nms.box_area, nms.nms
    package.ops, ops.boxes = ops, boxes
    added = {"torchvision": package, "torchvision.ops": ops, "torchvision.ops.boxes": boxes}
    sys.modules.update(added)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def image_settings(config, processor) -> tuple[int, list[float], list[float]]:
    """(longest edge, pixel mean, pixel std on 0..255 values) that all three implementations use."""
    from sam_hf.processing.image_processing import SAM_PIXEL_MEAN, SAM_PIXEL_STD

    image_processor = getattr(processor, "image_processor", processor)
    mean = list(getattr(image_processor, "pixel_mean", SAM_PIXEL_MEAN))
    std = list(getattr(image_processor, "pixel_std", SAM_PIXEL_STD))
    return config.vision_config.image_size, mean, std


def transformers_image_processor(settings):
    """transformers' SAM image processor with our image settings (its Pil class where torchvision is missing)."""
    import transformers

    size, mean, std = settings
    processor_class = (transformers.SamImageProcessor if importlib.util.find_spec("torchvision") is not None
                       else transformers.SamImageProcessorPil)  # the class SamImageProcessor falls back to
    return processor_class(
        size={"longest_edge": size}, pad_size={"height": size, "width": size},
        image_mean=[m / 255 for m in mean], image_std=[s / 255 for s in std],
    )


def transformers_mask_pipeline(model, settings):
    """transformers' stock `pipeline("mask-generation")` on its SamModel with our image settings; without
    torchvision, transformers' own final step runs past its torchvision check with the NMS stand-in."""
    import transformers

    image_processor = transformers_image_processor(settings)
    processor_class = type(image_processor)
    if importlib.util.find_spec("torchvision") is None:
        body = processor_class.post_process_for_mask_generation.__wrapped__

        def post_process_for_mask_generation(*a, **k):
            with torchvision_nms():
                return body(image_processor, *a, **k)

        image_processor.post_process_for_mask_generation = post_process_for_mask_generation
    return transformers.pipeline("mask-generation", model=model, image_processor=image_processor, device="cpu")


STOCK = "sam_hf_stock"  # transformers' stock pipeline class on sam_hf's model and image processor
SEGMENT_IMPLS = (*IMPLS, STOCK, WITHOUT_KERNELS)
MIXED = "bf16+fp32"  # sam_hf's mixed precision: bf16 vision encoder, fp32 prompt encoder and mask decoder


def make_runner(impl: str, model, dtype: str, image: np.ndarray, args, processor, settings):
    """A no-argument function: one `generate` of `image` -> list of (H, W) bool masks (numpy)."""
    size, mean, std = settings
    if impl == "sam_hf":
        from sam_hf import SamHfAutomaticMaskGenerator

        generator = SamHfAutomaticMaskGenerator(
            model, processor, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
            pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
        )
        return lambda: [record["segmentation"] for record in generator.generate(image)]
    if impl == STOCK:
        import transformers
        from PIL import Image
        from sam_hf import SamHfImageProcessor

        image_processor = getattr(processor, "image_processor", None) or SamHfImageProcessor(longest_edge=size)
        pipe = transformers.pipeline("mask-generation", model=model, image_processor=image_processor, device="cpu")
        picture = Image.fromarray(image)
        kwargs = dict(points_per_batch=args.points_per_batch, points_per_crop=args.points_per_side, crops_n_layers=0,
                      pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
                      crops_nms_thresh=0.7)
        return lambda: [np.asarray(mask) for mask in pipe(picture, **kwargs)["masks"]]
    if impl == "transformers":
        from PIL import Image

        pipe = transformers_mask_pipeline(model, settings)
        picture = Image.fromarray(image)
        kwargs = dict(points_per_batch=args.points_per_batch, points_per_crop=args.points_per_side, crops_n_layers=0,
                      pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
                      crops_nms_thresh=0.7)  # one crop: this NMS is Meta's box_nms_thresh (0.7)
        return lambda: [np.asarray(mask) for mask in pipe(picture, **kwargs)["masks"]]
    if impl == "meta":
        import segment_anything.automatic_mask_generator as meta_amg

        if importlib.util.find_spec("torchvision") is None:  # bound at import to the tests' O(n^2) stand-in
            nms = importlib.import_module("sam_hf.generation.nms")

            meta_amg.batched_nms, meta_amg.box_area = nms.batched_nms, nms.box_area
        with torch.no_grad():  # load_model leaves them zero (unused by the model benchmarks)
            model.pixel_mean.copy_(torch.tensor(mean).view(-1, 1, 1))
            model.pixel_std.copy_(torch.tensor(std).view(-1, 1, 1))
        generator = meta_amg.SamAutomaticMaskGenerator(
            model, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
            pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
        )
        low_precision = DTYPES[dtype] != torch.float32

        def run():  # Meta's preprocessing and prompt encoder produce fp32 next to bf16 weights: autocast, as bench_decoder
            with torch.autocast("cpu", dtype=DTYPES[dtype], enabled=low_precision):
                return [record["segmentation"] for record in generator.generate(image)]

        return run
    raise ValueError(f"impl must be one of {SEGMENT_IMPLS}, got {impl!r}")


def failure(error: Exception) -> str:
    """`failed: Type: message (file:line function)`, the place being the innermost frame of the error."""
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" ({os.path.basename(frame.filename)}:{frame.lineno} {frame.name})" if frame else ""
    return f"failed: {type(error).__name__}: {str(error).strip()[:80]}{where}"


def as_matrix(masks: list[np.ndarray], shape: tuple[int, int]) -> torch.Tensor:
    """(N, H * W) bool from a list of (H, W) masks."""
    if not masks:
        return torch.zeros(0, shape[0] * shape[1], dtype=torch.bool)
    stacked = torch.from_numpy(np.ascontiguousarray(np.stack([np.asarray(m, dtype=bool) for m in masks])))
    if tuple(stacked.shape[1:]) != tuple(shape):
        raise ValueError(f"masks of shape {tuple(stacked.shape[1:])}, expected {tuple(shape)}")
    return stacked.flatten(1)


def best_ious(a: torch.Tensor, b: torch.Tensor, budget: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks a (N, P), b (K, P) -> each a's best IoU among b (N,), each b's best among a (K,).

    Intersections are float32 matmuls over pixel chunks (each chunk's counts are exact below 2**24),
    summed in float64; the chunk keeps the float copies of both sides under `budget` elements.
    """
    n, k = a.shape[0], b.shape[0]
    if n == 0 or k == 0:
        return torch.zeros(n, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    inter = torch.zeros(n, k, dtype=torch.float64)
    step = max(1, budget // (n + k))
    for start in range(0, a.shape[1], step):
        chunk = slice(start, start + step)
        inter += (a[:, chunk].float() @ b[:, chunk].float().T).double()
    union = a.sum(1, dtype=torch.float64)[:, None] + b.sum(1, dtype=torch.float64)[None, :] - inter
    iou = inter / union.clamp(min=1)
    return iou.max(1).values, iou.max(0).values


def build(impl: str, dtype: str, args, config, paths: dict, processor, settings, image: np.ndarray):
    """`make_runner` for one (implementation, dtype) on the saved weights."""
    if dtype == MIXED and impl != "sam_hf":
        raise ValueError(f"{MIXED!r} is a sam_hf mode, got impl {impl!r}")
    model = load_model("sam_hf" if impl == STOCK else impl, args.variant, paths["fp32" if dtype == MIXED else dtype], config=config)
    if dtype == MIXED:
        model.mixed_precision(torch.bfloat16)
    if impl == WITHOUT_KERNELS:
        return without_kernels(make_runner("sam_hf", model, dtype, image, args, processor, settings))
    return make_runner(impl, model, dtype, image, args, processor, settings)


def worker(args, config, processor, settings, image: np.ndarray) -> None:
    """One (implementation, dtype) in a fresh process: load, warm up, run; print its times and peak RSS as JSON."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    run = build(args.impl, args.dtype, args, config, {args.dtype if args.dtype != MIXED else "fp32": args.weights},
                processor, settings, image)
    times = timed(run, warmup=args.warmup, runs=args.runs)
    print(json.dumps({"rss_mb": peak_rss_mb(), "seconds": times}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit_b", help="random seeded weights of this preset (ignored with --model)")
    parser.add_argument("--model", help="a saved SamHf model folder, loaded into all three implementations")
    parser.add_argument("--image-size", nargs=2, type=int, default=[1024, 683], metavar=("W", "H"))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES) + [MIXED],
                        help=f"{MIXED!r}: sam_hf's SamHfModel.mixed_precision() (bf16 encoder, fp32 decoder) on the fp32 weights, sam_hf only")
    parser.add_argument("--impls", nargs="+", default=list(SEGMENT_IMPLS), choices=SEGMENT_IMPLS)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    add_worker_arguments(parser)
    args = parser.parse_args()

    width, height = args.image_size
    image = synthetic_image(width, height)
    weight_dtypes = sorted({"fp32" if dtype == MIXED else dtype for dtype in args.dtypes})
    processor = None
    if args.model:
        from sam_hf import SamHfConfig, SamHfProcessor

        config = SamHfConfig.from_pretrained(args.model)
        with contextlib.suppress(Exception):  # a folder without a processor: the generator builds the default
            processor = SamHfProcessor.from_pretrained(args.model)
    else:
        from sam_hf import config_for_variant

        config = config_for_variant(args.variant)
    settings = image_settings(config, processor)
    if args.worker:
        return worker(args, config, processor, settings, image)
    torch.set_num_threads(args.threads)
    folder = tempfile.mkdtemp(prefix="sam_hf_bench_")
    if args.model:
        config, paths = write_model_weights(args.model, weight_dtypes, folder)
    else:
        paths = write_weights(args.variant, weight_dtypes, folder)
    peaks = {dtype: matmul_peak(DTYPES[weight_dtype(dtype)]) for dtype in args.dtypes}

    timings, masks, rss = {}, {}, {}
    for dtype in args.dtypes if args.mode in ("both", "timing") else ():
        fns, outputs, failures = {}, {}, {}
        for impl in args.impls:
            if dtype == MIXED and impl != "sam_hf":
                timings[impl, dtype] = "- (a sam_hf mode)"
                continue
            try:
                run = build(impl, dtype, args, config, paths, processor, settings, image)
            except Exception as error:  # e.g. Meta's package missing or a config it cannot build
                timings[impl, dtype] = failure(error)
                continue

            def attempt(impl=impl, run=run, outputs=outputs, failures=failures):
                if impl in failures:
                    return
                try:
                    outputs[impl] = run()
                except Exception as error:  # an implementation that cannot run this dtype is reported, not fatal
                    failures[impl] = failure(error)

            fns[impl] = attempt
        for impl, times in interleaved(fns, warmup=args.warmup, runs=args.runs).items():
            timings[impl, dtype] = failures.get(impl) or summary(times)
            if impl not in failures:
                masks[impl, dtype] = as_matrix(outputs[impl], (height, width))
        del fns, outputs
        gc.collect()
    if args.mode in ("both", "rss"):
        jobs = {(impl, dtype): [*worker_args(args), "--impl", impl, "--dtype", dtype, "--weights", paths[weight_dtype(dtype)]]
                for dtype in args.dtypes for impl in (args.impls if dtype != MIXED else ["sam_hf"])}
        rss = per_process_runs(os.path.abspath(__file__), jobs, args.threads, args.mode, timings)
    for path in paths.values():
        os.remove(path)
    os.rmdir(folder)
    report(args, timings, masks, rss, peaks, config)


def weight_dtype(dtype: str) -> str:
    """The dtype of the weights a mode loads (the mixed mode starts from fp32)."""
    return "fp32" if dtype == MIXED else dtype


def worker_args(args) -> list[str]:
    """This run's settings, for a worker process."""
    settings = ["--variant", args.variant, "--image-size", *map(str, args.image_size), "--points-per-side", str(args.points_per_side),
                "--points-per-batch", str(args.points_per_batch), "--pred-iou-thresh", str(args.pred_iou_thresh),
                "--stability-score-thresh", str(args.stability_score_thresh), "--runs", "1", "--warmup", str(args.warmup)]
    return settings + (["--model", args.model] if args.model else [])


def report(args, timings, masks, rss, peaks, config) -> None:
    import transformers

    source = f"model {args.model}" if args.model else f"{args.variant} (random seeded weights)"
    width, height = args.image_size
    nms_note = ("" if importlib.util.find_spec("torchvision") is not None else
                "; no torchvision: transformers' and Meta's batched_nms calls go to sam_hf's pure-torch NMS (same semantics)")
    print(f"\nSegment everything, {source}, {width} x {height} synthetic image, {args.points_per_side} x {args.points_per_side} "
          f"points in batches of {args.points_per_batch}, pred_iou_thresh {args.pred_iou_thresh}, stability_score_thresh "
          f"{args.stability_score_thresh}, {args.threads} threads, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, median of {args.runs} runs after {args.warmup} warm-up{nms_note}")
    gflop = encoder_gflop(config) + args.points_per_side**2 * decoder_gflop(config)
    print(f"Model work as the original computes it: {gflop:,.0f} GFLOP (encoder, and every point through the decoder); "
          "measured matmul peak: " + ", ".join(f"{d} {p:,.0f} GFLOP/s" for d, p in peaks.items()) + "\n")
    reference = masks.get(("sam_hf", "fp32"))
    headers = ["dtype", "implementation", "median s", "min s", "x vs transformers", "x vs Meta", "% matmul peak", "peak RSS MB", "masks",
               f"ref masks found (IoU>={MATCH_IOU})", "mean best IoU", f"own masks in ref (IoU>={MATCH_IOU})", "mean best IoU"]
    rows, empty = [], False
    for dtype in args.dtypes:
        for impl in args.impls:
            entry = timings.get((impl, dtype))
            memory_text = memory_cell(rss, impl, dtype)
            if not isinstance(entry, dict):
                rows.append([dtype, impl, entry or "-", "", "", "", "", memory_text] + [""] * (len(headers) - 8))
                continue
            ratio = lambda other: (  # noqa: E731
                f"{timings[other, dtype]['median'] / entry['median']:.2f}" if isinstance(timings.get((other, dtype)), dict) else "-"
            )
            share = f"{100 * gflop / entry['median'] / peaks[dtype]:.0f}%"
            if (impl, dtype) not in masks:  # --mode rss: times from the workers, no masks to compare
                rows.append([dtype, impl, f"{entry['median']:.3f}", f"{entry['min']:.3f}", ratio("transformers"), ratio("meta"),
                             share, memory_text] + ["-"] * (len(headers) - 8))
                continue
            own = masks[impl, dtype]
            empty |= own.shape[0] == 0
            agreement = ["-"] * 4
            if reference is not None and reference.shape[0] and own.shape[0]:
                ref_best, own_best = best_ious(reference, own)
                agreement = [f"{int((ref_best >= MATCH_IOU).sum())}/{len(ref_best)}", f"{ref_best.mean():.3f}",
                             f"{int((own_best >= MATCH_IOU).sum())}/{len(own_best)}", f"{own_best.mean():.3f}"]
            count = str(own.shape[0]) if own.shape[0] else "0 (none kept)"
            rows.append([dtype, impl, f"{entry['median']:.3f}", f"{entry['min']:.3f}", ratio("transformers"), ratio("meta"),
                         share, memory_text, count, *agreement])
    print_table(headers, rows)
    if empty:
        print("\nSome implementation kept no mask: random weights predict low IoUs and unstable masks; "
              "lower --pred-iou-thresh / --stability-score-thresh (e.g. 0.5 / 0.8) to compare masks.")


if __name__ == "__main__":
    main()
