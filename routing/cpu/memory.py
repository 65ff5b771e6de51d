"""Votes-sized CPU outputs on transparent huge pages.

A fresh tensor of tens of MB is mapped anew by the allocator on every call, and its first write page-faults
once per 4 KiB page; advised onto 2 MiB huge pages it faults 512 times less (on the project's 2-core VM,
allocating and filling 94 MB took several times longer with 4 KiB pages). Setting THP_MEM_ALLOC_ENABLE=1
before torch is imported does the same for every large tensor of the process. Off while the CPU machinery is
switched off (routing.cpu).
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache

import torch
from torch import Tensor

from routing.cpu.switch import tuning_enabled

HUGE_PAGE_BYTES = 2**21
MADV_HUGEPAGE = 14  # linux/mman.h


@cache
def _madvise():
    """libc's madvise, or None off Linux or where it cannot be loaded."""
    if sys.platform != "linux":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def advise_huge_pages(t: Tensor) -> None:
    """Ask the kernel to back the whole 2 MiB pages inside `t`'s (not yet touched) memory with huge pages.

    Only a hint: where transparent huge pages are off, on other systems and on other devices it does nothing.
    """
    madvise = _madvise()
    if madvise is None or t.device.type != "cpu" or not tuning_enabled():
        return
    storage = t.untyped_storage()
    start = storage.data_ptr()
    end = start + storage.nbytes()
    lo = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    hi = end // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    if hi > lo:
        madvise(lo, hi - lo, MADV_HUGEPAGE)


def empty_like_on_huge_pages(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """torch.empty_like(x) (same strides, optionally another dtype) with huge pages advised."""
    out = torch.empty_like(x, dtype=dtype)
    advise_huge_pages(out)
    return out


def new_empty_on_huge_pages(x: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """x.new_empty(shape, dtype=dtype) with huge pages advised (for large buffers written once, such as the
    iterations' statistics a routing forward saves)."""
    out = x.new_empty(shape, dtype=dtype)
    advise_huge_pages(out)
    return out
