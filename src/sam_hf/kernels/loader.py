"""Building and loading sam_hf's optional compiled CPU kernels.

The kernels are C++ sources shipped in this folder (`sources.kernel_sources()`; written into the generated module in
a Hub repository's remote code), compiled once per torch installation on first use with
`torch.utils.cpp_extension` (a C++ compiler and ninja are needed; about 30 s) and cached under
`$SAM_HF_KERNEL_CACHE` (default `~/.cache/sam_hf/kernels`), one folder per torch installation, source hash and
instruction set, which holds the copy of the source that is compiled (so every checkout with that torch shares one
build, and switching environments rebuilds nothing). They are written once on 16-lane vectors (`vec16.h`) and built
for AVX-512 where the CPU has it, else for AVX2 with FMA (`ISAS`, `kernel_isa()`; `SAM_HF_KERNEL_ISA` picks one).
Everything works without them: when a kernel cannot be used (other CPU, no compiler, a failed build, or
`SAM_HF_KERNELS=0`), `kernel(...)` returns None, callers take their PyTorch path, and the reason is
logged once and kept in `unavailable_reason(...)`. `build_all()` builds the missing ones side by side (the four in
about 65-90 s on two cores; three took 46 s side by side against 83 s one after another); `python -m sam_hf.kernels`
calls it and reports (`--all-isas`: for every instruction set the CPU runs).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sysconfig
import threading
from pathlib import Path
from types import ModuleType

import torch
from transformers.utils import logging

from .sources import kernel_sources

logger = logging.get_logger(__name__)

# The instruction sets the kernels are built for, best first (vec16.h): each one's CPU flags (as /proc/cpuinfo spells
# them) and compiler flags. A CPU with AVX-512 takes the first; one with AVX2 and FMA only (most laptop and desktop
# CPUs: Intel's since Alder Lake, AMD's before Zen 4) the second, where every vector is two 8-lane halves.
# AVX-512 builds are compiled with -mavx512bf16 and run its instructions only on their bf16 paths, which a CPU
# without AVX512-BF16 never takes (`bf16_usable()`), so their fp32 paths need AVX-512 alone. AVX2 builds take fp32.
ISAS = {
    "avx512": {
        "cpu_flags": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"),
        "cflags": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma"),
    },
    "avx2": {"cpu_flags": ("avx2", "fma"), "cflags": ("-mavx2", "-mfma")},
}

# `SAM_HF_KERNEL_ISA`: "avx512" or "avx2" builds that one only (an AVX-512 CPU runs AVX2 builds too: to measure what
# an AVX2 CPU gets, or to test those builds); unset or "auto": the best one this CPU has.
ISA_VARIABLE = "SAM_HF_KERNEL_ISA"

# what each kernel needs besides its instruction set: compiler flags around the ISA's, and which of its functions
# must return True once built (what the flags cannot tell: here, that PyTorch's oneDNN brgemm serves this CPU).
REQUIREMENTS = {
    "relpos_attention": {  # bf16 where AVX512-BF16 (AMX used where present)
        "cflags": ("-O3", "{isa}", "-fopenmp"),
        "runtime_check": "brgemm_usable",
    },
    "decoder_attention": {"cflags": ("-O3", "{isa}", "-fopenmp"), "runtime_check": "brgemm_usable"},
    "mask_upscaling": {"cflags": ("-O3", "{isa}", "-fopenmp"), "runtime_check": "brgemm_usable"},
    "mask_resize": {  # bit-exact against ATen: checked by its caller (processing/bilinear.py), not here
        "cflags": ("-O3", "{isa}", "-ffp-contract=off", "-fopenmp"),
    },
}


def _wanted_isas() -> list[str]:
    """The instruction sets `SAM_HF_KERNEL_ISA` allows, best first. Raises ValueError on a value it cannot take."""
    asked = os.environ.get(ISA_VARIABLE, "auto").strip().lower() or "auto"
    if asked != "auto" and asked not in ISAS:
        raise ValueError(f"{ISA_VARIABLE} must be one of {['auto', *ISAS]}, got {asked!r}")
    return list(ISAS) if asked == "auto" else [asked]


def runnable_isas() -> list[str]:
    """The instruction sets whose builds this CPU runs, best first (an AVX-512 CPU runs both)."""
    flags = cpu_flags()
    return [isa for isa, spec in ISAS.items() if all(flag in flags for flag in spec["cpu_flags"])]


def kernel_isa() -> str | None:
    """The instruction set the kernels are built for in this process ("avx512" or "avx2"), or None where this CPU has
    neither (or `SAM_HF_KERNEL_ISA` names one it lacks). Raises ValueError on any other `SAM_HF_KERNEL_ISA`."""
    runnable = runnable_isas()
    return next((isa for isa in _wanted_isas() if isa in runnable), None)


def _cflags(name: str, isa: str) -> list[str]:
    """The compiler flags of kernel `name` built for `isa`."""
    return [flag for item in REQUIREMENTS[name]["cflags"] for flag in (ISAS[isa]["cflags"] if item == "{isa}" else (item,))]


def _module_name(name: str, isa: str) -> str:
    """The extension module of kernel `name` built for `isa`: `name` itself for AVX-512, `name_avx2` for AVX2."""
    return name if isa == "avx512" else f"{name}_{isa}"

_LOCK = threading.Lock()
_THIS_THREAD = threading.local()  # `disabled()` state
_LOADED: dict[str, ModuleType | None] = {}
_REASONS: dict[str, str] = {}
_TAKES_BF16: dict[str, bool] = {}


def cpu_flags() -> set[str]:
    """The CPU's flags as /proc/cpuinfo spells them; empty where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cache_dir() -> Path:
    """Where built kernels are kept: $SAM_HF_KERNEL_CACHE, else ~/.cache/sam_hf/kernels."""
    return Path(os.environ.get("SAM_HF_KERNEL_CACHE") or Path.home() / ".cache" / "sam_hf" / "kernels")


def _why_not(name: str) -> str | None:
    """Why `name` cannot be built here, or None when it can be tried."""
    if os.environ.get("SAM_HF_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return "disabled by SAM_HF_KERNELS"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"needs Linux on x86-64, this is {platform.system()} on {platform.machine()}"
    if kernel_isa() is None:
        return "this CPU lacks " + " and ".join(f"{isa} ({', '.join(ISAS[isa]['cpu_flags'])})" for isa in _wanted_isas())
    if f"{name}.cpp" not in kernel_sources():  # e.g. remote code generated by a sam_hf that did not embed them
        return f"its source {name}.cpp is not among sam_hf's kernel sources"
    return None


def _files(name: str) -> tuple[bytes, dict[str, bytes]]:
    """The kernel's source and the headers every kernel may include (`simd.h`, `brgemm.h`: {file name: bytes}), read
    once; staged and hashed together."""
    sources = kernel_sources()
    headers = {file: text.encode("utf-8") for file, text in sorted(sources.items()) if file.endswith(".h")}
    return sources[f"{name}.cpp"].encode("utf-8"), headers


def _stage(file: str, code: bytes, build_dir: Path) -> Path:
    """`code` written into `build_dir` as `file` (only when absent or different)."""
    staged = build_dir / file
    if not staged.exists() or staged.read_bytes() != code:
        partial = build_dir / f".{file}.{os.getpid()}"
        partial.write_bytes(code)
        os.replace(partial, staged)  # atomic: a concurrent build never reads half a file
    return staged


def _staged_source(name: str, build_dir: Path) -> Path:
    """The kernel's source and the shared headers written into its build folder, so that every installation with
    this source compiles the same path: ninja rebuilds when a build's source path changes, so two checkouts
    sharing the cache would otherwise rebuild it in turn (about 30 s inside the next call)."""
    source, headers = _files(name)
    for file, code in headers.items():
        _stage(file, code, build_dir)
    return _stage(f"{name}.cpp", source, build_dir)


def _installation() -> str:
    """Where the build's include paths come from: this torch package and this Python's headers. ninja rebuilds when a
    build's command changes, so two environments sharing one build folder would rebuild it in turn (30-45 s each time
    the other one runs); each installation gets its own folder."""
    return "\n".join([os.path.dirname(os.path.abspath(torch.__file__)), sysconfig.get_paths()["include"]])


def _build_dir(name: str, isa: str) -> Path:
    """The cache folder of this kernel's source, headers and flags for `isa` under this torch installation."""
    source, headers = _files(name)
    key = source + b"".join(headers.values()) + " ".join(_cflags(name, isa)).encode() + _installation().encode()
    return cache_dir() / f"{_module_name(name, isa)}-torch{torch.__version__}-{hashlib.sha256(key).hexdigest()[:16]}"


def _is_built(name: str) -> bool:
    """Whether the cache holds a build of this kernel's source for this process's ISA (loading it then takes under a
    second)."""
    isa = kernel_isa()
    build_dir = _build_dir(name, isa)
    return build_dir.is_dir() and any(build_dir.glob(f"{_module_name(name, isa)}*.so"))


def _build(name: str) -> ModuleType:
    from torch.utils.cpp_extension import load

    isa = kernel_isa()
    module, build_dir = _module_name(name, isa), _build_dir(name, isa)
    build_dir.mkdir(parents=True, exist_ok=True)
    if not any(build_dir.glob(f"{module}*.so")):
        logger.warning(f"sam_hf: compiling the {name} CPU kernel ({isa}) once (about 30 s) into {build_dir}")
    staged = _staged_source(name, build_dir)
    return load(module, [str(staged)], build_directory=str(build_dir), extra_cflags=_cflags(name, isa), verbose=False)


def kernel_for(name: str, dtype: torch.dtype) -> ModuleType | None:
    """`kernel(name)` where it takes tensors of `dtype` here: fp32 always; bf16 where the module has a
    `bf16_usable()` that says yes on this CPU (oneDNN's bf16 products, AVX512-BF16; asked once); else None."""
    module = kernel(name)
    if module is None or dtype == torch.float32:
        return module
    if dtype != torch.bfloat16 or not hasattr(module, "bf16_usable"):
        return None
    if name not in _TAKES_BF16:
        _TAKES_BF16[name] = bool(module.bf16_usable())
        if not _TAKES_BF16[name]:
            logger.info(f"sam_hf: the {name} kernel runs fp32 only here (oneDNN's bf16 products are not served on this CPU)")
    return module if _TAKES_BF16[name] else None


@contextlib.contextmanager
def disabled():
    """Within this context (in this thread) `kernel()` returns None, so sam_hf takes its PyTorch paths: to compare
    the two, or to rule a kernel out while debugging. `SAM_HF_KERNELS=0` does the same for a whole process."""
    previous = getattr(_THIS_THREAD, "disabled", False)
    _THIS_THREAD.disabled = True
    try:
        yield
    finally:
        _THIS_THREAD.disabled = previous


def kernel(name: str) -> ModuleType | None:
    """The compiled module `name` (built on first call), or None when it cannot be used here, inside `disabled()`, or
    while `torch.compile` traces the caller (the compiler then gets the PyTorch paths, which it can trace and fuse,
    instead of calls it would have to break its graph at).

    A first call that has to compile `name` compiles, side by side, every other kernel usable here that is not built
    yet: a model's forward and its post-processing on a CPU take all four, and two cores build them in about 65 s."""
    if name not in REQUIREMENTS:
        raise ValueError(f"name must be one of {sorted(REQUIREMENTS)}, got {name!r}")
    if torch.compiler.is_compiling() or getattr(_THIS_THREAD, "disabled", False):
        return None
    if name in _LOADED:
        return _LOADED[name]
    with _LOCK:
        if name not in _LOADED:
            together = [name]
            if _why_not(name) is None and not _is_built(name):
                together += [other for other in sorted(REQUIREMENTS)
                             if other != name and other not in _LOADED and _why_not(other) is None and not _is_built(other)]
            _load_side_by_side(together)
    return _LOADED[name]


def build_all(names: list[str] | tuple[str, ...] | None = None) -> dict[str, ModuleType | None]:
    """`kernel(name)` for each of `names` (default: every kernel), the missing builds run side by side (one
    compiler per kernel: on two cores the four take about 65 s). Returns {name: module or None}."""
    names = sorted(REQUIREMENTS) if names is None else list(names)
    unknown = [name for name in names if name not in REQUIREMENTS]
    if unknown:
        raise ValueError(f"names must be among {sorted(REQUIREMENTS)}, got {unknown}")
    if getattr(_THIS_THREAD, "disabled", False):
        return {name: None for name in names}
    with _LOCK:
        _load_side_by_side([name for name in dict.fromkeys(names) if name not in _LOADED])
    return {name: _LOADED[name] for name in names}


def _load_side_by_side(names: list[str]) -> None:
    """`_load` each of `names` at once and record the answers (the caller holds `_LOCK`). Each build waits on its own
    compiler process, so threads suffice."""
    if len(names) == 1:
        _remember(names[0], *_load(names[0]))
    elif names:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            answers = list(pool.map(_load, names))
        for name, (module, reason) in zip(names, answers):
            _remember(name, module, reason)


def _load(name: str) -> tuple[ModuleType | None, str | None]:
    """Build and check kernel `name`: (module, None) when it can be used, else (None, why not)."""
    reason = _why_not(name)
    if reason is not None:
        return None, reason
    try:
        module = _build(name)
    except Exception as error:  # noqa: BLE001 - any build failure means: use the PyTorch path
        message = str(error).strip()
        return None, f"build failed: {type(error).__name__}: {message.splitlines()[-1] if message else ''}"
    check = REQUIREMENTS[name].get("runtime_check")
    if check is not None and not getattr(module, check)():
        return None, f"built, but its check {check}() says this CPU is not served"
    return module, None


def _remember(name: str, module: ModuleType | None, reason: str | None) -> None:
    """Record `_load`'s answer (the caller holds `_LOCK`); a reason is logged once."""
    if reason is not None:
        logger.info(f"sam_hf: the {name} kernel is not used ({reason}); PyTorch's path is taken")
        _REASONS[name] = reason
    _LOADED[name] = module


def unavailable_reason(name: str) -> str | None:
    """Why `kernel(name)` returned None (after a call), else None."""
    return _REASONS.get(name)


def reset() -> None:
    """Forget loaded kernels and reasons, so that the next `kernel()` call looks again (tests, a changed
    `SAM_HF_KERNELS` or `SAM_HF_KERNEL_ISA`)."""
    with _LOCK:
        _LOADED.clear()
        _REASONS.clear()
        _TAKES_BF16.clear()
