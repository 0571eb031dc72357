"""Metadata written next to results as JSON (``erquant segment --explain``, the napari
plugin's export): one conversion of Python/NumPy values to JSON-safe ones."""

from __future__ import annotations

from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """``value`` with dict keys as strings, tuples as lists, NumPy scalars as Python
    numbers, non-finite floats as None and anything else unknown as its ``str``.

    Examples
    --------
    >>> jsonable({1: (np.int64(2), float("nan")), "p": Exception("x")})
    {'1': [2, None], 'p': 'x'}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
