"""What counts as a number in sam_hf's arguments: a real int or float, Python's or numpy's, not a bool."""

from __future__ import annotations

import math

import numpy as np


def is_real(value) -> bool:
    """An int or float (numpy scalars included); bools, strings, complex numbers and arrays are not."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def is_whole_number(value) -> bool:
    """A number with an integer value (int, or a float/numpy number such as 683.0), not a bool, NaN or inf."""
    return is_real(value) and math.isfinite(value) and int(value) == value
