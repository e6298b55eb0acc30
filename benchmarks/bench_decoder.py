"""Prompt encoder + mask decoder per prompt, prompts in batches: sam_hf vs transformers' SamModel vs
Meta's segment_anything, same weights, same image embeddings and points, fp32 and bf16.

    nice -n 10 python benchmarks/bench_decoder.py --batch 64 --runs 3

One process, implementations timed round-robin (read the ratios). Each call decodes `--batch` one-point
prompts on one image's embeddings with three masks per prompt (low-resolution logits, no upsampling to
the image), which is the inner loop of segment-everything. `--mode both|rss` also runs each
(implementation, dtype) in a fresh process for its peak resident set. See benchmarks/README.md.
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
    AOTI, APART, COMPILED, DTYPES, IMPLS, ONNX, WITHOUT_KERNELS, add_worker_arguments, interleaved, load_model, matmul_peak, memory_cell, peak_rss_mb, per_process_runs,
    print_table, speedup, summary, timed, timed_apart, write_weights,
)
from _flops import decoder_gflop  # noqa: E402



def prompt_inputs(config, batch: int):
    """Seeded image embeddings (1, C, g, g), `batch` one-point prompts (1, batch, 1, 2) and their labels."""
    generator = torch.Generator().manual_seed(3)
    grid, channels = config.prompt_encoder_config.image_embedding_size, config.prompt_encoder_config.hidden_size
    embeddings = torch.randn(1, channels, grid, grid, generator=generator)
    points = torch.rand(1, batch, 1, 2, generator=generator) * config.vision_config.image_size  # (B, P, N, 2)
    return embeddings, points, torch.ones(1, batch, 1, dtype=torch.long)


def decode(impl: str, model, embeddings: torch.Tensor, points: torch.Tensor, labels: torch.Tensor):
    """-> low-resolution mask logits (P, 3, 4g, 4g) and IoU predictions (P, 3) for P one-point prompts."""
    if impl == WITHOUT_KERNELS:
        from sam_hf import kernels

        with kernels.disabled():
            return decode("sam_hf", model, embeddings, points, labels)
    if impl == "meta":  # Meta's prompt encoder mixes fp32 coordinates with the weights' dtype: autocast
        with torch.autocast("cpu", dtype=embeddings.dtype, enabled=embeddings.dtype != torch.float32):
            sparse, dense = model.prompt_encoder(points=(points[0], labels[0]), boxes=None, masks=None)
            masks, iou = model.mask_decoder(
                image_embeddings=embeddings, image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
            )
        return masks, iou
    if impl in (ONNX, AOTI):
        iou, masks = model(image_embeddings=embeddings, input_points=points, input_labels=labels)
        return masks[0], iou[0]
    out = model(image_embeddings=embeddings, input_points=points, input_labels=labels, multimask_output=True)
    return out.pred_masks[0], out.iou_scores[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit_b", help="only sets the weights; the decoder is the same for all")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=[*IMPLS, WITHOUT_KERNELS, COMPILED, ONNX, AOTI],
                        help=f"{WITHOUT_KERNELS}: sam_hf with its compiled kernels off; {COMPILED}: sam_hf under torch.compile "
                             f"(its first call, a warm-up, compiles); {ONNX}: sam_hf's decoder exported to ONNX, run by onnxruntime "
                             f"(fp32); {AOTI}: sam_hf's decoder exported and compiled by AOTInductor (about a minute, twice per dtype: in its own "
                             "timing process, then for its masks)")
    parser.add_argument("--batch", type=int, default=64, help="prompts per call")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    add_worker_arguments(parser)
    args = parser.parse_args()
    from sam_hf import config_for_variant

    config = config_for_variant(args.variant)
    embeddings, points, labels = prompt_inputs(config, args.batch)
    if args.worker:
        return worker(args, embeddings, points, labels)
    torch.set_num_threads(args.threads)

    folder = tempfile.mkdtemp(prefix="sam_hf_bench_")
    paths = write_weights(args.variant, args.dtypes, folder)
    peaks = {dtype: matmul_peak(DTYPES[dtype]) for dtype in args.dtypes}
    timings, masks, rss = {}, {}, {}
    for dtype in args.dtypes if args.mode in ("both", "timing") else ():
        models, fns = {}, {}
        inputs = embeddings.to(DTYPES[dtype])
        for impl in args.impls:
            if impl in APART:
                continue
            try:
                models[impl] = load_model("sam_hf" if impl == WITHOUT_KERNELS else impl, args.variant, paths[dtype])
                with torch.inference_mode():
                    masks[impl, dtype] = decode(impl, models[impl], inputs, points, labels)[0].float()
                fns[impl] = lambda impl=impl, model=models[impl]: decode(impl, model, inputs, points, labels)
            except Exception as error:  # an implementation that cannot run this dtype is reported, not fatal
                timings[impl, dtype] = f"failed: {type(error).__name__}: {str(error)[:80]}"
        with torch.inference_mode():
            for impl, times in interleaved(fns, warmup=max(0, args.warmup - 1), runs=args.runs).items():
                timings[impl, dtype] = summary(times)
        del models, fns
        gc.collect()
        for impl in (i for i in args.impls if i in APART):  # after the round-robin, in a process of its own (see APART)
            job = ["--variant", args.variant, "--weights", paths[dtype], "--batch", str(args.batch), "--runs", str(args.runs),
                   "--warmup", str(args.warmup)]
            timings[impl, dtype] = timed_apart(os.path.abspath(__file__), impl, dtype, job, args.threads)
            if isinstance(timings[impl, dtype], dict):
                with torch.inference_mode():
                    masks[impl, dtype] = decode(impl, load_model(impl, args.variant, paths[dtype]), inputs, points, labels)[0].float()
    if args.mode in ("both", "rss"):
        jobs = {(impl, dtype): ["--impl", impl, "--dtype", dtype, "--variant", args.variant, "--weights", paths[dtype],
                                "--batch", str(args.batch), "--runs", "1", "--warmup", str(args.warmup)]
                for dtype in args.dtypes for impl in args.impls}
        rss = per_process_runs(os.path.abspath(__file__), jobs, args.threads, args.mode, timings)
    for path in paths.values():
        os.remove(path)
    os.rmdir(folder)
    report(args, config, timings, masks, rss, peaks)


def worker(args, embeddings: torch.Tensor, points: torch.Tensor, labels: torch.Tensor) -> None:
    """One (implementation, dtype) in a fresh process: load, warm up, run; print its times and peak RSS as JSON."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model = load_model("sam_hf" if args.impl == WITHOUT_KERNELS else args.impl, args.variant, args.weights)
    inputs = embeddings.to(DTYPES[args.dtype])
    with torch.inference_mode():
        times = timed(lambda: decode(args.impl, model, inputs, points, labels), warmup=args.warmup, runs=args.runs)
    print(json.dumps({"rss_mb": peak_rss_mb(), "seconds": times}))


def report(args, config, timings, masks, rss, peaks) -> None:
    gflop = decoder_gflop(config)
    print(f"\nPrompt encoder + mask decoder, {args.batch} one-point prompts per call, 3 masks each, {args.threads} threads, "
          f"torch {torch.__version__}, median of {args.runs} calls after {args.warmup} warm-up; {gflop:.2f} GFLOP per prompt "
          "as the original computes it; measured matmul peak: " + ", ".join(f"{d} {p:,.0f} GFLOP/s" for d, p in peaks.items()) + "\n")
    reference = masks.get(("sam_hf", "fp32"))
    rows = []
    for dtype in args.dtypes:
        for impl in args.impls:
            entry = timings.get((impl, dtype))
            memory_text = memory_cell(rss, impl, dtype)
            if not isinstance(entry, dict):
                rows.append([dtype, impl, entry or "-", "", "", "", "", "", memory_text, ""])
                continue
            per_prompt = entry["median"] / args.batch
            diff = f"{(masks[impl, dtype] - reference).abs().max():.1e}" if reference is not None and (impl, dtype) in masks else "-"
            rows.append([dtype, impl, f"{1e3 * per_prompt:.2f}", f"{1e3 * entry['min'] / args.batch:.2f}", speedup(timings, "transformers", dtype, entry),
                         speedup(timings, "meta", dtype, entry), f"{gflop / per_prompt:.0f}", f"{100 * gflop / per_prompt / peaks[dtype]:.0f}%",
                         memory_text, diff])
    print_table(["dtype", "implementation", "ms/prompt (median)", "ms/prompt (min)", "x vs transformers", "x vs Meta", "GFLOP/s",
                 "% matmul peak", "peak RSS MB", "mask logits max abs diff vs sam_hf fp32"], rows)
    if any(isinstance(timings.get(("sam_hf", dtype)), dict) for dtype in args.dtypes):
        print("\nGFLOP/s and % matmul peak count the original's work (benchmarks/_flops.py); sam_hf shares and "
              "folds about half of it away, so its rows can read above 100%.")


if __name__ == "__main__":
    main()
