"""Checks of the losses' scalar options: a ValueError naming the option, its value and the range expected."""

from __future__ import annotations

import math
import numbers

from torch import Tensor


def expect_real(name: str, value: float | Tensor, low: float = -math.inf, high: float = math.inf) -> float:
    """`value` as a float: a finite real number (or a one-element floating-point tensor) in [low, high]."""
    if isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
        number = float(value.detach())
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not (low <= number <= high and math.isfinite(number)):  # NaN fails too
        interval = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a finite number {interval}, got {number!r}")
    return number
