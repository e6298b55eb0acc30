"""Shared pieces of the benchmarks: same-weights models for sam_hf, transformers' SamModel and Meta's
segment_anything, timing, peak memory, the machine's matmul peak, and table printing.

Weights are random (seeded), with non-zero relative-position tables and absolute position embedding,
written once per dtype with `torch.save`; every implementation loads that same file with
`load_state_dict(assign=True)` into a model built on the meta device, so a process holds one copy of
the weights in the measured dtype and nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("sam_hf", "transformers", "meta")
# sam_hf's model under `torch.compile` (Inductor, default mode): while the compiler traces, sam_hf's compiled kernels and
# direct oneDNN calls step aside and it gets the PyTorch paths (README, "torch.compile"); its first call compiles
COMPILED = "sam_hf_compiled"
# sam_hf with its compiled kernels off (`sam_hf.kernels.disabled()` around each call): what they gain, in the same run
WITHOUT_KERNELS = "sam_hf_pytorch"
# sam_hf's model exported to ONNX (`sam_hf.export.export_onnx`: the decoder, or the encoder) and run by onnxruntime on the
# CPU with torch's thread count; fp32 only
ONNX = "sam_hf_onnx"
# sam_hf's model exported (`sam_hf.export.export_program`: the decoder, or the encoder) and compiled by AOTInductor
# (`torch._inductor.aoti_compile_and_package`, its default settings: about a minute for ViT-B's decoder on two cores)
AOTI = "sam_hf_aoti"
HERE = os.path.dirname(os.path.abspath(__file__))
STUBS = os.path.join(HERE, "..", "tests", "_stubs")


def import_segment_anything() -> bool:
    """Import Meta's package; without torchvision, with the tests' stand-in on sys.path only meanwhile
    (transformers settles its own torchvision check first and never sees the stand-in)."""
    if "segment_anything.modeling" in sys.modules:
        return True
    if importlib.util.find_spec("segment_anything") is None:
        return False
    if importlib.util.find_spec("torchvision") is None:
        import transformers.image_utils  # noqa: F401
        import transformers.modeling_utils  # noqa: F401

        sys.path.insert(0, STUBS)
        try:
            importlib.import_module("segment_anything.modeling")
        finally:
            sys.path.remove(STUBS)
            for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
                del sys.modules[name]
    else:
        importlib.import_module("segment_anything.modeling")
    return True


def write_weights(variant: str, dtypes: list[str], folder: str, seed: int = 0) -> dict[str, str]:
    """A seeded sam_hf state dict (rel-pos tables and pos-embed non-zero) saved once per dtype."""
    from sam_hf import SamHfModel, config_for_variant

    torch.manual_seed(seed)
    model = SamHfModel(config_for_variant(variant)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(std=0.1)
    paths = {}
    for dtype in dtypes:
        paths[dtype] = os.path.join(folder, f"{variant}_{dtype}.pt")
        torch.save({k: v.to(DTYPES[dtype]) for k, v in model.state_dict().items()}, paths[dtype])
    return paths


def write_model_weights(model_path: str, dtypes: list[str], folder: str):
    """A saved SamHf model folder's state dict, saved once per dtype like `write_weights`.

    Returns (config, {dtype: path}); pass the config to `load_model(..., config=config)`.
    """
    from sam_hf import SamHfModel

    model = SamHfModel.from_pretrained(model_path).eval()
    state = model.state_dict()
    paths = {}
    for dtype in dtypes:
        paths[dtype] = os.path.join(folder, f"model_{dtype}.pt")
        torch.save({k: v.to(DTYPES[dtype]) for k, v in state.items()}, paths[dtype])
    return model.config, paths


def load_model(impl: str, variant: str, path: str, config=None, *, part: str = "decoder") -> torch.nn.Module:
    """One implementation with the saved weights, in their dtype, in eval mode (SDPA where offered); `COMPILED`: sam_hf's
    model under `torch.compile`; `ONNX`: the model's `part` ("decoder" or "encoder") in onnxruntime (`OnnxPart`); `AOTI`:
    that part compiled by AOTInductor (`AotiPart`).

    `config` (a SamHfConfig) replaces the variant's preset, for weights from `write_model_weights`.
    """
    from sam_hf import SamHfModel, config_for_variant

    if impl == COMPILED:
        return torch.compile(load_model("sam_hf", variant, path, config))
    if impl == WITHOUT_KERNELS:
        return load_model("sam_hf", variant, path, config)
    if impl == ONNX:
        return OnnxPart(load_model("sam_hf", variant, path, config), part)
    if impl == AOTI:
        return AotiPart(load_model("sam_hf", variant, path, config), part)
    config = config if config is not None else config_for_variant(variant)
    state = torch.load(path, weights_only=True)
    with torch.device("meta"):
        if impl == "sam_hf":
            model = SamHfModel(config)
        elif impl == "transformers":
            from transformers import SamModel

            sys.path.insert(0, os.path.join(HERE, "..", "tests"))
            from references import transformers_config

            model = SamModel(transformers_config(config))
            state["prompt_encoder.shared_embedding.positional_embedding"] = state["shared_image_embedding.positional_embedding"]
        elif impl == "meta":
            if not import_segment_anything():
                raise RuntimeError("segment_anything is not installed")
            from sam_hf.checkpoints import convert_to_meta_state_dict
            from sam_hf.meta_reference import build_meta_sam

            model = build_meta_sam(config)
            state = convert_to_meta_state_dict(state)
        else:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    model.load_state_dict(state, strict=impl != "meta", assign=True)
    if impl == "meta":  # Meta's pixel_mean/pixel_std are not saved (unused here): give them real storage
        for name, buffer in list(model.named_buffers()):
            if buffer.is_meta:
                owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
                owner.register_buffer(name.rpartition(".")[2], torch.zeros(buffer.shape, dtype=buffer.dtype), persistent=False)
    if impl == "transformers":
        model.set_attn_implementation("sdpa")
    return model.eval()


class OnnxPart:
    """A part ("decoder" or "encoder") of a sam_hf model exported to ONNX (`sam_hf.export.export_onnx`) in an onnxruntime
    session on the CPU, `intra_op_num_threads` torch's thread count, no spinning between runs (`ONNX`). Called with torch tensors as
    `program.module()` would be (keywords), it returns torch tensors. The ONNX file is read into the session and deleted."""

    def __init__(self, model: torch.nn.Module, part: str) -> None:
        import shutil
        import tempfile

        import onnxruntime
        from sam_hf.export import export_onnx

        if next(model.parameters()).dtype != torch.float32:
            raise ValueError("the ONNX rows run fp32 only (onnxruntime's CPU provider has no bf16 products)")
        folder = tempfile.mkdtemp(prefix="sam_hf_onnx_")
        try:
            path = export_onnx(model, os.path.join(folder, f"{part}.onnx"), part)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
            # no spinning after a run: idle threads would keep the cores the next run needs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        finally:
            shutil.rmtree(folder)
        self.config = model.config

    def __call__(self, **inputs: torch.Tensor):
        outputs = self.session.run(None, {name: value.contiguous().numpy() for name, value in inputs.items()})
        return tuple(torch.from_numpy(output) for output in outputs)


class AotiPart:
    """A part ("decoder" or "encoder") of a sam_hf model as a `torch.export` program (`sam_hf.export.export_program`)
    compiled by AOTInductor and loaded back (`AOTI`), called as `program.module()` would be (keywords). The package is
    written to a temporary folder, deleted once loaded."""

    def __init__(self, model: torch.nn.Module, part: str) -> None:
        import shutil
        import tempfile

        from sam_hf.export import export_program

        folder = tempfile.mkdtemp(prefix="sam_hf_aoti_")
        try:
            program = export_program(model, part)
            path = torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(folder, f"{part}.pt2"))
            self.runner = torch._inductor.aoti_load_package(path)
        finally:
            shutil.rmtree(folder)
        self.config = model.config

    def __call__(self, **inputs: torch.Tensor):
        return self.runner(**inputs)


def without_kernels(fn):
    """`fn` called with sam_hf's compiled kernels off (`WITHOUT_KERNELS`)."""
    from sam_hf import kernels

    def call(*args, **kwargs):
        with kernels.disabled():
            return fn(*args, **kwargs)

    return call


def synchronize(device: torch.device | str = "cpu") -> None:
    """Wait for the device's queued work (a no-op on a CPU), so that a wall-clock time covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, *, warmup: int, runs: int, device: torch.device | str = "cpu") -> list[float]:
    """Wall times of `runs` calls after `warmup` ones, each ending once `device` has finished."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def interleaved(fns: dict, *, warmup: int, runs: int) -> dict[str, list[float]]:
    """Time several functions round-robin, so that machine noise hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def matmul_peak(dtype: torch.dtype, size: int = 2048, runs: int = 5, device: torch.device | str = "cpu") -> float:
    """GFLOP/s of a square matmul on this device (best of `runs`): torch.mm, and on a CPU also oneDNN's product
    where sam_hf uses it (MKL's fp32 sgemm runs its AVX2 code on AMD CPUs, about half of oneDNN's AVX-512 rate)."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    out = torch.empty(size, size, dtype=dtype, device=device)
    best = min(timed(lambda: torch.mm(a, b, out=out), warmup=2, runs=runs, device=device))
    from sam_hf.modeling.layers import fused_linear_available, onednn_linear

    if fused_linear_available(a):
        with torch.inference_mode():
            best = min(best, *timed(lambda: onednn_linear(a, b), warmup=2, runs=runs, device=device))
    return 2 * size**3 / best / 1e9


def proc_status_mb(field: str) -> float | None:
    """A memory field of Linux's /proc/self/status (`VmRSS`, `VmHWM`, ...) in MB; None where unavailable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set of this process so far, in MB.

    Linux's VmHWM where available: `ru_maxrss` of a child also counts the parent's peak, which it
    inherits at exec, so it would report the benchmark driver's memory instead of the worker's.
    """
    peak = proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6


def run_worker(script: str, args: list[str], threads: int) -> dict:
    """Run `script --worker ...` in a fresh process; it prints one JSON line last."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, script, "--worker", *args], capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(lines[-1])


def add_worker_arguments(parser) -> None:
    """`--mode` (both: timing and one fresh process per implementation and dtype for its peak RSS; timing; rss) and
    the hidden arguments that tell a worker process what to run."""
    parser.add_argument("--mode", default="both", choices=["both", "timing", "rss"], help="rss: per-process runs only")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)


# Implementations timed in a fresh process of their own (`timed_apart`), not in the round-robin: while an onnxruntime
# session lived in the process, the others' PyTorch code ran slower (ViT-B, 64-prompt decoder calls: transformers 65-93
# -> 141-246 ms per prompt, Meta's alike, sam_hf's kernels unaffected; back to normal once the session was deleted;
# session 25, cause not found: not threads spinning, CPU affinity, page faults or memory pressure). An AOTInductor
# package did the same (session 27: transformers 85.8 -> 119.5 ms per prompt in the same command)
APART = (ONNX, AOTI)


def timed_apart(script: str, impl: str, dtype: str, job: list[str], threads: int) -> dict | str:
    """`impl` in `dtype` timed by `script --worker --impl impl --dtype dtype *job` in a fresh process: its summary,
    or the table's "failed: ..." text."""
    result = run_worker(script, ["--impl", impl, "--dtype", dtype, *job], threads)
    return summary(result["seconds"]) if "seconds" in result else f"failed: {result.get('error', 'no result')}"


def per_process_runs(script: str, jobs: dict, threads: int, mode: str, timings: dict) -> dict:
    """`run_worker(script, args)` for each (impl, dtype) -> args in `jobs` -> their JSON results; with `mode` "rss"
    the workers' times also become `timings[impl, dtype]` (summaries)."""
    results = {}
    for key, args in jobs.items():
        results[key] = run_worker(script, args, threads)
        if mode == "rss" and "seconds" in results[key]:
            timings[key] = summary(results[key]["seconds"])
    return results


def memory_cell(rss: dict, impl: str, dtype: str) -> str:
    """The `peak RSS MB` table cell of a worker's result: its peak, its error, or "-" when not run."""
    memory = rss.get((impl, dtype), {})
    return f"{memory['rss_mb']:,.0f}" if "rss_mb" in memory else memory.get("error", "-")


def speedup(results: dict, other: str, dtype: str, entry: dict, field: str = "median") -> str:
    """How many times faster `entry` is than implementation `other` in `results[(impl, dtype)][field]`
    (seconds), formatted; "-" where `other` has no timing (not run, or failed)."""
    reference = results.get((other, dtype))
    return f"{reference[field] / entry[field]:.2f}" if isinstance(reference, dict) else "-"


def summary(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times)}


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
