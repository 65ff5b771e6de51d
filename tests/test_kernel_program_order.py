"""Every Triton kernel gives bit-identical results whatever order its programs run in.

On a GPU the programs of a launch run in no fixed order, and the cross-program sums (the last-arriving program
adds the partials of the others) must not depend on it: the partials are added in chunk order, never in arrival
order. Under Triton's interpreter the programs run one after another in the grid's order; the `program_order`
fixture makes them run in default, reversed or shuffled order, by renumbering the program each step of the
interpreter's grid loop starts (the loop calls `interpreter_builder.set_grid_idx(x, y, z)` once per program, in
row-major order from (0, 0, 0), then runs the program: mapping the k-th call to the k-th entry of a permutation of
the grid runs every program exactly once, in the permuted order).

Each case in `CASES` runs a kernel op forward and backward at a shape that splits every sample over several
programs, and returns its outputs and gradients; they must be torch.equal across the three orders. Two further
tests show that the patch really reorders the programs and that an order-dependent sum fails the comparison.
A new kernel op adds a case to `CASES` (a function returning its outputs and gradients, several programs per
reduction).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

import kernels.dynamic.op as dynamic_op  # noqa: E402
import kernels.dynamic.votes_op as dynamic_votes_op  # noqa: E402
import kernels.em.op as em_op  # noqa: E402
import kernels.em.votes_op as em_votes_op  # noqa: E402
from kernels.utils import interpreter_enabled  # noqa: E402

pytestmark = pytest.mark.skipif(not interpreter_enabled(), reason="program order is set through the interpreter")

ORDERS = ("default", "reversed", "shuffled")


def _permutation(order: str, count: int, rng: random.Random) -> list[int]:
    programs = list(range(count))
    if order == "reversed":
        programs.reverse()
    elif order == "shuffled":
        while count > 2 and programs in (sorted(programs), sorted(programs, reverse=True)):
            rng.shuffle(programs)
    elif order != "default":
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return programs


@contextmanager
def program_order(order: str, seed: int = 0, ran: list | None = None) -> Iterator[None]:
    """Within the block, each interpreted launch runs its programs in `order`; `ran` (if given) receives the
    (x, y, z) program ids in the order they ran."""
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    rng = random.Random(seed)
    launch: dict[str, list[int]] = {}
    original = builder.set_grid_idx

    def set_grid_idx(x: int, y: int, z: int) -> None:
        nx, ny, nz = builder.grid_dim
        step = (x * ny + y) * nz + z
        if step == 0:  # the grid loop starts every launch at (0, 0, 0)
            launch["programs"] = _permutation(order, nx * ny * nz, rng)
        program = launch["programs"][step]
        idx = (program // (ny * nz), program // nz % ny, program % nz)
        if ran is not None:
            ran.append(idx)
        original(*idx)

    builder.set_grid_idx = set_grid_idx
    try:
        yield
    finally:
        del builder.set_grid_idx  # the instance attribute; the class's method shows through again


def results_in_each_order(case: Callable[[], list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    results = {}
    for order in ORDERS:
        with program_order(order):
            results[order] = [t.detach().clone() for t in case()]
    return results


def assert_order_independent(case: Callable[[], list[torch.Tensor]]) -> None:
    results = results_in_each_order(case)
    for order in ORDERS[1:]:
        for index, (want, got) in enumerate(zip(results["default"], results[order], strict=True)):
            assert torch.equal(want, got), (
                f"result {index} differs between the default and the {order} program order "
                f"(largest difference {(want.double() - got.double()).abs().max().item():.3g})")


# ---- the kernel ops ----


def _leaves(*shapes: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype).requires_grad_() for shape in shapes]


def _backward(outputs: list[torch.Tensor], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    torch.autograd.backward(outputs, [torch.randn(o.shape, generator=g).to(o.dtype) for o in outputs])


def dynamic_case(with_activations: bool, detach_inner: bool) -> Callable[[], list[torch.Tensor]]:
    """Dynamic routing, 2 iterations, votes [2, 5, 2, 3]: 3 programs per sample (two sub-blocks of one child
    each, the last program one), so each iteration's sum over children and the backward's reduction pass are
    cross-program sums."""
    def case() -> list[torch.Tensor]:
        votes, activations = _leaves((2, 5, 2, 3), (2, 5), seed=0)
        config = dynamic_op.launch_config(votes, dynamic_op.FORWARD_TILE, block_i=1, blocks_per_program=2)
        assert config.n_chunks == 3
        acts = torch.sigmoid(activations) if with_activations else None
        outputs = list(dynamic_op.dynamic_routing(votes, acts, 2, detach_inner, 1e-8, block_i=1,
                                                  blocks_per_program=2))
        _backward(outputs, seed=1)
        return [*outputs, votes.grad, activations.grad if with_activations else votes.new_zeros(0)]
    return case


def em_case(shared: bool, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[torch.Tensor]]:
    """EM routing, 2 iterations, votes [4, 5, 2, 2] with tiles of 2 children and 2 tiles per program: 2 programs
    per row write partial moments that another kernel sums; with child_index (2 windows per sample) the shared
    children's normalisers too."""
    monkeypatch.setattr(em_op, "TILE_ELEMENTS", 8)
    monkeypatch.setattr(em_op, "TARGET_PROGRAMS", 6)
    tiles, programs = em_op.child_split(4, 5, em_op.blocks(5, 2, 2)[0])
    assert tiles > 1 and programs > 1
    child_index = torch.tensor([[0, 1, 2, 3, 4], [2, 3, 4, 5, 6]]) if shared else None

    def case() -> list[torch.Tensor]:
        votes, activations, beta_u, beta_a = _leaves((4, 5, 2, 2), (4, 5), (2,), (2,), seed=2)
        outputs = list(em_op.em_routing(votes, torch.sigmoid(activations), beta_u, beta_a, iterations=2,
                                        final_lambda=0.01, child_index=child_index))
        _backward(outputs, seed=3)
        return [*outputs, votes.grad, activations.grad, beta_u.grad, beta_a.grad]
    return case


@pytest.mark.parametrize("with_activations, detach_inner",
                         [(True, False), pytest.param(False, True, marks=pytest.mark.slow)])
def test_dynamic_routing_is_independent_of_program_order(with_activations, detach_inner):
    assert_order_independent(dynamic_case(with_activations, detach_inner))


@pytest.mark.parametrize("shared", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_em_routing_is_independent_of_program_order(shared, monkeypatch):
    assert_order_independent(em_case(shared, monkeypatch))


def fused_dynamic_case() -> Callable[[], list[torch.Tensor]]:
    """The dense layer's votes formed inside the dynamic kernel: poses [5, 9, 3], W [9, 3, 5, 3], groups of 2
    samples (3 groups, the last padded) and 5 programs per group (2 children each, the last ragged)."""
    def case() -> list[torch.Tensor]:
        poses, transforms, activations = _leaves((5, 9, 3), (9, 3, 5, 3), (5, 9), seed=4)
        config = dynamic_votes_op.votes_launch_config(5, 9, 3, 5, torch.float32, poses.device, 2, 2)
        assert (config.n_groups, config.n_chunks) == (3, 5)
        outputs = list(dynamic_votes_op.dynamic_routing_linear(
            poses, transforms, torch.sigmoid(activations), 3, False, 1e-8, block_b=2, children_per_program=2))
        _backward(outputs, seed=5)
        return [*outputs, poses.grad, transforms.grad, activations.grad]
    return case


def fused_em_case(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[torch.Tensor]]:
    """The dense layer's votes formed inside EM's partials kernel: poses [4, 9, 3], W [9, 3, 4, 3], the split of
    em_case (3 programs per row)."""
    monkeypatch.setattr(em_op, "TILE_ELEMENTS", 32)
    monkeypatch.setattr(em_op, "TARGET_PROGRAMS", 6)

    def case() -> list[torch.Tensor]:
        poses, transforms, activations, beta_u, beta_a = _leaves((4, 9, 3), (9, 3, 4, 3), (4, 9), (3,), (3,), seed=6)
        outputs = list(em_votes_op.em_routing_linear(poses, transforms, torch.sigmoid(activations), beta_u, beta_a,
                                                     iterations=3))
        _backward(outputs, seed=7)
        return [*outputs, poses.grad, transforms.grad, activations.grad, beta_u.grad, beta_a.grad]
    return case


def test_fused_votes_kernels_are_independent_of_program_order(monkeypatch):
    assert_order_independent(fused_dynamic_case())
    assert_order_independent(fused_em_case(monkeypatch))


# ---- the check itself: the order really changes, and an order-dependent sum is caught ----


@triton.jit
def _arrival_kernel(counter_ptr, arrival_ptr):
    """Each program writes the number of programs that ran before it into arrival[program]."""
    program = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    tl.store(arrival_ptr + program, tl.atomic_add(counter_ptr, 1))


@triton.jit
def _arrival_order_sum_kernel(x_ptr, total_ptr):
    """A deliberately wrong reduction: every program adds its value to the total as it arrives."""
    tl.atomic_add(total_ptr, tl.load(x_ptr + tl.program_id(0)))


@pytest.mark.parametrize("order", ORDERS)
def test_the_patch_runs_every_program_once_in_the_chosen_order(order):
    grid = (3, 4)
    counter = torch.zeros(1, dtype=torch.int32)
    arrival = torch.full((12,), -1, dtype=torch.int32)
    ran: list[tuple[int, int, int]] = []
    with program_order(order, ran=ran):
        _arrival_kernel[grid](counter, arrival)
    assert sorted(arrival.tolist()) == list(range(12))  # each program ran exactly once
    ran_linear = [x * 4 + y for x, y, _ in ran]
    assert arrival.tolist() == [ran_linear.index(p) for p in range(12)]
    default = list(range(12))
    ran_order = sorted(default, key=lambda p: arrival[p].item())
    if order == "default":
        assert ran_order == default
    elif order == "reversed":
        assert ran_order == default[::-1]
    else:
        assert ran_order not in (default, default[::-1])


def test_an_order_dependent_sum_fails_the_comparison():
    # float32: 1 + 1e8 rounds to 1e8, so the total is 0 when 1 comes first and 1 when it comes last
    x = torch.tensor([1.0, 1e8, -1e8], dtype=torch.float32)

    def case() -> list[torch.Tensor]:
        total = torch.zeros(1, dtype=torch.float32)
        _arrival_order_sum_kernel[(3,)](x, total)
        return [total]

    results = results_in_each_order(case)
    assert results["default"][0].item() == 0.0 and results["reversed"][0].item() == 1.0
    with pytest.raises(AssertionError, match="differs between the default and the reversed"):
        assert_order_independent(case)
