"""Optional compiled CPU kernels (see `loader`): built on first use, PyTorch paths when unavailable."""

from .loader import build_all, cache_dir, disabled, kernel, kernel_for, kernel_isa, reset, unavailable_reason

__all__ = ["build_all", "cache_dir", "disabled", "kernel", "kernel_for", "kernel_isa", "reset", "unavailable_reason"]
