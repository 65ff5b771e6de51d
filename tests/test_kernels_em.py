"""The Triton EM routing kernels against the PyTorch backend (routing.em), on the CPU under TRITON_INTERPRET=1:
outputs and every gradient, awkward shapes, 1..5 iterations, the convolutional normalisation, extreme inputs,
half precisions, poisoned buffers, and the router's fallback and errors."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (tests/conftest.py does the same)

import pytest

import kernels.em.op as em_op
import routing  # registers em/triton where triton is installed
from kernels.em.op import em_routing
from tests.compare import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CHILD_INDEX = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4], [0, 2, 4, 1]])  # 3 windows of 4 children out of 5


def make_inputs(N, I, J, D, *, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    votes = torch.randn(N, I, J, D, generator=g, dtype=torch.float64) * scale
    acts = torch.rand(N, I, generator=g, dtype=torch.float64) * 0.8 + 0.1
    return votes, acts


def routers(J, out_caps, seed=1, **options):
    """(torch router, triton router) with the same random betas, both float64."""
    ref = routing.create("em", backend="torch", out_caps=J if out_caps else None, **options).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    tri = routing.create("em", backend="triton", out_caps=J if out_caps else None, **options).double()
    tri.load_state_dict(ref.state_dict())
    return ref, tri.to(DEVICE)


def run(router, votes, acts, child_index, grads, dtype):
    """Outputs and gradients (votes, activations, beta_u, beta_a) of one router for upstream gradients `grads`."""
    router.zero_grad()
    device = router.beta_u.device
    v = votes.to(device, dtype).clone().requires_grad_()
    a = None if acts is None else acts.to(device, dtype).clone().requires_grad_()
    out = router(v, a, child_index=child_index)
    # R of a 1-iteration routing is a constant
    used = [(o, g) for o, g in zip(out, grads, strict=False) if o.requires_grad]
    torch.autograd.backward([o for o, _ in used], [g.to(device, dtype) for _, g in used])
    return list(out), [v.grad, None if a is None else a.grad, router.beta_u.grad, router.beta_a.grad]


def compare(votes, acts, *, J, iterations=3, out_caps=True, final_lambda=1.0, child_index=None,
            dtype=torch.float64, atol=1e-10, rtol=1e-9):
    """The triton backend on `dtype` inputs against the torch backend in float64 on the same (rounded) inputs."""
    ref, tri = routers(J, out_caps, iterations=iterations, final_lambda=final_lambda)
    votes = votes.to(dtype).double()
    acts = None if acts is None else acts.to(dtype).double()
    g = torch.Generator().manual_seed(7)
    N, I, _, D = votes.shape
    grads = [torch.randn(s, generator=g, dtype=torch.float64) for s in ((N, J, D), (N, J), (N, I, J))]
    want, want_grads = run(ref, votes, acts, child_index, grads, torch.float64)
    got, got_grads = run(tri, votes, acts, child_index, grads, dtype)
    for name, x, y in zip(("poses", "activations", "assignments"), got, want, strict=False):
        assert x.dtype == dtype
        assert_close(x, y, atol=atol, rtol=rtol, what=name)
    for name, x, y in zip(("votes", "activations", "beta_u", "beta_a"), got_grads, want_grads, strict=False):
        if y is not None:
            assert_close(x, y, atol=atol * max(1.0, float(y.abs().max())), rtol=rtol, what=f"gradient of {name}")
    return got, got_grads


def use_small_tiles(monkeypatch, shape, tile_elements, target_programs):
    """Shrink the tiles so that a row of `shape` is split into several programs of several tiles each, and the
    partial sums and their reduction are exercised."""
    monkeypatch.setattr(em_op, "TILE_ELEMENTS", tile_elements)
    monkeypatch.setattr(em_op, "TARGET_PROGRAMS", target_programs)
    N, I, J, D = shape
    tiles, programs = em_op.child_split(N, I, em_op.blocks(I, J, D)[0])
    assert tiles > 1 and programs > 1


# ---- exact (float64) forward and gradients ----

@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
def test_matches_torch_backend_over_iterations(iterations):
    votes, acts = make_inputs(2, 5, 3, 4)
    compare(votes, acts, J=3, iterations=iterations)


@pytest.mark.parametrize(
    "shape, options",
    [
        ((1, 1, 1, 1), {}),
        ((3, 7, 5, 6), {"out_caps": False}),  # non-powers of two, one beta shared by all parents
        ((2, 6, 2, 16), {"final_lambda": 0.01}),  # 4x4 poses, the paper's inverse temperature
        ((2, 4, 3, 3), {"no_activations": True}),
    ],
)
def test_matches_torch_backend_on_awkward_shapes(shape, options):
    votes, acts = make_inputs(*shape)
    options = dict(options)
    if options.pop("no_activations", False):
        acts = None
    compare(votes, acts, J=shape[2], **options)


def test_matches_torch_backend_with_partial_sums(monkeypatch):
    use_small_tiles(monkeypatch, (2, 9, 3, 4), tile_elements=32, target_programs=3)
    votes, acts = make_inputs(2, 9, 3, 4)
    compare(votes, acts, J=3, iterations=3)


@pytest.mark.parametrize("iterations", [2, 3])
def test_convolutional_normalisation_matches_torch_backend(iterations, monkeypatch):
    use_small_tiles(monkeypatch, (6, 4, 2, 3), tile_elements=8, target_programs=12)
    votes, acts = make_inputs(6, 4, 2, 3, seed=3)
    got, _ = compare(votes, acts, J=2, iterations=iterations, child_index=CHILD_INDEX)
    # each sample's child sums to 1 over every (window, parent) it feeds, and not per window
    R = got[2].detach().cpu().reshape(2, 3, 4, 2).sum(-1)
    per_child = torch.zeros(2, 5, dtype=R.dtype).index_add_(1, CHILD_INDEX.reshape(-1), R.reshape(2, -1))
    assert_close(per_child, torch.ones_like(per_child), atol=1e-12, rtol=0, what="R summed per shared child")
    assert not torch.allclose(R, torch.ones_like(R))


def test_zero_activations_hit_the_mass_floor():
    votes, acts = make_inputs(2, 5, 3, 4)
    acts[0] = 0.0  # mass < eps for every parent of sample 0
    acts[1, :3] = 1e-12
    compare(votes, acts, J=3)


# ---- extreme inputs ----

def extreme_votes(case):
    votes, acts = make_inputs(2, 6, 3, 16, scale=1.0)
    votes = {
        "large": votes * 1e3,
        "tiny": votes * 1e-9,  # every variance is min_var
        "identical": votes.mean(1, keepdim=True).expand_as(votes).clone(),
        "one_child": votes[:, :1].contiguous(),
        "saturated": votes,  # with final_lambda=100 the parent activations saturate at 0 and 1
    }[case]
    return votes, acts[:, : votes.shape[1]], 100.0 if case == "saturated" else 1.0


@pytest.mark.parametrize("case", ["large", "tiny", "identical", "one_child", "saturated"])
def test_extreme_votes_exact_in_float64_and_finite_in_lower_precisions(case):
    """The math holds in these regimes (float64 against the torch backend) and, in float32/float16/bfloat16,
    nothing is NaN or Inf where the torch backend has none. (Their float32 gradients are ill-conditioned:
    both backends differ from float64 by up to ~1e-4 of the largest element, so closeness is checked in
    float64 and on well-conditioned inputs below.)"""
    votes, acts, final_lambda = extreme_votes(case)
    got, _ = compare(votes, acts, J=3, final_lambda=final_lambda)
    if case == "saturated":
        assert ((got[1] < 1e-6) | (got[1] > 1 - 1e-6)).any()
    ref, tri = routers(3, True, iterations=3, final_lambda=final_lambda)
    grads = [torch.ones(s, dtype=torch.float64) for s in ((2, 3, 16), (2, 3), (2, votes.shape[1], 3))]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        low_votes, low_acts = votes.to(dtype).double(), acts.to(dtype).double()
        want, want_grads = run(ref.float(), low_votes, low_acts, None, grads, torch.float32)
        got, got_grads = run(tri.float(), low_votes, low_acts, None, grads, dtype)
        for x, y in zip([*got, *got_grads], [*want, *want_grads], strict=False):
            assert torch.isfinite(y).all()
            assert torch.isfinite(x).all(), f"{case}, {dtype}: non-finite values where the torch backend has none"


# ---- half precisions (math in float32) ----

@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 1e-2)])
def test_reduced_precision_inputs(dtype, tol):
    votes, acts = make_inputs(2, 6, 3, 16)
    compare(votes, acts, J=3, dtype=dtype, atol=tol, rtol=tol)


# ---- every output element is written ----

@pytest.mark.parametrize("iterations, conv", [(1, False), (3, False), (3, True)])
def test_poisoned_buffers_are_all_overwritten(monkeypatch, iterations, conv):
    """All kernel buffers start as NaN: an element a kernel fails to write shows up in a result or gradient."""
    votes, acts = make_inputs(6, 4, 2, 3) if conv else make_inputs(2, 5, 3, 4)
    child_index = CHILD_INDEX if conv else None
    clean = compare(votes, acts, J=votes.shape[2], iterations=iterations, child_index=child_index)
    monkeypatch.setattr(em_op, "allocate",
                        lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device))
    poisoned = compare(votes, acts, J=votes.shape[2], iterations=iterations, child_index=child_index)
    for x, y in zip([*clean[0], *clean[1]], [*poisoned[0], *poisoned[1]], strict=False):
        assert torch.equal(x, y)


# ---- the router: registration, fallback, errors ----

def test_triton_backend_is_registered():
    assert "triton" in routing.backends("em")
    assert type(routing.create("em", backend="triton")).__name__ == "EMRoutingTriton"


def test_auto_backend_falls_back_to_torch_on_cpu_tensors():
    votes, acts = make_inputs(2, 5, 3, 4)
    router = routing.create("em", backend="auto", out_caps=3).double()
    want = routing.create("em", backend="torch", out_caps=3).double()(votes, acts)
    for x, y in zip(router(votes, acts), want, strict=False):
        assert torch.equal(x, y)


def test_unsupported_shapes_raise_for_triton_and_fall_back_for_auto():
    votes = torch.randn(1, 2, 1, 1 << 15)  # J * D beyond the kernels' tile
    with pytest.raises(ValueError, match="J \\* D up to"):
        routing.create("em", backend="triton").to(DEVICE)(votes.to(DEVICE))
    routing.create("em", backend="auto")(votes)  # the torch backend takes it


def test_bad_inputs_give_clear_errors():
    votes, acts = make_inputs(2, 4, 3, 2)
    beta = torch.zeros(3, dtype=torch.float64)
    cases = [
        (dict(votes=votes[0]), "votes must be a non-empty tensor"),
        (dict(acts=acts[:, :3]), "activations must have shape"),
        (dict(beta_u=torch.zeros(2)), "beta_u must have shape"),
        (dict(iterations=0), "iterations"),
        (dict(child_index=torch.tensor([[0, 1, 2]])), "child_index must be an integer tensor"),
        (dict(child_index=torch.tensor([[0, 1, 2, -1]])), "non-negative"),
        (dict(votes=votes.to(torch.int32)), "float16/bfloat16/float32/float64"),
    ]
    for change, message in cases:
        args = dict(votes=votes, acts=acts, beta_u=beta, beta_a=beta, iterations=3, child_index=None) | change
        with pytest.raises(ValueError, match=message):
            em_routing(args["votes"], args["acts"], args["beta_u"], args["beta_a"], iterations=args["iterations"],
                       child_index=args["child_index"])
    with pytest.raises(ValueError, match="out_caps=3 but votes have J=2"):
        routing.create("em", backend="triton", out_caps=3)(torch.randn(2, 4, 2, 4))
