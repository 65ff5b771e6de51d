"""The Triton dynamic-routing kernels against the PyTorch backend: outputs and every gradient.

On a machine without CUDA the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set below before
triton is imported, as tests/conftest.py also does), so shapes are small. Every buffer the kernels allocate with
torch.empty / torch.empty_like is filled with NaN first, so an element a kernel fails to write fails the test.
The interpreter does not compile the kernels; tests/test_kernel_compile.py lowers them for sm_80 and sm_90.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import kernels.dynamic.op as kernel  # noqa: E402
import routing  # noqa: E402  (registers backend "triton" where triton is installed)
from kernels.utils import accumulation_dtype, interpreter_enabled  # noqa: E402
from tests.compare import assert_close  # noqa: E402

DEVICE = torch.device("cpu" if interpreter_enabled() or not torch.cuda.is_available() else "cuda")
EPS = 1e-8

# (dtype, atol, rtol) against a float64 oracle run on the same (rounded) inputs
FLOAT64 = (torch.float64, 1e-12, 1e-10)
PRECISIONS = [(torch.float32, 2e-6, 1e-5), (torch.bfloat16, 2e-2, 2e-2), (torch.float16, 5e-3, 1e-2)]


@pytest.fixture(autouse=True)
def poisoned_allocations(monkeypatch):
    """torch.empty / torch.empty_like return NaN-filled (floats) or -1-filled (integers) tensors."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(math.nan if t.is_floating_point() else -1)

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))


def make_inputs(B, I, J, D, *, acts=True, dtype=torch.float64, seed=0, parent_major=False):
    """Votes [B, I, J, D] (a [B, J, I, D]-contiguous view when parent_major) and activations [B, I] or None."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, J, I, D) if parent_major else (B, I, J, D)
    votes = torch.randn(shape, generator=g, dtype=torch.float64)
    votes = (votes.transpose(1, 2) if parent_major else votes).to(DEVICE, dtype)
    a = (torch.rand(B, I, generator=g, dtype=torch.float64) * 0.8 + 0.1).to(DEVICE, dtype) if acts else None
    return votes, a


def run_and_grad(fn, votes, acts, grads, with_c=True):
    """fn(votes, acts) -> (v, |v|, c); returns the outputs and the gradients of sum(out * grad) wrt the leaves."""
    leaves = [votes.detach().clone().requires_grad_()]
    if acts is not None:
        leaves.append(acts.detach().clone().requires_grad_())
    out = fn(leaves[0], leaves[1] if acts is not None else None)
    used = 3 if with_c else 2  # without c, the couplings' gradient never reaches the backward
    torch.autograd.backward(list(out[:used]), [g.to(o.dtype) for g, o in zip(grads[:used], out[:used], strict=False)])
    return out, [x.grad for x in leaves]


def random_grads(B, I, J, D, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE) for shape in ((B, J, D), (B, J), (B, I, J))]


def check_against_torch(votes, acts, iterations, detach_inner, tolerances, with_c=True, **config):
    """The kernel on votes/acts vs the PyTorch backend in float64 on the same values: outputs and gradients."""
    _, atol, rtol = tolerances
    B, I, J, D = votes.shape
    grads = random_grads(B, I, J, D)
    reference = routing.create("dynamic", backend="torch", iterations=iterations, detach_inner=detach_inner)
    want, want_grads = run_and_grad(reference, votes.double(), None if acts is None else acts.double(), grads, with_c)
    got, got_grads = run_and_grad(
        lambda v, a: kernel.dynamic_routing(v, a, iterations, detach_inner, EPS, **config), votes, acts, grads, with_c)
    for name, g, w in zip(("poses", "activations", "assignments"), got, want, strict=False):
        assert g.dtype == votes.dtype, f"{name}: dtype {g.dtype} != votes' {votes.dtype}"
        assert_close(g, w, atol=atol, rtol=rtol, what=name)
    for name, g, w in zip(("votes' gradient", "activations' gradient"), got_grads, want_grads, strict=False):
        assert_close(g, w, atol=atol, rtol=rtol, what=name)


# ---- exact agreement in float64 ----

SHAPES = [  # B, I, J, D, launch config: awkward sizes, one parent, one pose entry, ragged and several chunks
    (1, 1, 1, 1, {}),
    (3, 7, 3, 5, {}),
    (2, 7, 3, 5, {"block_i": 2, "blocks_per_program": 2}),  # 2 programs per sample, last sub-block ragged
    (1, 33, 10, 16, {"block_i": 4, "blocks_per_program": 3}),  # 3 programs per sample, 9 sub-blocks
    (2, 9, 1, 6, {"block_i": 4, "blocks_per_program": 1}),
    (2, 5, 4, 1, {}),
]


@pytest.mark.parametrize("B, I, J, D, config", SHAPES)
@pytest.mark.parametrize("detach_inner", [False, True])
def test_matches_torch_backend_float64(B, I, J, D, config, detach_inner):
    votes, acts = make_inputs(B, I, J, D, acts=(B + I) % 2 == 0)
    check_against_torch(votes, acts, 3, detach_inner, FLOAT64, **config)


@pytest.mark.parametrize("iterations", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("detach_inner", [False, True])
def test_every_iteration_count_matches_torch_backend(iterations, detach_inner):
    votes, acts = make_inputs(2, 6, 3, 4, seed=iterations)
    check_against_torch(votes, acts, iterations, detach_inner, FLOAT64, block_i=2, blocks_per_program=2)


@pytest.mark.parametrize("use_acts", [False, True])
def test_strided_votes_and_activations(use_acts):
    # a parent-major layout handed over as a [B, I, J, D] view, and activations with a column stride of 2
    votes, _ = make_inputs(2, 7, 3, 5, parent_major=True)
    acts = (torch.rand(2, 14, dtype=torch.float64, device=DEVICE) + 0.1)[:, ::2] if use_acts else None
    assert acts is None or acts.stride() == (14, 2)
    assert not votes.is_contiguous()
    check_against_torch(votes, acts, 3, False, FLOAT64, block_i=4, blocks_per_program=1)


def test_gradient_without_the_assignments_output():
    votes, acts = make_inputs(2, 7, 3, 5)
    check_against_torch(votes, acts, 3, False, FLOAT64, with_c=False, block_i=2, blocks_per_program=2)


# ---- single and half precision ----

@pytest.mark.parametrize("precision", PRECISIONS, ids=lambda p: str(p[0]).removeprefix("torch."))
def test_lower_precision_within_tolerance(precision):
    dtype = precision[0]
    votes, acts = make_inputs(2, 33, 10, 16, dtype=dtype)
    check_against_torch(votes, acts, 3, False, precision, block_i=8, blocks_per_program=2)


# ---- behaviour ----

def test_router_uses_the_kernels_and_returns_a_routing_result(monkeypatch):
    calls = []
    original = routing.dynamic.triton_backend.dynamic_routing
    monkeypatch.setattr(routing.dynamic.triton_backend, "dynamic_routing",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    votes, acts = make_inputs(2, 5, 3, 4)
    router = routing.create("dynamic", backend="triton", iterations=2)
    result = router(votes, acts)
    want = routing.create("dynamic", backend="torch", iterations=2)(votes, acts)
    assert calls and isinstance(result, routing.RoutingResult)
    for name, g, w in zip(result._fields, result, want, strict=False):
        assert_close(g, w, atol=1e-12, rtol=1e-10, what=name)


def test_auto_backend_never_picks_the_interpreter(monkeypatch):
    if DEVICE.type == "cuda":
        pytest.skip("checks CPU tensors under the interpreter")
    monkeypatch.setattr(routing.dynamic.triton_backend, "dynamic_routing", lambda *a, **k: pytest.fail("kernel called"))
    router = routing.create("dynamic", backend="auto")
    assert router.backend == "triton"
    votes, acts = make_inputs(2, 5, 3, 4)
    result = router(votes, acts)
    want = routing.create("dynamic", backend="torch")(votes, acts)
    assert_close(result.poses, want.poses, atol=0, rtol=0, what="poses")


def test_triton_backend_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    votes, _ = make_inputs(1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"backend 'triton': the Triton kernels need CUDA tensors \(got cpu"):
        routing.create("dynamic", backend="triton")(votes.cpu())


def test_parents_too_large_for_a_program_are_a_clear_error():
    votes = torch.randn(1, 1, 200, 128, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match=r"J x D = 200 x 128 .* more than the 16384"):
        routing.create("dynamic", backend="triton")(votes)


def test_bad_launch_configuration_is_a_clear_error():
    votes, _ = make_inputs(1, 5, 2, 2)
    with pytest.raises(ValueError, match=r"block_i must be a power of two"):
        kernel.dynamic_routing(votes, None, 3, False, EPS, block_i=3)


def test_zero_votes_give_finite_outputs_and_gradients():
    votes = torch.zeros(2, 5, 3, 4, dtype=torch.float32, device=DEVICE, requires_grad=True)
    v, length, c = kernel.dynamic_routing(votes, None, 3, False, EPS)
    (v.sum() + length.sum() + c.sum()).backward()
    for name, t in (("poses", v), ("lengths", length), ("couplings", c), ("gradient", votes.grad)):
        assert torch.isfinite(t).all(), f"{name} not finite"
    assert_close(c, torch.full_like(c, 1 / 3), atol=1e-7, rtol=0, what="couplings")


def test_allocations_are_poisoned():
    assert torch.empty(3).isnan().all() and torch.empty_like(torch.ones(2)).isnan().all()


def test_dynamo_traces_the_router_without_graph_breaks():
    """torch.compile(fullgraph=True) through the router, the autograd.Function and the ops (Dynamo only: the
    ops run eagerly; under the interpreter they get a shape-only fake implementation, as wrap_triton gives on a
    GPU). The GPU check script compiles the real thing."""
    if DEVICE.type == "cpu":
        register_interpreter_fakes()
    votes, acts = make_inputs(2, 5, 3, 4, dtype=torch.float32)
    router = routing.create("dynamic", backend="triton", iterations=3)

    def loss(v, a):
        out = router(v, a)
        return out.poses.square().sum() + out.activations.sum() + out.assignments[..., 0].sum()

    leaves = [votes.clone().requires_grad_(), acts.clone().requires_grad_()]
    compiled = torch.compile(loss, backend="eager", fullgraph=True)
    got = compiled(*leaves)
    got_grads = torch.autograd.grad(got, leaves)
    eager_leaves = [x.detach().clone().requires_grad_() for x in leaves]
    want = loss(*eager_leaves)
    want_grads = torch.autograd.grad(want, eager_leaves)
    assert_close(got, want, atol=0, rtol=0, what="loss")
    for g, w in zip(got_grads, want_grads, strict=False):
        assert_close(g, w, atol=0, rtol=0, what="gradient")


def register_interpreter_fakes() -> None:
    """Shape-only implementations of the ops for FakeTensor tracing under the interpreter (idempotent)."""
    if getattr(kernel.dynamic_routing_forward, "_interpreter_fake", False):
        return

    @kernel.dynamic_routing_forward.register_fake
    def _(votes, activations, iterations, eps, block_i, blocks_per_program):
        B, I, J, D = votes.shape
        buffers = [votes.new_empty(iterations, B, J, D, dtype=accumulation_dtype(votes.dtype))] * 3
        return votes.new_empty(B, J, D), votes.new_empty(B, J), votes.new_empty(B, I, J), *buffers

    @kernel.dynamic_routing_backward.register_fake
    def _(votes, activations, *_):
        dtype = votes.dtype if activations is None else activations.dtype
        return votes.new_empty(votes.shape), votes.new_empty(votes.shape[:2], dtype=dtype)

    kernel.dynamic_routing_forward._interpreter_fake = True

