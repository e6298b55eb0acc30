"""`python -m sam_hf.kernels`: build sam_hf's optional CPU kernels now (instead of on first use) and say
which ones this machine uses, for which instruction set, and in which dtypes. `--all-isas` builds them for every
instruction set this CPU runs (on an AVX-512 CPU the AVX2 builds too, which the test suite also checks). Exit status 0
even when none can be used (they are optional)."""

from __future__ import annotations

import argparse
import os

import torch

from .loader import ISA_VARIABLE, ISAS, build_all, cache_dir, kernel_for, kernel_isa, reset, runnable_isas, unavailable_reason


def report() -> None:
    """Build (the missing ones side by side) and print one line per kernel for this process's instruction set."""
    for name, module in build_all().items():
        if module is None:
            status = f"not used: {unavailable_reason(name)}"
        else:
            dtypes = "fp32 and bf16" if kernel_for(name, torch.bfloat16) is not None else "fp32"
            status = f"built for {module.isa()}, cached in {cache_dir()}; takes {dtypes} here"
        print(f"{name}: {status}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sam_hf.kernels", description=__doc__)
    parser.add_argument("--all-isas", action="store_true", help="build for every instruction set this CPU runs, not only the best")
    args = parser.parse_args(argv)
    if not args.all_isas:
        return report()
    runnable = runnable_isas()
    if not runnable:
        print(f"none: this CPU has none of {list(ISAS)}")  # report() says why for each kernel
        return report()
    before = os.environ.get(ISA_VARIABLE)
    try:
        for isa in runnable:
            os.environ[ISA_VARIABLE] = isa
            reset()
            print(f"[{kernel_isa()}]")
            report()
    finally:
        if before is None:
            os.environ.pop(ISA_VARIABLE, None)
        else:
            os.environ[ISA_VARIABLE] = before
        reset()


if __name__ == "__main__":
    main()
