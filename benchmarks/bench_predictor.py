"""Interactive clicks: the image set once, then one-point prompts with masks at image size, as a point-and-click
tool runs them. sam_hf's `SamHfPredictor` vs Meta's `SamPredictor` vs transformers' `SamModel` on its image
embeddings with its image processor's `post_process_masks`; same weights, same image, same clicks, fp32 and bf16.

    nice -n 10 python benchmarks/bench_predictor.py --variant vit_b --runs 3
    nice -n 10 python benchmarks/bench_predictor.py --model models/sam-hf-shapes-352 --runs 5

One process, implementations timed round-robin (read the ratios). Each implementation embeds the image once
(untimed); a run is `--clicks` clicks at seeded points, each returning three masks at the image's size. transformers
has no predictor: its click is the model on the kept embeddings with the point scaled to the model-input frame (what
its processor does) and `post_process_masks`. Meta's model is run under autocast in bf16, as in bench_decoder.py.
Each row also gives the share of mask pixels equal to sam_hf's fp32 masks. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    COMPILED, DTYPES, IMPLS, WITHOUT_KERNELS, interleaved, load_model, print_table, speedup, summary, without_kernels,
    write_model_weights, write_weights,
)
from bench_segment_everything import image_settings, synthetic_image, transformers_image_processor  # noqa: E402


def clicks_for(image: np.ndarray, count: int) -> np.ndarray:
    """`count` seeded (x, y) points inside the image, in its pixel frame."""
    height, width = image.shape[:2]
    return np.random.default_rng(5).random((count, 2)) * np.array([width - 1, height - 1])


def make_clicker(impl: str, model, dtype: str, image: np.ndarray, settings):
    """Embed `image` once; return a function: (x, y) -> (3, H, W) bool masks at the image's size."""
    label = np.array([1])
    if impl in ("sam_hf", COMPILED):
        from sam_hf import SamHfImageProcessor, SamHfPredictor

        predictor = SamHfPredictor(model, SamHfImageProcessor(longest_edge=settings[0]))
        predictor.set_image(image)
        return lambda point: predictor.predict(point_coords=point[None], point_labels=label)[0]
    if impl == "meta":
        from segment_anything import SamPredictor

        size, mean, std = settings
        with torch.no_grad():  # load_model leaves them zero (unused by the model benchmarks)
            model.pixel_mean.copy_(torch.tensor(mean).view(-1, 1, 1))
            model.pixel_std.copy_(torch.tensor(std).view(-1, 1, 1))
        predictor = SamPredictor(model)
        autocast = lambda: torch.autocast("cpu", dtype=DTYPES[dtype], enabled=dtype != "fp32")  # noqa: E731
        with autocast():
            predictor.set_image(image)

        def click(point):
            with autocast():
                return predictor.predict(point_coords=point[None], point_labels=label)[0]

        return click
    if impl == "transformers":
        processor = transformers_image_processor(settings)
        inputs = processor(image, return_tensors="pt")
        embeddings = model.get_image_embeddings(inputs["pixel_values"].to(DTYPES[dtype]))
        original, resized = inputs["original_sizes"], inputs["reshaped_input_sizes"]
        scale = (resized[0].flip(0) / original[0].flip(0)).double()  # (x, y) ratios, as the processor scales points

        def click(point):
            scaled = (torch.from_numpy(point) * scale).float().view(1, 1, 1, 2)
            out = model(image_embeddings=embeddings, input_points=scaled, input_labels=torch.ones(1, 1, 1, dtype=torch.long),
                        multimask_output=True)
            return processor.post_process_masks(out.pred_masks.float(), original, resized)[0][0].numpy()

        return click
    if impl == WITHOUT_KERNELS:
        return without_kernels(without_kernels(make_clicker)("sam_hf", model, dtype, image, settings))
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit_b", help="random seeded weights of this preset (ignored with --model)")
    parser.add_argument("--model", help="a saved SamHf model folder, loaded into all three implementations")
    parser.add_argument("--image-size", nargs=2, type=int, default=[1024, 683], metavar=("W", "H"))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=[*IMPLS, COMPILED, WITHOUT_KERNELS],
                        help=f"{COMPILED}: sam_hf's predictor on its model under torch.compile (the first click, a warm-up, compiles); "
                             f"{WITHOUT_KERNELS}: sam_hf with its compiled kernels off (the image embedded without them too)")
    parser.add_argument("--clicks", type=int, default=8, help="clicks per timed run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from sam_hf import config_for_variant

    torch.set_num_threads(args.threads)
    image = synthetic_image(*args.image_size)
    points = clicks_for(image, args.clicks)
    folder = tempfile.mkdtemp(prefix="sam_hf_bench_")
    if args.model:
        config, paths = write_model_weights(args.model, args.dtypes, folder)
    else:
        config, paths = config_for_variant(args.variant), write_weights(args.variant, args.dtypes, folder)
    settings = image_settings(config, None)
    timings, masks = {}, {}
    for dtype in args.dtypes:
        fns = {}
        for impl in args.impls:
            try:
                model = load_model(impl, args.variant, paths[dtype], config=config)
                with torch.inference_mode():
                    clicker = make_clicker(impl, model, dtype, image, settings)
                    masks[impl, dtype] = np.stack([clicker(point) for point in points])  # (clicks, 3, H, W)
                fns[impl] = lambda clicker=clicker: [clicker(point) for point in points]
            except Exception as error:  # an implementation that cannot run this dtype is reported, not fatal
                timings[impl, dtype] = f"failed: {type(error).__name__}: {str(error)[:80]}"
        with torch.inference_mode():
            for impl, times in interleaved(fns, warmup=args.warmup, runs=args.runs).items():
                timings[impl, dtype] = summary(times)
        del fns
        gc.collect()
    for path in paths.values():
        os.remove(path)
    os.rmdir(folder)
    report(args, timings, masks)


def report(args, timings, masks) -> None:
    width, height = args.image_size
    source = f"model {args.model}" if args.model else f"{args.variant} (random seeded weights)"
    print(f"\nClicks on a {width} x {height} synthetic image, {source}, {args.clicks} one-point "
          f"clicks per run, 3 masks each at the image's size, {args.threads} threads, torch {torch.__version__}, median of "
          f"{args.runs} runs after {args.warmup} warm-up\n")
    reference = masks.get(("sam_hf", "fp32"))
    rows = []
    for dtype in args.dtypes:
        for impl in args.impls:
            entry = timings.get((impl, dtype))
            if not isinstance(entry, dict):
                rows.append([dtype, impl, entry or "-", "", "", "", ""])
                continue
            same = f"{(masks[impl, dtype] == reference).mean():.5f}" if reference is not None else "-"
            rows.append([dtype, impl, f"{1e3 * entry['median'] / args.clicks:.1f}", f"{1e3 * entry['min'] / args.clicks:.1f}",
                         speedup(timings, "transformers", dtype, entry), speedup(timings, "meta", dtype, entry), same])
    print_table(["dtype", "implementation", "ms/click (median)", "ms/click (min)", "x vs transformers", "x vs Meta",
                 "mask pixels equal to sam_hf fp32"], rows)


if __name__ == "__main__":
    main()
