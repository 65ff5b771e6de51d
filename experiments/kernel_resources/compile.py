"""Compile one captured kernel variant for its target with Triton's compiler and bundled ptxas (no GPU), and read
back what ptxas reports: registers per thread, spill stores and loads, the stack frame, shared memory.

The kernel modules must have been imported with TRITON_INTERPRET=0 (main.py sets it before importing them).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import time
from dataclasses import dataclass

from kernels.variants import Variant

_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")
_STATIC_SHARED = re.compile(r"(\d+) bytes smem")


@dataclass(frozen=True)
class Resources:
    """What one compiled variant uses: per thread (registers), per program (stack, spills, shared memory)."""

    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_bytes: int
    shared_bytes: int  # Triton's shared-memory allocation plus any static shared memory ptxas reports
    compile_seconds: float

    @property
    def spill_bytes(self) -> int:
        return self.spill_store_bytes + self.spill_load_bytes


def parse_ptxas_log(log: str) -> tuple[int, int, int, int, int]:
    """(registers, spill stores, spill loads, stack frame, static shared bytes) from ptxas -v output for one
    entry function."""
    frame, registers = _FRAME.search(log), _REGISTERS.search(log)
    if frame is None or registers is None:
        raise RuntimeError(f"could not read the resource usage from the ptxas log:\n{log}")
    static = _STATIC_SHARED.search(log)
    stack, stores, loads = (int(x) for x in frame.groups())
    return int(registers.group(1)), stores, loads, stack, int(static.group(1)) if static else 0


def load_kernel(path: str):
    """The @triton.jit function named "module:function"."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def compile_variant(variant: Variant) -> Resources:
    """Lower `variant` to a cubin for sm_<arch> and return its resources (raises on a compile error)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    triton.knobs.nvidia.dump_ptxas_log = True  # Triton then prints ptxas -v's report
    source = ASTSource(load_kernel(variant.kernel), variant.signature, variant.constexprs, variant.attrs)
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(source, target=GPUTarget("cuda", variant.arch, 32), options=variant.options)
    seconds = time.perf_counter() - start
    registers, stores, loads, stack, static = parse_ptxas_log(log.getvalue())
    return Resources(registers, stores, loads, stack, compiled.metadata.shared + static, seconds)
