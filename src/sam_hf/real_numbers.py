"""What counts as a number in sam_hf's arguments: a real int or float, Python's or numpy's, not a bool."""

from __future__ import annotations

import numpy as np


def is_real(value) -> bool:
    """An int or float (numpy scalars included); bools, strings, complex numbers and arrays are not."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
