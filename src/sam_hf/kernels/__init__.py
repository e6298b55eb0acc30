"""Optional compiled CPU kernels (see `loader`): built on first use, PyTorch paths when unavailable."""

from .loader import cache_dir, disabled, kernel, kernel_for, reset, unavailable_reason

__all__ = ["cache_dir", "disabled", "kernel", "kernel_for", "reset", "unavailable_reason"]
