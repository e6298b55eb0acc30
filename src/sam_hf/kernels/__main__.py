"""`python -m sam_hf.kernels`: build sam_hf's optional CPU kernels now (instead of on first use) and say
which ones this machine uses. Exit status 0 even when none can be used (they are optional)."""

from __future__ import annotations

from .loader import REQUIREMENTS, cache_dir, kernel, unavailable_reason


def main() -> None:
    for name in sorted(REQUIREMENTS):
        module = kernel(name)
        status = f"built, cached in {cache_dir()}" if module is not None else f"not used: {unavailable_reason(name)}"
        print(f"{name}: {status}")


if __name__ == "__main__":
    main()
