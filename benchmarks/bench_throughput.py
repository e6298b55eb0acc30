"""Images per second for promptable segmentation: image encoder on a batch of images, then each image's point
prompts through the prompt encoder and mask decoder, and the masks upscaled to the image and thresholded.
sam_hf vs transformers' SamModel (SDPA) vs Meta's segment_anything, same weights, same inputs, one process.

    python benchmarks/bench_throughput.py --device cuda --variant vit_h --dtypes bf16 fp32 --batch 8 --points 8

This is the workload of segment-anything-fast's published figures (a batch of images through the encoder,
then `predict_torch` on each image's points, in img/s; they use COCO val2017 and the masks' centre points,
about 7 per image, here random 1024 x 1024 images and `--points` random one-point prompts each). On a GPU
every timed batch ends with `torch.cuda.synchronize()`; TF32 is off, so fp32 is fp32. The table gives img/s
(median over `--batches`), the encoder alone, peak device memory (weights included) and the encoder's
share of the measured bf16/fp32 matmul peak; the accuracy table compares each row's low-resolution mask
logits and binary masks with sam_hf's fp32 (or, without fp32, sam_hf's own dtype) on the same batch.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DTYPES, IMPLS, load_model, matmul_peak, print_table, speedup, timed, write_weights  # noqa: E402
from _flops import encoder_gflop  # noqa: E402
from bench_encoder import VARIANTS, encode  # noqa: E402


def decode(impl: str, model, embeddings: torch.Tensor, points: torch.Tensor, labels: torch.Tensor):
    """(B, 256, g, g) embeddings, (B, P, 1, 2) points -> low-res logits (B, P, 3, 4g, 4g), IoU (B, P, 3)."""
    if impl == "meta":  # Meta's predictor: one image at a time; its fp32 coordinates need autocast in bf16
        masks, scores = [], []
        with torch.autocast(embeddings.device.type, dtype=embeddings.dtype, enabled=embeddings.dtype != torch.float32):
            for b in range(embeddings.shape[0]):
                sparse, dense = model.prompt_encoder(points=(points[b], labels[b]), boxes=None, masks=None)
                low, iou = model.mask_decoder(
                    image_embeddings=embeddings[b : b + 1], image_pe=model.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
                )
                masks.append(low)
                scores.append(iou)
        return torch.stack(masks), torch.stack(scores)
    out = model(image_embeddings=embeddings, input_points=points, input_labels=labels, multimask_output=True)
    return out.pred_masks, out.iou_scores


def segment(impl: str, model, pixels: torch.Tensor, points: torch.Tensor, labels: torch.Tensor):
    """The timed work for one batch -> (low-res logits, binary masks at image size (B, P, 3, S, S))."""
    embeddings = encode(impl, model, pixels)
    low, _ = decode(impl, model, embeddings, points, labels)
    size = pixels.shape[-1]
    full = F.interpolate(low.flatten(0, 1), (size, size), mode="bilinear", align_corners=False)  # (B*P, 3, S, S)
    return low, (full > 0.0).view(*low.shape[:3], size, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", default="vit_h", choices=VARIANTS)
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--batch", type=int, default=8, help="images per encoder call")
    parser.add_argument("--points", type=int, default=8, help="one-point prompts per image")
    parser.add_argument("--batches", type=int, default=5, help="timed batches (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (on a CPU device)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    from sam_hf import config_for_variant

    size = config_for_variant(args.variant).vision_config.image_size
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(args.batch, 3, size, size, generator=generator)
    points = (torch.rand(args.batch, args.points, 1, 2, generator=generator) * size).to(device)  # (B, P, 1, 2)
    labels = torch.ones(args.batch, args.points, 1, dtype=torch.long, device=device)
    folder = tempfile.mkdtemp(prefix="sam_hf_bench_")
    paths = write_weights(args.variant, args.dtypes, folder)
    peak_size = 8192 if device.type == "cuda" else 2048  # a GPU needs a large product to reach its peak
    peaks = {dtype: matmul_peak(DTYPES[dtype], size=peak_size, device=device) for dtype in args.dtypes}

    results, outputs = {}, {}
    for dtype in args.dtypes:
        inputs = pixels.to(device=device, dtype=DTYPES[dtype])
        for impl in args.impls:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                model = load_model(impl, args.variant, paths[dtype]).to(device)
                with torch.inference_mode():
                    low, binary = segment(impl, model, inputs, points, labels)
                    outputs[impl, dtype] = (low.float().cpu(), binary.cpu())
                    full = timed(lambda: segment(impl, model, inputs, points, labels), warmup=args.warmup,
                                 runs=args.batches, device=device)
                    encoder = timed(lambda: encode(impl, model, inputs), warmup=1, runs=args.batches, device=device)
                memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
                results[impl, dtype] = {"full": statistics.median(full), "encoder": statistics.median(encoder), "memory": memory}
            except Exception as error:  # an implementation that cannot run a mode is reported, not fatal
                results[impl, dtype] = f"failed: {type(error).__name__}: {str(error)[:90]}"
            model = None
    for path in paths.values():
        os.remove(path)
    os.rmdir(folder)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"\n{args.variant}, {name}, torch {torch.__version__}: batches of {args.batch} {size} x {size} images, "
          f"{args.points} one-point prompts each (3 masks), median of {args.batches} batches after {args.warmup} warm-up; "
          f"matmul peak " + ", ".join(f"{d} {p:,.0f} GFLOP/s" for d, p in peaks.items()) + "\n")
    rows = []
    for dtype in args.dtypes:
        for impl in args.impls:
            entry = results.get((impl, dtype))
            if not isinstance(entry, dict):
                rows.append([dtype, impl, entry or "-", "", "", "", "", ""])
                continue
            share = encoder_gflop(config_for_variant(args.variant)) * args.batch / entry["encoder"] / peaks[dtype]
            memory = f"{entry['memory']:.1f}" if entry["memory"] is not None else "-"
            rows.append([dtype, impl, f"{args.batch / entry['full']:.1f}", f"{args.batch / entry['encoder']:.1f}",
                         speedup(results, "transformers", dtype, entry, "full"), speedup(results, "meta", dtype, entry, "full"), memory, f"{100 * share:.0f}%"])
    print_table(["dtype", "implementation", "img/s", "encoder img/s", "x vs transformers", "x vs Meta",
                 "peak GiB", "encoder % of matmul peak"], rows)

    reference_key = ("sam_hf", "fp32") if ("sam_hf", "fp32") in outputs else ("sam_hf", args.dtypes[0])
    if reference_key in outputs:
        ref_low, ref_masks = outputs[reference_key]
        prompts = args.batch * args.points
        print(f"\nAgainst sam_hf {reference_key[1]} on the first batch ({prompts} prompts, {3 * prompts} masks)\n")
        rows = []
        for (impl, dtype), (low, masks) in outputs.items():
            if (impl, dtype) == reference_key:
                continue
            inter = (masks & ref_masks).flatten(-2).sum(-1).double()
            union = (masks | ref_masks).flatten(-2).sum(-1).double()
            iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
            rows.append([dtype, impl, f"{(low - ref_low).abs().max():.1e}", f"{iou.min():.4f}", f"{iou.mean():.4f}",
                         f"{int((iou >= 0.95).sum())}/{iou.numel()}"])
        print_table(["dtype", "implementation", "low-res logits max abs diff", "mask IoU min", "mask IoU mean",
                     "masks with IoU >= 0.95"], rows)


if __name__ == "__main__":
    main()
