"""`python -m sam_hf.kernels`: build sam_hf's optional CPU kernels now (instead of on first use) and say
which ones this machine uses, and in which dtypes. Exit status 0 even when none can be used (they are optional)."""

from __future__ import annotations

import torch

from .loader import build_all, cache_dir, kernel_for, unavailable_reason


def main() -> None:
    for name, module in build_all().items():  # the missing builds side by side
        if module is None:
            status = f"not used: {unavailable_reason(name)}"
        else:
            dtypes = "fp32 and bf16" if kernel_for(name, torch.bfloat16) is not None else "fp32"
            status = f"built, cached in {cache_dir()}; takes {dtypes} here"
        print(f"{name}: {status}")


if __name__ == "__main__":
    main()
