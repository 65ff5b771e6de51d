"""Reusable CPU scratch buffers for votes-sized tensors that never leave one routing call.

A fresh CPU tensor of tens of MB is mapped anew by the allocator and page-faults on its first write, and with
transparent huge pages in "madvise" mode a fault may also wait for the kernel to compact memory: the layer
timings then vary from call to call. A fused dense-layer router (routing.cpu.fusion) instead writes its votes, and later
their gradient, into one buffer per thread that lives as long as the process, so after the first call no
votes-sized memory is mapped at all.

A buffer is only ever handed to code that finishes with it before returning, except that a forward may leave
its votes in it for the backward: `Workspace.claim` gives each user a token, and `holds` says whether the
buffer still holds what that user wrote (no other call claimed it since). Buffers are per thread, so threads
never share one. `release_workspaces()` frees this thread's buffers.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from routing.cpu.memory import advise_huge_pages

_local = threading.local()


class Workspace:
    """Growable flat CPU buffers, one per (name, dtype); `claim` returns a view and a token."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype], Tensor] = {}
        self._owner: dict[tuple[str, torch.dtype], object] = {}

    def claim(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, object]:
        """A contiguous CPU tensor of `shape` from buffer `name` (uninitialised, or holding an earlier claim's
        data) and the token that `holds` checks later. An earlier claim of the same buffer loses its contents."""
        key = (name, dtype)
        numel = 1
        for size in shape:
            numel *= size
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            self._buffers.pop(key, None)  # free the old buffer before mapping the larger one
            buffer = torch.empty(numel, dtype=dtype)
            advise_huge_pages(buffer)
            self._buffers[key] = buffer
        token = object()
        self._owner[key] = token
        return buffer[:numel].view(shape), token

    def holds(self, token: object, name: str, dtype: torch.dtype) -> bool:
        """Whether the claim that returned `token` is still the latest one of buffer `name`."""
        return self._owner.get((name, dtype)) is token

    def clear(self) -> None:
        self._buffers.clear()
        self._owner.clear()


def workspace() -> Workspace:
    """This thread's workspace."""
    ws = getattr(_local, "workspace", None)
    if ws is None:
        ws = _local.workspace = Workspace()
    return ws


def release_workspaces() -> None:
    """Free this thread's scratch buffers (the next fused call maps a new one)."""
    workspace().clear()
