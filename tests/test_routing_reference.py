"""The PyTorch backends against naive loops, autograd, the papers' properties and bad inputs."""

from __future__ import annotations

import pytest
import torch

import routing
from kernels.em.schedule import inverse_temperatures
from tests.compare import assert_close
from tests.naive_routing import naive_dynamic, naive_em
from tests.routers import create_for

ALGORITHMS = routing.available()


def make_votes(B=2, I=5, J=3, D=4, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    votes = torch.randn(B, I, J, D, generator=g, dtype=dtype) * scale
    acts = torch.rand(B, I, generator=g, dtype=dtype) * 0.8 + 0.1
    return votes, acts


def with_random_betas(router: routing.Router, seed: int = 1) -> routing.Router:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in router.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return router


# ---- against the naive loops, outputs and gradients ----

@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("detach_inner", [False, True])
@pytest.mark.parametrize("use_acts", [False, True])
def test_dynamic_matches_naive_loops(iterations, detach_inner, use_acts):
    votes, acts = make_votes()
    acts = acts if use_acts else None
    router = routing.create("dynamic", backend="torch", iterations=iterations, detach_inner=detach_inner)
    leaves = [votes.clone().requires_grad_()] + ([acts.clone().requires_grad_()] if use_acts else [])
    naive_leaves = [x.detach().clone().requires_grad_() for x in leaves]
    got = router(leaves[0], leaves[1] if use_acts else None)
    want = naive_dynamic(naive_leaves[0], naive_leaves[1] if use_acts else None, iterations, detach_inner)
    for name, g, w in zip(("poses", "activations", "assignments"), got, want, strict=False):
        assert_close(g, w, atol=1e-12, rtol=1e-10, what=name)
    g_poses, g_act = torch.randn_like(want[0]), torch.randn_like(want[1])
    torch.autograd.backward([got[0], got[1]], [g_poses, g_act])
    torch.autograd.backward([want[0], want[1]], [g_poses, g_act])
    for x, y in zip(leaves, naive_leaves, strict=False):
        assert_close(x.grad, y.grad, atol=1e-12, rtol=1e-10, what="gradient")


@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("use_acts", [False, True])
def test_em_matches_naive_loops(iterations, use_acts):
    votes, acts = make_votes(B=2, I=4, J=3, D=4, scale=0.5)
    acts = acts if use_acts else None
    router = with_random_betas(routing.create("em", backend="torch", iterations=iterations, out_caps=3).double())
    leaves = [votes.clone().requires_grad_()] + ([acts.clone().requires_grad_()] if use_acts else [])
    naive_leaves = [x.detach().clone().requires_grad_() for x in leaves]
    got = router(leaves[0], leaves[1] if use_acts else None)
    bu, ba = (router.beta_u.detach().clone().requires_grad_(), router.beta_a.detach().clone().requires_grad_())
    want = naive_em(naive_leaves[0], naive_leaves[1] if use_acts else None, bu, ba, iterations)
    for name, g, w in zip(("poses", "activations", "assignments"), got, want, strict=False):
        assert_close(g, w, atol=1e-12, rtol=1e-9, what=name)
    g_poses, g_act = torch.randn_like(want[0]), torch.randn_like(want[1])
    torch.autograd.backward([got[0], got[1]], [g_poses, g_act])
    torch.autograd.backward([want[0], want[1]], [g_poses, g_act])
    for x, y in zip([*leaves, router.beta_u, router.beta_a], [*naive_leaves, bu, ba], strict=False):
        assert_close(x.grad, y.grad, atol=1e-11, rtol=1e-8, what="gradient")


def test_em_convolutional_normalisation_matches_naive_loops():
    # 2 samples, 3 windows each, 4 local children drawn from 5 shared children of the sample
    child_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4], [0, 2, 4, 1]])
    votes, acts = make_votes(B=6, I=4, J=2, D=3, scale=0.5, seed=3)
    router = with_random_betas(routing.create("em", backend="torch", iterations=3, out_caps=2).double())
    leaf, naive_leaf = votes.clone().requires_grad_(), votes.clone().requires_grad_()
    got = router(leaf, acts, child_index=child_index)
    want = naive_em(naive_leaf, acts, router.beta_u.detach(), router.beta_a.detach(), 3, child_index=child_index)
    for name, g, w in zip(("poses", "activations", "assignments"), got, want, strict=False):
        assert_close(g, w, atol=1e-12, rtol=1e-9, what=name)
    # each sample's child sums to 1 over every (window, parent) it feeds, not per window
    R = got.assignments.detach().reshape(2, 3, 4, 2).sum(-1)  # [sample, window, local child]
    per_child = torch.zeros(2, 5, dtype=R.dtype).index_add_(1, child_index.reshape(-1), R.reshape(2, -1))
    assert_close(per_child, torch.ones(2, 5, dtype=R.dtype), atol=1e-12, rtol=0, what="R summed per child")
    assert not torch.allclose(R, torch.ones_like(R))
    torch.autograd.backward(got[1], torch.ones_like(got[1]))
    torch.autograd.backward(want[1], torch.ones_like(want[1]))
    assert_close(leaf.grad, naive_leaf.grad, atol=1e-11, rtol=1e-8, what="gradient")


# ---- gradcheck in float64 ----

def test_dynamic_gradcheck():
    votes, acts = make_votes(B=2, I=3, J=3, D=2)
    router = routing.create("dynamic", backend="torch", iterations=3)
    inputs = (votes.requires_grad_(), acts.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, a: tuple(router(v, a)), inputs)


def central_difference_vjp(fn, x, grad_out, h=1e-6):
    """sum_k grad_out_k d fn_k / d x by central differences, element by element."""
    flat = x.detach().clone().reshape(-1)
    out = torch.empty_like(flat)
    for k in range(flat.numel()):
        plus, minus = flat.clone(), flat.clone()
        plus[k] += h
        minus[k] -= h
        diff = fn(plus.reshape(x.shape)) - fn(minus.reshape(x.shape))
        out[k] = (grad_out * diff).sum() / (2 * h)
    return out.reshape(x.shape)


def test_dynamic_detach_inner_gradient_is_exact_for_frozen_couplings():
    """detach_inner=True must give the exact (finite-difference) gradient of the last iteration's output with
    the couplings frozen at their routed values, and must differ from the full gradient (gradcheck fails)."""
    votes, acts = make_votes(B=2, I=3, J=3, D=2)
    router = routing.create("dynamic", backend="torch", iterations=3, detach_inner=True)
    couplings = router(votes, acts).assignments.detach()

    def frozen(v):
        return routing.squash(torch.einsum("bij,bi,bijd->bjd", couplings, acts, v))

    leaf = votes.clone().requires_grad_()
    grad_out = torch.randn(2, 3, 2, dtype=votes.dtype, generator=torch.Generator().manual_seed(5))
    router(leaf, acts).poses.backward(grad_out)
    assert_close(leaf.grad, central_difference_vjp(frozen, votes, grad_out), atol=1e-8, rtol=1e-6,
                 what="detach_inner gradient")
    assert not torch.autograd.gradcheck(lambda v: router(v, acts).poses, (votes.clone().requires_grad_(),),
                                        raise_exception=False)


@pytest.mark.parametrize("conv", [False, True])
def test_em_gradcheck(conv):
    votes, acts = make_votes(B=2, I=3, J=2, D=2, scale=0.5)
    router = with_random_betas(routing.create("em", backend="torch", iterations=3, out_caps=2).double())
    child_index = torch.tensor([[0, 1, 2], [1, 2, 3]]) if conv else None

    bu = router.beta_u.detach().clone().requires_grad_()
    ba = router.beta_a.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, a, u_, a_: _em_functional(router, v, a, u_, a_, child_index),
        (votes.requires_grad_(), acts.requires_grad_(), bu, ba),
    )


def _em_functional(router, votes, acts, beta_u, beta_a, child_index):
    params = {"beta_u": beta_u, "beta_a": beta_a}
    return tuple(torch.func.functional_call(router, params, (votes, acts), {"child_index": child_index}))


# ---- the papers' properties, for every registered algorithm ----

@pytest.mark.parametrize("name", ALGORITHMS)
def test_assignments_sum_to_one_over_parents(name):
    votes, acts = make_votes(B=3, I=7, J=4, D=5)
    result = create_for(name, votes.shape).double()(votes, acts)
    assert result.poses.shape == (3, 4, 5)
    assert result.activations.shape == (3, 4)
    assert result.assignments.shape == (3, 7, 4)
    assert_close(result.assignments.sum(-1), torch.ones(3, 7, dtype=votes.dtype), atol=1e-12, rtol=0,
                 what="sum over parents")


@pytest.mark.parametrize("name", ALGORITHMS)
def test_each_sample_is_independent_of_the_batch(name):
    votes, acts = make_votes(B=4, I=6, J=3, D=4)
    router = create_for(name, votes.shape).double()
    together = router(votes, acts)
    for b in range(4):
        alone = router(votes[b : b + 1], acts[b : b + 1])
        for g, w in zip(alone, together, strict=False):
            assert_close(g[0], w[b], atol=1e-12, rtol=1e-10, what=f"sample {b}")


@pytest.mark.parametrize("name", ALGORITHMS)
def test_permuting_children_changes_nothing_but_the_assignments_order(name):
    votes, acts = make_votes(B=2, I=6, J=3, D=4)
    router = create_for(name, votes.shape).double()
    if router.child_parameters:
        pytest.skip(f"{name} learns parameters per child: permuting the children changes the result")
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    a, b = router(votes, acts), router(votes[:, perm], acts[:, perm])
    assert_close(b.poses, a.poses, atol=1e-12, rtol=1e-10, what="poses")
    assert_close(b.activations, a.activations, atol=1e-12, rtol=1e-10, what="activations")
    assert_close(b.assignments, a.assignments[:, perm], atol=1e-12, rtol=1e-10, what="assignments")


@pytest.mark.parametrize("name", ALGORITHMS)
def test_iteration_count_changes_the_result(name):
    if "iterations" not in routing.options(name):
        pytest.skip(f"{name} does not iterate")
    votes, acts = make_votes(B=2, I=6, J=3, D=4)
    results = [create_for(name, votes.shape, iterations=t).double()(votes, acts) for t in (1, 2, 3)]
    for x, y in zip(results, results[1:], strict=False):
        assert (x.poses - y.poses).abs().max() > 1e-6
        assert (x.assignments - y.assignments).abs().max() > 1e-6


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_half_precision_inputs_give_same_dtype_and_close_results(name, dtype):
    votes, acts = make_votes(B=2, I=8, J=3, D=4, dtype=torch.float64)
    router = create_for(name, votes.shape)
    exact = router.double()(votes, acts)
    low = router.float()(votes.to(dtype), acts.to(dtype))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for g, w in zip(low, exact, strict=False):
        assert g.dtype == dtype
        assert_close(g, w, atol=tol, rtol=tol, what=str(dtype))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_zero_and_tiny_votes_give_no_nan(name):
    router = create_for(name, (2, 5, 3, 4))
    for votes in (torch.zeros(2, 5, 3, 4), torch.full((2, 5, 3, 4), 1e-20), torch.ones(2, 5, 3, 4) * 0.3):
        leaf = votes.clone().requires_grad_()
        result = router(leaf)
        (result.poses.sum() + result.activations.sum()).backward()
        for t in (*result, leaf.grad):
            assert torch.isfinite(t).all()


# ---- dynamic routing specifics ----

def test_dynamic_lengths_below_one():
    votes, acts = make_votes(B=3, I=10, J=4, D=6, scale=100.0)
    result = routing.create("dynamic").double()(votes, acts)
    assert (result.activations < 1).all() and (result.activations > 0).all()
    assert_close(result.activations, result.poses.norm(dim=-1), atol=1e-12, rtol=1e-12, what="|v|")


def test_dynamic_one_iteration_is_the_squashed_weighted_mean():
    votes, acts = make_votes(B=2, I=5, J=3, D=4)
    result = routing.create("dynamic", iterations=1).double()(votes, acts)
    J = votes.shape[2]
    s = (votes * acts[..., None, None]).sum(1) / J
    assert_close(result.poses, routing.squash(s), atol=1e-12, rtol=1e-10, what="poses")
    assert_close(result.assignments, torch.full_like(result.assignments, 1 / J), atol=1e-15, rtol=0,
                 what="uniform couplings")


def test_dynamic_detach_inner_changes_gradients_not_outputs():
    votes, acts = make_votes()
    outs, grads = [], []
    for detach in (False, True):
        leaf = votes.clone().requires_grad_()
        out = routing.create("dynamic", detach_inner=detach)(leaf, acts)
        out.poses.sum().backward()
        outs.append(out.poses.detach())
        grads.append(leaf.grad)
    assert_close(outs[0], outs[1], atol=1e-14, rtol=0, what="poses")
    assert (grads[0] - grads[1]).abs().max() > 1e-6


# ---- EM routing specifics ----

def test_em_identical_votes_give_that_vote_as_pose():
    vote = torch.randn(4, dtype=torch.float64)
    votes = vote.expand(2, 6, 3, 4).clone()
    result = routing.create("em", out_caps=3).double()(votes)
    assert_close(result.poses, vote.expand(2, 3, 4), atol=1e-12, rtol=1e-12, what="poses")


def test_em_activations_in_open_unit_interval_and_tiny_variance_safe():
    votes, acts = make_votes(B=2, I=6, J=3, D=16)
    router = with_random_betas(routing.create("em", out_caps=3, final_lambda=1.0).double())
    for v in (votes * 1e3, votes * 1e-9, votes.mean(1, keepdim=True).expand_as(votes).clone()):
        leaf = v.clone().requires_grad_()
        result = router(leaf, acts)
        assert ((result.activations > 0) & (result.activations < 1)).all()
        result.activations.sum().backward()
        assert torch.isfinite(leaf.grad).all() and torch.isfinite(result.poses).all()


def test_em_lambda_schedule_matches_the_reference():
    assert inverse_temperatures(3, 0.01) == pytest.approx([0.0005, 0.000975, 0.00142625])


def test_em_betas_are_learned_per_parent_type():
    router = routing.create("em", out_caps=5)
    assert router.beta_u.shape == (5,) and router.beta_a.shape == (5,)
    assert {n for n, _ in router.named_parameters()} == {"beta_u", "beta_a"}
    with pytest.raises(ValueError, match="out_caps=5 but votes have J=3"):
        router(torch.randn(2, 4, 3, 16))


def test_em_activations_weight_the_m_step():
    # a known re-implementation bug multiplies R by a_i and renormalises, cancelling a_i: here a_i must matter
    votes, acts = make_votes(B=1, I=6, J=2, D=4)
    router = routing.create("em", out_caps=2, iterations=1).double()
    skewed = acts.clone()
    skewed[:, :3] = 1e-3
    assert (router(votes, acts).poses - router(votes, skewed).poses).abs().max() > 1e-3


# ---- bad inputs ----

@pytest.mark.parametrize("name", ALGORITHMS)
def test_bad_inputs_give_clear_errors(name):
    good = torch.randn(2, 5, 3, 4)
    router = create_for(name, good.shape)
    cases = [
        (torch.randn(2, 5, 3), "4 dims"),
        (torch.randn(2, 5, 3, 4, 1), "4 dims"),
        (torch.ones(2, 5, 3, 4, dtype=torch.int64), "floating-point"),
        (torch.zeros(2, 0, 3, 4), "empty"),
        (good.clone().index_fill_(1, torch.tensor([2]), float("nan")), "NaN or Inf"),
        (good.clone().index_fill_(1, torch.tensor([2]), float("inf")), "NaN or Inf"),
    ]
    for votes, message in cases:
        with pytest.raises(ValueError, match=message):
            router(votes)
    with pytest.raises(TypeError, match=r"votes must be a torch.Tensor of shape \[B, I, J, D\], got list"):
        router([1.0, 2.0])
    for acts, message in [
        (torch.rand(2, 4), r"shape \[B, I\]"),
        (torch.rand(2, 5, 1), r"shape \[B, I\]"),
        (torch.ones(2, 5, dtype=torch.int32), "floating-point"),
        (torch.full((2, 5), float("nan")), "NaN or Inf"),
    ]:
        with pytest.raises(ValueError, match=message):
            router(good, acts)


def test_finite_checks_can_be_switched_off_for_benchmarks():
    router = routing.create("dynamic")
    votes = torch.full((1, 2, 2, 2), float("nan"))
    with routing.finite_checks(False):
        router(votes)  # no scan: NaN flows through
    with pytest.raises(ValueError):
        router(votes)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_bad_options_give_clear_errors(name):
    with pytest.raises(ValueError, match="unknown option"):
        routing.create(name, no_such_option=1)
    if "iterations" in routing.options(name):
        with pytest.raises(ValueError, match="iterations"):
            create_for(name, (2, 5, 3, 4), iterations=0)
