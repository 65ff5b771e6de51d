"""Count the global-memory bytes a computation moves: the Triton kernels' loads and stores under the interpreter,
and the input and output bytes of every PyTorch operator around them.

Kernels (TRITON_INTERPRET=1): every load, store and atomic the interpreter executes is counted at the element size
of its pointer, active lanes only (a masked-off lane moves nothing); an atomic read-modify-write counts as a read
and a write. These are the bytes the kernels ask of global memory: a value that several programs load counts once
per load (on a GPU the repeats may come from L2, so the count is an upper bound on DRAM traffic).

PyTorch operators (a TorchDispatchMode): for each operator, the bytes of its tensor inputs (read) and tensor outputs
(written), each tensor counted by its distinct elements (a broadcast dimension of stride 0 counts once). Operators
that only make views or allocate (no data moves) count nothing, nor do the interpreter's own copies of a launch's
arguments. The registered Triton ops (capsule_routing::*) count nothing themselves: their kernels are counted by the
interpreter hooks and the PyTorch operators inside them by this mode.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Operators that allocate without writing data (an allocation is not traffic).
_ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


@dataclass
class Traffic:
    """Bytes read and written, in total and per source (a kernel's name, or an operator's "aten.<name>")."""

    read: int = 0
    written: int = 0
    by_source: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    @property
    def total(self) -> int:
        return self.read + self.written

    def add(self, source: str, read: int, written: int) -> None:
        self.read += read
        self.written += written
        entry = self.by_source[source]
        entry[0] += read
        entry[1] += written


def distinct_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor view covers: broadcast (stride 0) dimensions count once."""
    elements = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride != 0:
            elements *= size
    return elements * t.element_size() if t.numel() else 0


def _tensors(values) -> Iterator[torch.Tensor]:
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, list | tuple):
            yield from _tensors(value)


def _is_view(func) -> bool:
    """Whether the operator only returns views of its inputs (no write, every output aliases an input)."""
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


class _OperatorCounter(TorchDispatchMode):
    def __init__(self, traffic: Traffic, state: dict):
        super().__init__()
        self.traffic, self.state = traffic, state

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.state["in_kernel"]:
            return func(*args, **kwargs)
        namespace = func.namespace
        if namespace != "aten" and namespace != "prims":
            # a registered op: run its CPU implementation with this mode on, so that what runs inside it counts
            # (its kernels through the interpreter hooks); calling `func` itself would come back here
            with self:
                return func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args, **kwargs)
        out = func(*args, **kwargs)
        name = func._schema.name.split("::")[-1]
        if name in _ALLOCATIONS or _is_view(func):
            return out
        read = sum(distinct_bytes(t) for t in _tensors(list(args) + list(kwargs.values())))
        written = sum(distinct_bytes(t) for t in _tensors(out if isinstance(out, list | tuple) else [out]))
        self.traffic.add(f"aten.{name}", read, written)
        return out


@contextmanager
def counting(count_operators: bool = True) -> Iterator[Traffic]:
    """Within the block, count the interpreter's kernel memory accesses and (when `count_operators`) the PyTorch
    operators' bytes into the yielded Traffic. Needs TRITON_INTERPRET=1 for the kernels."""
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    traffic = Traffic()
    state = {"in_kernel": False, "kernel": "?"}

    def active_bytes(ptrs, mask) -> int:
        element = ptrs.get_element_ty().primitive_bitwidth // 8
        return int(np.count_nonzero(mask.data)) * element if mask is not None else ptrs.data.size * element

    load, store = builder.create_masked_load, builder.create_masked_store
    rmw, cas = builder.create_atomic_rmw, builder.create_atomic_cas

    def masked_load(ptrs, mask, other, cache_policy, is_volatile):
        traffic.add(state["kernel"], active_bytes(ptrs, mask), 0)
        return load(ptrs, mask, other, cache_policy, is_volatile)

    def masked_store(ptrs, value, mask, cache_policy):
        traffic.add(state["kernel"], 0, active_bytes(ptrs, mask))
        return store(ptrs, value, mask, cache_policy)

    def atomic_rmw(op, ptr, val, mask, sem, scope):
        moved = active_bytes(ptr, mask)
        traffic.add(state["kernel"], moved, moved)
        return rmw(op, ptr, val, mask, sem, scope)

    def atomic_cas(ptr, cmp, val, sem, scope):
        moved = active_bytes(ptr, None)
        traffic.add(state["kernel"], moved, moved)
        return cas(ptr, cmp, val, sem, scope)

    launch = interpreter.GridExecutor.__call__

    def counted_launch(executor, *args, **kwargs):
        state["in_kernel"], state["kernel"] = True, executor.fn.__name__
        try:
            return launch(executor, *args, **kwargs)
        finally:
            state["in_kernel"] = False

    patches = {"create_masked_load": masked_load, "create_masked_store": masked_store,
               "create_atomic_rmw": atomic_rmw, "create_atomic_cas": atomic_cas}
    for name, hook in patches.items():
        setattr(builder, name, hook)
    interpreter.GridExecutor.__call__ = counted_launch
    try:
        if count_operators:
            with _OperatorCounter(traffic, state):
                yield traffic
        else:
            yield traffic
    finally:
        interpreter.GridExecutor.__call__ = launch
        for name in patches:
            delattr(builder, name)
