"""Figures read back from a model's metrics.json, which a hand may have edited: a number counts only when it is a
finite int or float (not a bool), an interval only when it is two of them. Serving, the summary and the model card
read through these, so an odd file reads as "not known", never as an error or a NaN shown as a figure."""

from __future__ import annotations

import math


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def finite_interval(bounds) -> tuple[float, float] | None:
    """A `[low, high]` of metrics.json (its ci95 entries), or None when it is not two finite numbers."""
    if isinstance(bounds, list) and len(bounds) == 2 and all(finite(b) for b in bounds):
        return float(bounds[0]), float(bounds[1])
    return None


def percent_range(bounds: tuple[float, float] | list[float]) -> str:
    """A share's interval in words: "8-64 %" for (0.082, 0.641)."""
    return f"{bounds[0] * 100:.0f}-{bounds[1] * 100:.0f} %"
