"""The memory-traffic counter (experiments/traffic): exact bytes on tiny launches and operators, and counts that
are affine in the batch when the launch split is fixed."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

import kernels.dynamic.op as dynamic_op  # noqa: E402
from experiments.traffic.counter import counting, distinct_bytes  # noqa: E402
from experiments.traffic.main import affine  # noqa: E402
from kernels.utils import interpreter_enabled  # noqa: E402

pytestmark = pytest.mark.skipif(not interpreter_enabled(), reason="the counter instruments Triton's interpreter")


@triton.jit
def _convert_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """y[i] = x[i] in y's dtype, for i < n, in blocks of BLOCK."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _count_kernel(counter_ptr):
    tl.atomic_add(counter_ptr, 1)


def test_kernel_bytes_are_exact_active_lanes_at_the_element_size():
    x = torch.arange(37, dtype=torch.float16)
    y = torch.empty(37, dtype=torch.float64)
    with counting() as traffic:
        _convert_kernel[(3,)](x, y, 37, BLOCK=16)  # 48 lanes, 11 of them masked off
    assert torch.equal(y, x.double())
    assert (traffic.read, traffic.written) == (37 * 2, 37 * 8)
    assert dict(traffic.by_source) == {"_convert_kernel": [74, 296]}


def test_an_atomic_counts_a_read_and_a_write():
    counter = torch.zeros(1, dtype=torch.int32)
    with counting() as traffic:
        _count_kernel[(5,)](counter)
    assert counter.item() == 5
    assert (traffic.read, traffic.written) == (5 * 4, 5 * 4)


def test_operators_count_inputs_and_outputs_but_not_views_or_allocations():
    a = torch.ones(4, 3)
    b = torch.ones(3)  # broadcast against a: read once
    with counting() as traffic:
        c = a + b
        view = c.t().reshape(3, 4)[1:]
        empty = torch.empty(1000)
        d = view.sum()
    assert (c.shape, empty.shape, d.shape) == ((4, 3), (1000,), ())
    # add reads 12 + 3 floats and writes 12; sum reads the 8 floats of the view and writes 1
    assert traffic.read == (12 + 3 + 8) * 4 and traffic.written == (12 + 1) * 4
    assert set(traffic.by_source) == {"aten.add", "aten.sum"}
    assert distinct_bytes(torch.ones(3).expand(5, 3)) == 12


def test_the_interpreter_s_own_copies_are_not_counted():
    x = torch.arange(8, dtype=torch.float32)
    y = torch.empty(8, dtype=torch.float32)
    with counting() as traffic:
        _convert_kernel[(1,)](x, y, 8, BLOCK=8)
    assert set(traffic.by_source) == {"_convert_kernel"}
    assert traffic.total == 64


def _routing_bytes(batch: int) -> int:
    g = torch.Generator().manual_seed(0)
    votes = torch.randn(batch, 6, 3, 4, generator=g).requires_grad_()
    with counting() as forward:
        outputs = dynamic_op.dynamic_routing(votes, None, 2, False, 1e-8, block_i=2, blocks_per_program=1)
    with counting() as backward:
        torch.autograd.backward(list(outputs), [torch.ones_like(o) for o in outputs])
    return forward.total + backward.total


def test_counts_are_affine_in_the_batch_with_a_fixed_launch_split():
    batches = [1, 2, 3]
    counts = [_routing_bytes(b) for b in batches]
    assert counts[0] > 0
    at_four, exact = affine(batches, counts, 4)
    assert exact is True
    assert at_four == _routing_bytes(4)
    _, unknown = affine(batches[:2], counts[:2], 4)
    assert unknown is None
    assert affine([1, 2, 3], [10, 20, 31], 4)[1] is False
