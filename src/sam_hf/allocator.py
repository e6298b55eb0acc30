"""Keep freed memory in the process (glibc only), for processes that run SAM and little else.

With glibc's default settings, freed multi-megabyte blocks go back to the system and the next ones of that
size are page-faulted in again: about 3,700 page faults per prompt in a ViT-B mask-decoder call, a quarter of
the decoder's time on CPU (see benchmarks/README.md). `keep_freed_memory()` is what the environment
variables `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736` do, set from inside the process: large
blocks come from the heap and the heap is never trimmed, so the process keeps its peak memory until it
exits. The `sam-hf` command calls it; a library cannot decide this for its host program, so `import sam_hf`
does not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # bytes of free heap top tolerated before trimming (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory (no mmap for large blocks, no heap trimming) for the rest of the process.

    Returns True when applied, False where it does not apply (not Linux with glibc). Memory then stays at
    its peak until the process exits: for command-line runs and workers, not for long-lived mixed programs.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # musl and others have no mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
