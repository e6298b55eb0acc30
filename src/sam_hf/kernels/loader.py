"""Building and loading sam_hf's optional compiled CPU kernels.

The kernels are C++ sources shipped in this folder, compiled once per torch installation on first use with
`torch.utils.cpp_extension` (a C++ compiler and ninja are needed; about 30 s) and cached under
`$SAM_HF_KERNEL_CACHE` (default `~/.cache/sam_hf/kernels`), one folder per torch installation and source hash,
which holds the copy of the source that is compiled (so every checkout with that torch shares one build, and
switching environments rebuilds nothing).
Everything works without them: when a kernel cannot be used (other CPU, no compiler, a failed build, or
`SAM_HF_KERNELS=0`), `kernel(...)` returns None, callers take their PyTorch path, and the reason is
logged once and kept in `unavailable_reason(...)`. `build_all()` builds the missing ones side by side (about 45 s
for the three on two cores, against 85 s one after another); `python -m sam_hf.kernels` calls it and reports.
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

logger = logging.get_logger(__name__)

SOURCES = Path(__file__).resolve().parent
# what each kernel needs from the CPU (flags as /proc/cpuinfo spells them), from the compiler, and which of its
# functions must return True once built (what the flags cannot tell: here, that PyTorch's oneDNN brgemm takes bf16).
# All are compiled with -mavx512bf16; the decoder kernels run its instructions only on their bf16 paths, which a CPU
# without AVX512-BF16 never takes (`bf16_usable()`), so their fp32 paths need AVX-512 alone.
REQUIREMENTS = {
    "relpos_attention": {
        "cpu_flags": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"),  # AMX used where present
        "cflags": ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma", "-fopenmp"),
        "runtime_check": "brgemm_usable",
    },
    "decoder_attention": {
        "cpu_flags": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
        "cflags": ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma", "-fopenmp"),
        "runtime_check": "brgemm_usable",
    },
    "mask_upscaling": {
        "cpu_flags": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
        "cflags": ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma", "-fopenmp"),
        "runtime_check": "brgemm_usable",
    },
}

_LOCK = threading.Lock()
_THIS_THREAD = threading.local()  # `disabled()` state
_LOADED: dict[str, ModuleType | None] = {}
_REASONS: dict[str, str] = {}
_TAKES_BF16: dict[str, bool] = {}


def _cpu_flags() -> set[str]:
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
    missing = [flag for flag in REQUIREMENTS[name]["cpu_flags"] if flag not in _cpu_flags()]
    if missing:
        return f"this CPU lacks {', '.join(missing)}"
    if not (SOURCES / f"{name}.cpp").is_file():  # e.g. sam_hf's modules as a Hub repository's remote code
        return f"its source {name}.cpp is not in {SOURCES}"
    return None


def _headers() -> list[Path]:
    """The headers every kernel may include (`simd.h`), staged and hashed with each source."""
    return sorted(SOURCES.glob("*.h"))


def _stage(path: Path, build_dir: Path) -> Path:
    """`path` copied into `build_dir` (written only when absent or different)."""
    code = path.read_bytes()
    staged = build_dir / path.name
    if not staged.exists() or staged.read_bytes() != code:
        partial = build_dir / f".{path.name}.{os.getpid()}"
        partial.write_bytes(code)
        os.replace(partial, staged)  # atomic: a concurrent build never reads half a file
    return staged


def _staged_source(name: str, build_dir: Path) -> Path:
    """The kernel's source and the shared headers copied into its build folder, so that every installation with
    this source compiles the same path: ninja rebuilds when a build's source path changes, so two checkouts
    sharing the cache would otherwise rebuild it in turn (about 30 s inside the next call)."""
    for header in _headers():
        _stage(header, build_dir)
    return _stage(SOURCES / f"{name}.cpp", build_dir)


def _installation() -> str:
    """Where the build's include paths come from: this torch package and this Python's headers. ninja rebuilds when a
    build's command changes, so two environments sharing one build folder would rebuild it in turn (30-45 s each time
    the other one runs); each installation gets its own folder."""
    return "\n".join([os.path.dirname(os.path.abspath(torch.__file__)), sysconfig.get_paths()["include"]])


def _build_dir(name: str) -> Path:
    """The cache folder of this kernel's source, headers and flags under this torch installation."""
    code = (SOURCES / f"{name}.cpp").read_bytes() + b"".join(header.read_bytes() for header in _headers())
    key = code + " ".join(REQUIREMENTS[name]["cflags"]).encode() + _installation().encode()
    return cache_dir() / f"{name}-torch{torch.__version__}-{hashlib.sha256(key).hexdigest()[:16]}"


def _is_built(name: str) -> bool:
    """Whether the cache holds a build of this kernel's source (loading it then takes under a second)."""
    build_dir = _build_dir(name)
    return build_dir.is_dir() and any(build_dir.glob(f"{name}*.so"))


def _build(name: str) -> ModuleType:
    from torch.utils.cpp_extension import load

    build_dir = _build_dir(name)
    build_dir.mkdir(parents=True, exist_ok=True)
    if not any(build_dir.glob(f"{name}*.so")):
        logger.warning(f"sam_hf: compiling the {name} CPU kernel once (about 30 s) into {build_dir}")
    staged = _staged_source(name, build_dir)
    return load(name, [str(staged)], build_directory=str(build_dir), extra_cflags=list(REQUIREMENTS[name]["cflags"]), verbose=False)


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
    """The compiled module `name` (built on first call), or None when it cannot be used here (or inside `disabled()`).

    A first call that has to compile `name` compiles, side by side, every other kernel usable here that is not built
    yet: a model's forward on a CPU takes all three, and two cores build them in about 45 s instead of 85."""
    if name not in REQUIREMENTS:
        raise ValueError(f"name must be one of {sorted(REQUIREMENTS)}, got {name!r}")
    if getattr(_THIS_THREAD, "disabled", False):
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
    compiler per kernel: on two cores the three take about 45 s instead of 85 s). Returns {name: module or None}."""
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
    """Forget loaded kernels and reasons, so that the next `kernel()` call looks again (tests, env changes)."""
    with _LOCK:
        _LOADED.clear()
        _REASONS.clear()
        _TAKES_BF16.clear()
