"""Checks of the options every dataset loader takes: a TypeError or ValueError naming the option, the value given and
what was expected, raised before any file is touched."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from numbers import Real
from pathlib import Path


def expect_bool(name: str, value: object) -> bool:
    """`value` itself when it is a bool; TypeError otherwise (so "yes", 1 or None are never taken as truth values)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r} of type {type(value).__name__}")
    return value


def expect_optional_bool(name: str, value: object) -> bool | None:
    """None, or a bool (see `expect_bool`)."""
    return None if value is None else expect_bool(name, value)


def expect_int(name: str, value: object, low: int, high: int | None = None, why: str = "") -> int:
    """`value` when it is an int (not a bool) in low..high (no upper bound when high is None)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {bound}{why}, got {value}")
    return value


def expect_positive_seconds(name: str, value: object) -> float:
    """A finite number of seconds > 0."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number of seconds, got {value!r} of type {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value}")
    return float(value)


def expect_mirrors(value: object) -> tuple[str, ...]:
    """A non-empty sequence of URL prefixes, each a str ending in "/" (a single str is refused: it is a sequence of
    characters, not of URLs)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(f"mirrors must be a list or tuple of URL prefixes ending in '/', got {value!r}")
    mirrors = tuple(value)
    bad = [m for m in mirrors if not isinstance(m, str) or not m.endswith("/")]
    if not mirrors or bad:
        raise ValueError(f"mirrors must be a non-empty list of URL prefixes ending in '/', got {value!r}"
                         + (f" (bad: {bad!r})" if bad else ""))
    return mirrors


def expect_choice(name: str, value: object, choices: Sequence[object]) -> object:
    """`value` when it is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def expect_root(root: object) -> None:
    """root is None, a str or an os.PathLike naming a folder (or a path not created yet), not a file."""
    if root is None:
        return
    if not isinstance(root, str | os.PathLike):
        raise TypeError(f"root must be a folder path (str or os.PathLike) or None, got {root!r} of type "
                        f"{type(root).__name__}")
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"root {str(path)!r} is a file, expected the folder that holds the dataset's files")


def expect_loader_options(root: object, train: object, download: object, normalize: object, verify: object,
                          mirrors: object, timeout: object) -> tuple[tuple[str, ...], float]:
    """The options every split loader takes, checked as the expect_* functions do; returns (mirrors, timeout) as
    the loader uses them (mirrors None is left to the caller's default, returned as an empty tuple)."""
    expect_root(root)
    for name, value in (("train", train), ("download", download), ("normalize", normalize), ("verify", verify)):
        expect_bool(name, value)
    return (() if mirrors is None else expect_mirrors(mirrors)), expect_positive_seconds("timeout", timeout)

