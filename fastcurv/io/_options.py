"""Checks of reader options shared by the CSV and svmlight readers."""

import numbers

import numpy as np


def _as_int(value, name, what):
    """``value`` as a Python int; TypeError for anything but an integer (bool included)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    return int(value)
