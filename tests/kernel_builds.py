"""Running the kernels' tests once per instruction set whose builds this CPU runs (sam_hf.kernels.loader.ISAS)."""

import contextlib

import pytest


def kernel_isas() -> list[str]:
    """The instruction sets whose kernel builds this CPU runs (sam_hf.kernels.loader.ISAS): the kernels' tests run
    once per set, so on an AVX-512 CPU the AVX2 builds (what most laptop and desktop CPUs get) are tested too. With
    `SAM_HF_KERNEL_ISA` set, that one alone."""
    from sam_hf.kernels import loader

    runnable = loader.runnable_isas()
    return [isa for isa in loader._wanted_isas() if isa in runnable] or ["none"]


@contextlib.contextmanager
def kernels_for_isa(isa: str):
    """Within: sam_hf's `kernel()` loads (building where needed) and returns the builds for `isa`, as in a process
    started with `SAM_HF_KERNEL_ISA=isa`; the loader's state before is back after."""
    from sam_hf.kernels import loader

    with pytest.MonkeyPatch.context() as patch:
        if isa != "none":
            patch.setenv(loader.ISA_VARIABLE, isa)
        for state in ("_LOADED", "_REASONS", "_TAKES_BF16"):
            patch.setattr(loader, state, {})
        yield
