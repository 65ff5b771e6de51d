"""The one switch of the CPU memory machinery (see routing.cpu)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

ENV_VAR = "CAPSULES_CPU_TUNING"

_enabled = os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def tuning_enabled() -> bool:
    """Whether the PyTorch backends use the CPU machinery (chunks, huge pages, reused buffers, fused votes)."""
    return _enabled


@contextlib.contextmanager
def tuning(enabled: bool) -> Iterator[None]:
    """Turn the CPU machinery on or off inside a `with` block (off: plain PyTorch, same results)."""
    global _enabled
    if not isinstance(enabled, bool):
        raise ValueError(f"routing.cpu.tuning expects True or False, got {enabled!r}")
    previous, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = previous
