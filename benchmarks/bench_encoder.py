"""Image encoder: sam_hf vs transformers' SamModel (SDPA) vs Meta's segment_anything, same weights,
same image, fp32 and bf16.

    nice -n 10 python benchmarks/bench_encoder.py --variant vit_b --runs 3
    nice -n 10 python benchmarks/bench_encoder.py --variant vit_h --dtypes bf16 --runs 1 --warmup 1 --mode rss

Timing runs the implementations round-robin in one process (machine noise hits all alike; the ratios
are what to read). Peak memory is measured per (implementation, dtype) in a fresh process: load the
weights in that dtype, one warm-up, one run, `ru_maxrss`. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    APART, DTYPES, IMPLS, ONNX, WITHOUT_KERNELS, add_worker_arguments, interleaved, load_model, matmul_peak, memory_cell, peak_rss_mb,
    per_process_runs, print_table, speedup, summary, timed, timed_apart, without_kernels, write_weights,
)

from _flops import encoder_gflop  # noqa: E402

VARIANTS = ("vit_b", "vit_l", "vit_h")


def encode(impl: str, model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    if impl == WITHOUT_KERNELS:
        return without_kernels(encode)("sam_hf", model, pixels)
    if impl == "meta":
        return model.image_encoder(pixels)
    if impl == ONNX:
        return model(pixel_values=pixels)[0]
    return model.get_image_embeddings(pixels)


def pixels_for(variant: str, dtype: str) -> torch.Tensor:
    from sam_hf import config_for_variant

    size = config_for_variant(variant).vision_config.image_size
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(DTYPES[dtype])


def mask_logits(model, embeddings: torch.Tensor) -> torch.Tensor:
    """sam_hf's low-res mask logits for 16 fixed one-point prompts on these embeddings."""
    generator = torch.Generator().manual_seed(2)
    points = torch.rand(1, 16, 1, 2, generator=generator) * model.config.vision_config.image_size
    return model(image_embeddings=embeddings, input_points=points, multimask_output=True).pred_masks.float()


def worker(args) -> None:
    """One configuration in a fresh process: load, warm up, run; print timings and peak RSS."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model = load_model(args.impl, args.variant, args.weights, part="encoder")
    loaded = peak_rss_mb()
    pixels = pixels_for(args.variant, args.dtype)
    with torch.inference_mode():
        times = timed(lambda: encode(args.impl, model, pixels), warmup=args.warmup, runs=args.runs)
    print(json.dumps({"rss_mb": peak_rss_mb(), "load_rss_mb": loaded, "seconds": times}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit_b", choices=VARIANTS)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=[*IMPLS, WITHOUT_KERNELS, ONNX],
                        help=f"{WITHOUT_KERNELS}: sam_hf with its compiled kernels off; {ONNX}: sam_hf's encoder exported to ONNX, "
                             "run by onnxruntime (fp32)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    add_worker_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    torch.set_num_threads(args.threads)
    folder = tempfile.mkdtemp(prefix="sam_hf_bench_")
    paths = write_weights(args.variant, args.dtypes, folder)
    peaks = {dtype: matmul_peak(DTYPES[dtype]) for dtype in args.dtypes}
    timings, outputs, masks, rss = {}, {}, {}, {}
    if args.mode in ("both", "timing"):
        for dtype in args.dtypes:
            pixels = pixels_for(args.variant, dtype)
            models, fns = {}, {}
            for impl in args.impls:
                if impl in APART:
                    continue
                try:
                    models[impl] = load_model(impl, args.variant, paths[dtype], part="encoder")
                    with torch.inference_mode():
                        outputs[impl, dtype] = encode(impl, models[impl], pixels).float()
                    fns[impl] = lambda impl=impl: encode(impl, models[impl], pixels)
                except Exception as error:  # an implementation that cannot run this dtype is reported, not fatal
                    timings[impl, dtype] = f"failed: {type(error).__name__}: {str(error)[:80]}"
            with torch.inference_mode():
                for impl, times in interleaved(fns, warmup=max(0, args.warmup - 1), runs=args.runs).items():
                    timings[impl, dtype] = summary(times)
                if "sam_hf" in models:
                    masks[dtype] = mask_logits(models["sam_hf"], outputs["sam_hf", dtype].to(DTYPES[dtype]))
            del models, fns
            gc.collect()
            for impl in (i for i in args.impls if i in APART):  # after the round-robin, in a process of its own (see APART)
                job = ["--variant", args.variant, "--weights", paths[dtype], "--runs", str(args.runs), "--warmup", str(args.warmup)]
                timings[impl, dtype] = timed_apart(os.path.abspath(__file__), impl, dtype, job, args.threads)
                if isinstance(timings[impl, dtype], dict):
                    with torch.inference_mode():
                        outputs[impl, dtype] = encode(impl, load_model(impl, args.variant, paths[dtype], part="encoder"), pixels).float()
    if args.mode in ("both", "rss"):
        jobs = {(impl, dtype): ["--impl", impl, "--dtype", dtype, "--variant", args.variant, "--weights", paths[dtype],
                                "--runs", "1", "--warmup", str(args.warmup)]
                for dtype in args.dtypes for impl in args.impls}
        rss = per_process_runs(os.path.abspath(__file__), jobs, args.threads, args.mode, timings)
    for path in paths.values():
        os.remove(path)
    os.rmdir(folder)
    report(args, timings, rss, peaks, outputs, masks)


def report(args, timings, rss, peaks, outputs, masks) -> None:
    from sam_hf import config_for_variant

    gflop = encoder_gflop(config_for_variant(args.variant))
    print(f"\nImage encoder {args.variant}, 1 image, {args.threads} threads, torch {torch.__version__}, "
          f"median of {args.runs} runs after {args.warmup} warm-up; measured matmul peak: "
          + ", ".join(f"{d} {p:,.0f} GFLOP/s" for d, p in peaks.items()) + "\n")
    headers = ["dtype", "implementation", "median s", "min s", "x vs transformers", "x vs Meta", "% matmul peak", "peak RSS MB"]
    rows = []
    for dtype in args.dtypes:
        for impl in args.impls:
            entry = timings.get((impl, dtype))
            memory_text = memory_cell(rss, impl, dtype)
            if not isinstance(entry, dict):
                rows.append([dtype, impl, entry or "-", "", "", "", "", memory_text])
                continue
            fraction = gflop / entry["median"] / peaks[dtype]
            rows.append([dtype, impl, f"{entry['median']:.3f}", f"{entry['min']:.3f}", speedup(timings, "transformers", dtype, entry), speedup(timings, "meta", dtype, entry),
                         f"{100 * fraction:.0f}%", memory_text])
    print_table(headers, rows)
    reference = outputs.get(("sam_hf", "fp32"))
    if reference is None:
        return
    print("\nAccuracy vs sam_hf fp32 (same weights and image): image embeddings, and sam_hf's mask logits for 16 one-point prompts\n")
    rows = []
    for (impl, dtype), embeddings in outputs.items():
        diff = (embeddings - reference).abs()
        row = [impl, dtype, f"{diff.max():.2e}", f"{diff.mean():.2e}", f"{reference.abs().mean():.2e}"]
        if impl == "sam_hf" and dtype in masks and "fp32" in masks:
            mask_diff = (masks[dtype] - masks["fp32"]).abs()
            row += [f"{mask_diff.max():.2e}", f"{mask_diff.mean():.2e}", f"{(masks[dtype] > 0).ne(masks['fp32'] > 0).float().mean():.2e}"]
        else:
            row += ["", "", ""]
        rows.append(row)
    print_table(["implementation", "dtype", "embedding max abs", "mean abs", "(mean |ref|)", "mask logits max abs", "mean abs",
                 "mask pixels flipped"], rows)


if __name__ == "__main__":
    main()
