"""Fine-tuning steps: sam_hf vs transformers' SamModel (SDPA), same weights, same batch, fp32 and under
`torch.autocast("cpu", dtype=torch.bfloat16)` (what Accelerate's `mixed_precision="bf16"` runs).

    nice -n 10 python benchmarks/bench_training.py --variant vit_b --trainable all decoder --runs 3

One step: the model from pixel values with one box prompt per mask, a loss (sigmoid cross-entropy on the
low-resolution mask logits plus the IoU head's squared error), backward, an AdamW update. `--trainable all` trains
every weight; `decoder` freezes the vision and prompt encoders, as the usual SAM fine-tuning recipe does.
Implementations are timed round-robin in one process (read the ratios); their first-step losses are printed side by
side (same weights, same batch: they should agree to rounding). `--mode both|rss` also runs each configuration in a
fresh process for its peak resident set. Meta's segment_anything has no training entry point (its `Sam.forward` runs
under `torch.no_grad`), so it is not measured here. See benchmarks/README.md.
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
    add_worker_arguments, interleaved, load_model, peak_rss_mb, print_table, run_worker, speedup, summary, timed,
    write_weights,
)

IMPLS = ("sam_hf", "transformers")
PRECISIONS = ("fp32", "bf16-autocast")
TRAINABLE = ("all", "decoder")


def batch_for(config, images: int, prompts: int):
    """Seeded pixels (B, 3, S, S), boxes (B, P, 4) in the model-input frame and binary targets (B, P, 1, 4g, 4g)."""
    generator = torch.Generator().manual_seed(0)
    size = config.vision_config.image_size
    low_res = 4 * config.prompt_encoder_config.image_embedding_size
    pixels = torch.randn(images, 3, size, size, generator=generator)
    corner = torch.rand(images, prompts, 2, generator=generator) * size * 0.6
    boxes = torch.cat([corner, corner + size * (0.1 + 0.3 * torch.rand(images, prompts, 2, generator=generator))], dim=-1)
    targets = (torch.rand(images, prompts, 1, low_res, low_res, generator=generator) > 0.5).float()
    return pixels, boxes, targets


class Trainer:
    """One implementation's model, optimizer and step on a fixed batch."""

    def __init__(self, model: torch.nn.Module, trainable: str, precision: str, batch) -> None:
        self.model = model.train()
        for name, param in model.named_parameters():
            param.requires_grad_(trainable == "all" or name.startswith("mask_decoder."))
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        self.autocast = precision == "bf16-autocast"
        self.pixels, self.boxes, self.targets = batch

    def step(self) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(pixel_values=self.pixels, input_boxes=self.boxes, multimask_output=False)
        logits, iou = out.pred_masks.float(), out.iou_scores.float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, self.targets) + iou.square().mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "tiny"])
    parser.add_argument("--trainable", nargs="+", default=list(TRAINABLE), choices=TRAINABLE)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--images", type=int, default=1, help="images per step")
    parser.add_argument("--prompts", type=int, default=4, help="box prompts per image")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    add_worker_arguments(parser)
    parser.add_argument("--what", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from sam_hf import config_for_variant

    config = config_for_variant(args.variant)
    batch = batch_for(config, args.images, args.prompts)
    if args.worker:
        return worker(args, batch)
    torch.set_num_threads(args.threads)
    folder = tempfile.mkdtemp(prefix="sam_hf_bench_")
    path = write_weights(args.variant, ["fp32"], folder)["fp32"]
    timings, losses, rss = {}, {}, {}
    cases = [(trainable, precision) for trainable in args.trainable for precision in args.precisions]
    for trainable, precision in cases if args.mode in ("both", "timing") else ():
        trainers = {impl: Trainer(load_model(impl, args.variant, path), trainable, precision, batch) for impl in args.impls}
        for impl, trainer in trainers.items():
            losses[impl, trainable, precision] = trainer.step()  # also the first warm-up step
        times = interleaved({impl: t.step for impl, t in trainers.items()}, warmup=max(0, args.warmup - 1), runs=args.runs)
        for impl, seconds in times.items():
            timings[impl, trainable, precision] = summary(seconds)
        del trainers
        gc.collect()
    if args.mode in ("both", "rss"):
        for trainable, precision in cases:
            for impl in args.impls:
                what = json.dumps([impl, trainable, precision])
                result = run_worker(os.path.abspath(__file__), [
                    "--what", what, "--weights", path, "--variant", args.variant, "--images", str(args.images),
                    "--prompts", str(args.prompts), "--warmup", str(args.warmup)], args.threads)
                rss[impl, trainable, precision] = result
                if args.mode == "rss" and "seconds" in result:
                    timings[impl, trainable, precision] = summary(result["seconds"])
    os.remove(path)
    os.rmdir(folder)
    report(args, timings, losses, rss)


def worker(args, batch) -> None:
    """One (implementation, trainable, precision) in a fresh process: warm-up steps, one timed step, peak RSS."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    impl, trainable, precision = json.loads(args.what)
    trainer = Trainer(load_model(impl, args.variant, args.weights), trainable, precision, batch)
    seconds = timed(trainer.step, warmup=args.warmup, runs=1)
    print(json.dumps({"rss_mb": peak_rss_mb(), "seconds": seconds}))


def report(args, timings, losses, rss) -> None:
    print(f"\nTraining steps, {args.variant}, {args.images} image(s) x {args.prompts} box prompts, {args.threads} threads, "
          f"torch {torch.__version__}, median of {args.runs} steps after {args.warmup} warm-up\n")
    rows = []
    for trainable in args.trainable:
        for precision in args.precisions:
            by_impl = {impl: timings.get((impl, trainable, precision)) for impl in args.impls}
            for impl in args.impls:
                entry, memory = by_impl[impl], rss.get((impl, trainable, precision), {})
                memory_text = f"{memory['rss_mb']:,.0f}" if "rss_mb" in memory else memory.get("error", "-")
                loss = losses.get((impl, trainable, precision))
                if entry is None:
                    rows.append([trainable, precision, impl, "-", "-", "-", "-", memory_text])
                    continue
                ratio = speedup({("transformers", 0): by_impl.get("transformers")}, "transformers", 0, entry)
                rows.append([trainable, precision, impl, f"{entry['median']:.3f}", f"{entry['min']:.3f}", ratio,
                             "-" if loss is None else f"{loss:.9f}", memory_text])
    print_table(["trainable", "precision", "implementation", "median s/step", "min s/step", "x vs transformers",
                 "first-step loss", "peak RSS MB"], rows)


if __name__ == "__main__":
    main()
