"""Checks of the routers' options, shared by every algorithm: a clear error at ``routing.create`` time that names
the algorithm, the option, the value given and what was expected.

A value of the wrong type (``eps="abc"``, ``detach_inner="no"``, ``iterations=2.0``) is a TypeError; a value of
the right type out of range (``eps=-1.0``, ``final_lambda=inf``) is a ValueError. Real numbers are Python ints and
floats and numpy's scalars (``numbers.Real``), never bools; flags are only ``True`` and ``False``.
"""

from __future__ import annotations

import math
import numbers


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def flag(algorithm: str, option: str, value: object) -> bool:
    """A bool option: True or False only (a string such as "no" is not silently taken as True)."""
    if not isinstance(value, bool):
        raise TypeError(f"routing {algorithm!r}: option {option} must be True or False, got {_describe(value)}")
    return value


def positive_int(algorithm: str, option: str, value: object, *, allow_none: bool = False) -> int | None:
    """An integer >= 1 (not a bool), or None where `allow_none`."""
    if value is None and allow_none:
        return None
    expected = "a positive integer" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"routing {algorithm!r}: option {option} must be {expected}, got {_describe(value)}")
    if value < 1:
        raise ValueError(f"routing {algorithm!r}: option {option} must be {expected}, got {value!r}")
    return int(value)


def real(algorithm: str, option: str, value: object, *, minimum: float = 0.0, inclusive: bool = False,
         maximum: float | None = None) -> float:
    """A finite real number > minimum (>= minimum when `inclusive`) and <= maximum when given, as a float.

    The default, a finite number > 0, is what every epsilon, temperature and prior strength needs: 0 divides by
    zero and NaN or Inf turns every result into NaN.
    """
    bound = f"{'>=' if inclusive else '>'} {minimum:g}" + ("" if maximum is None else f" and <= {maximum:g}")
    expected = f"a finite number {bound}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"routing {algorithm!r}: option {option} must be {expected}, got {_describe(value)}")
    number = float(value)
    in_range = number >= minimum if inclusive else number > minimum
    if not (math.isfinite(number) and in_range and (maximum is None or number <= maximum)):
        raise ValueError(f"routing {algorithm!r}: option {option} must be {expected}, got {value!r}")
    return number
