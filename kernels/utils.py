"""Facts shared by the Triton ops (kernels.dynamic, kernels.em): availability, device checks, dtypes, block sizes
and the largest parent tile a program holds."""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
except ImportError:  # triton is Linux-only; the PyTorch backends work without it
    triton = None


def triton_available() -> bool:
    """Whether the triton package can be imported at all."""
    return triton is not None


def interpreter_enabled() -> bool:
    """TRITON_INTERPRET=1 runs kernels on the CPU with numpy (for tests; slow, says nothing about speed)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernel_unavailable_reason(*tensors: Tensor, interpreter_ok: bool = True) -> str | None:
    """Why the Triton kernels cannot run on these tensors, or None when they can.

    They run on CUDA tensors, and on CPU tensors under the interpreter (TRITON_INTERPRET=1) when
    `interpreter_ok`: routers pass False for backend="auto", so that "auto" never picks the (slow, test-only)
    interpreter and routes CPU tensors with PyTorch instead.
    """
    if triton is None:
        return "the triton package is not installed"
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        return f"inputs are on different devices: {sorted(map(str, devices))}"
    device = devices.pop()
    if device.type == "cuda":
        return None
    if device.type == "cpu" and interpreter_ok and interpreter_enabled():
        return None
    return (
        f"the Triton kernels need CUDA tensors (got {device.type} tensors); on the CPU they run only under "
        f"TRITON_INTERPRET=1, which is for tests. Use backend='torch' or backend='auto' for CPU tensors"
    )


def block_size(n: int, minimum: int = 16) -> int:
    """The smallest power of two >= n (and >= minimum): a tl.constexpr block that covers a dimension."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def kernel_dtype_ok(t: Tensor) -> bool:
    """The kernels read float16, bfloat16, float32 and float64 inputs (math in float32, or float64 for float64)."""
    return t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute and keep their buffers in: float64 for float64 inputs, float32 for the rest."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# Largest padded J * D of one child's votes (BLOCK_J * BLOCK_D) a program holds: a chosen bound, never measured.
MAX_PARENT_TILE = 16384


def parent_tile_size(J: int, D: int) -> int:
    """Padded elements of one child's votes [J, D]: BLOCK_J * BLOCK_D."""
    return block_size(J, minimum=1) * block_size(D, minimum=1)


def parent_tile_reason(J: int, D: int, op: str) -> str | None:
    """Why the `op` kernels cannot route J parents of pose size D (the padded J * D exceeds MAX_PARENT_TILE), or
    None when they can."""
    tile = parent_tile_size(J, D)
    if tile <= MAX_PARENT_TILE:
        return None
    return (f"the {op} Triton kernels handle J * D up to {MAX_PARENT_TILE} per child, padded to powers of two: "
            f"J x D = {J} x {D} pads to {tile} elements, more than the {MAX_PARENT_TILE} a Triton program holds; "
            f"use backend='torch'")
