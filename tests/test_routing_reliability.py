"""Issue 16, the routing half: options checked for type and range at create() time, the activations each algorithm
requires, router inputs that are not what a router takes, squash and EM finite across the float32 range, and
second-order gradients refused clearly where a backward is written out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import routing
from kernels.checks import check_child_index
from kernels.utils import interpreter_enabled
from routing.squash import squash, squash_backward
from tests.routers import create_for

ALGORITHMS = routing.available()
SHAPE = (2, 5, 3, 4)
TRITON = torch.cuda.is_available() or interpreter_enabled()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def votes_and_activations(shape=SHAPE, scale=1.0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    top = torch.finfo(torch.float32).max
    votes = (scale * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(-top, top)
    activations = torch.rand(shape[:2], generator=g, dtype=torch.float64)
    return votes.to(dtype), activations.to(dtype)


# ---------------------------------------------------------------- causes 1-3: options, type and range


@pytest.mark.parametrize("value", [-1.0, 0.0, math.nan, math.inf])
def test_dynamic_eps_must_be_finite_and_positive(value):
    with pytest.raises(ValueError, match=r"routing 'dynamic': option eps must be a finite number > 0, got"):
        routing.create("dynamic", eps=value)


@pytest.mark.parametrize("value", ["no", "False", 0, 1, None])
def test_bool_options_must_be_real_bools(value):
    with pytest.raises(TypeError, match=r"routing 'dynamic': option detach_inner must be True or False, got"):
        routing.create("dynamic", detach_inner=value)


@pytest.mark.parametrize("value", [math.inf, math.nan, 0.0, -0.5])
def test_em_final_lambda_must_be_finite_and_positive(value):
    with pytest.raises(ValueError, match=r"routing 'em': option final_lambda must be a finite number > 0"):
        routing.create("em", final_lambda=value)


def test_options_of_the_wrong_type_name_algorithm_option_value_and_expectation():
    with pytest.raises(TypeError, match=r"routing 'dynamic': option eps must be a finite number > 0, got str 'abc'"):
        routing.create("dynamic", eps="abc")
    with pytest.raises(TypeError, match=r"routing 'em': option final_lambda must be .* got str '0.1'"):
        routing.create("em", final_lambda="0.1")
    with pytest.raises(TypeError, match=r"routing 'em': option iterations must be a positive integer, got float 2.0"):
        routing.create("em", iterations=2.0)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_numeric_option_is_checked_for_type_and_range(name):
    """Every option whose default is a number or a bool refuses a value of another type (TypeError) and a value
    out of range (ValueError), the message naming the algorithm and the option."""
    defaults = routing.option_defaults(name)
    sized = routing.sized_options(name, SHAPE)
    checked = 0
    for option, default in defaults.items():
        if isinstance(default, bool):
            cases = [("yes", TypeError)]
        elif isinstance(default, int):
            cases = [("3", TypeError), (2.5, TypeError), (True, TypeError), (0, ValueError), (-1, ValueError)]
        elif isinstance(default, float):
            cases = [("abc", TypeError), (None, TypeError), (math.nan, ValueError), (math.inf, ValueError),
                     (-1.0, ValueError)]
        else:
            continue
        for value, error in cases:
            with pytest.raises(error, match=rf"routing '{name}': option {option}\b.*got"):
                routing.create(name, **{**sized, option: value})
            checked += 1
    assert checked > 0 or not defaults


@pytest.mark.parametrize("name", [n for n in ALGORITHMS if routing.size_options(n)])
def test_size_options_are_checked_for_type_and_range(name):
    sized = routing.sized_options(name, SHAPE)
    for option in routing.size_options(name):
        with pytest.raises(TypeError, match=rf"option {option} must be a positive integer"):
            routing.create(name, **{**sized, option: 2.0})
        with pytest.raises(ValueError, match=rf"option {option} must be a positive integer"):
            routing.create(name, **{**sized, option: 0})


# ---------------------------------------------------------------- cause 4: what the activations must be


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_em_activations_outside_the_unit_interval_are_refused(bad):
    votes, activations = votes_and_activations()
    activations[1, 2] = bad
    router = routing.create("em")
    with pytest.raises(ValueError, match=r"em routing: activations must be in \[0, 1\], got values from"):
        router(votes, activations)
    with pytest.raises(ValueError, match=r"activations must be in \[0, 1\]"):
        router(torch.randn(2, 5, 3), activations, transforms=torch.randn(5, 3, 4, 3))
    activations[1, 2] = math.nan
    with pytest.raises(ValueError, match="activations contain NaN or Inf"):
        router(votes, activations)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_each_router_checks_the_range_its_algorithm_requires(name):
    router = create_for(name, SHAPE)
    low, high = router.activation_range
    votes, activations = votes_and_activations()
    edge = activations.clone()
    edge[0, 0], edge[1, 1] = low, (high if high is not None else 10.0)
    result = router(votes, edge)  # the ends of the range are allowed
    assert all(torch.isfinite(t).all() for t in result)
    below = activations.clone()
    below[0, 3] = low - 1e-3
    with pytest.raises(ValueError, match=f"{name} routing: activations must be"):
        router(votes, below)
    if high is not None:
        above = activations.clone()
        above[1, 0] = high + 1e-3
        with pytest.raises(ValueError, match=f"{name} routing: activations must be"):
            router(votes, above)


# ---------------------------------------------------------------- cause 5: squash and dynamic routing


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-3, 1.0, 3e12, 1e20, 1e30, 1e37])
def test_squash_is_finite_and_matches_float64_across_the_float32_range(scale):
    s = scale * torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s32 = s.float()
    v32, grad32 = squash(s32), squash_backward(s32, g.float())
    v64, grad64 = squash(s32.double()), squash_backward(s32.double(), g)
    assert torch.isfinite(v32).all() and torch.isfinite(grad32).all()
    torch.testing.assert_close(v32.double(), v64, rtol=1e-5, atol=1e-30)
    torch.testing.assert_close(grad32.double(), grad64, rtol=1e-5, atol=1e-30 + 1e-6 * float(grad64.abs().max()))
    assert float(torch.linalg.vector_norm(v64, dim=-1).max()) <= 1.0


def test_squash_backward_is_its_autograd_gradient_and_twice_differentiable():
    for scale in (1e-3, 1.0, 1e5):
        s = (scale * torch.randn(4, 3, dtype=torch.float64)).requires_grad_(True)
        g = torch.randn(4, 3, dtype=torch.float64)
        (auto,) = torch.autograd.grad(squash(s), s, g)
        torch.testing.assert_close(squash_backward(s.detach(), g), auto, rtol=1e-10, atol=1e-300)
        assert torch.autograd.gradgradcheck(squash, (s,))
    zero = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.equal(torch.autograd.grad(squash(zero).sum(), zero)[0], torch.zeros(2, 3, dtype=torch.float64))


def backends_of(name):
    return [b for b in routing.backends(name) if b == "torch" or TRITON]


def route_with_gradients(router, votes, activations, seed=5):
    votes = votes.clone().requires_grad_(True)
    activations = activations.clone().requires_grad_(True)
    result = router(votes, activations)
    g = torch.Generator().manual_seed(seed)
    loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device)).sum()
               for t in result)
    return result, torch.autograd.grad(loss, (votes, activations))


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("scale", [1e-30, 1e-12, 3e12, 1e19, 1e30, 2e38])
def test_float32_votes_across_the_range_route_as_float64_does(name, scale):
    """Causes 5 and 6: float32 votes from 1e-30 to float32's largest give what float64 routing of the same votes
    gives, finite, with the PyTorch backends and the Triton kernels (under the interpreter on a CPU)."""
    shape = (2, 4, 3, 4)
    votes, activations = votes_and_activations(shape, scale)
    oracle = create_for(name, shape, backend="torch").double()
    want, want_grads = route_with_gradients(oracle, votes.double(), activations.double())
    for backend in backends_of(name):
        router = create_for(name, shape, backend=backend)
        router.load_state_dict(oracle.state_dict())  # the same parameters (some start random)
        got, grads = route_with_gradients(router.to(DEVICE), votes.to(DEVICE), activations.to(DEVICE))
        for field, a, b in zip(routing.RoutingResult._fields, got, want, strict=True):
            assert torch.isfinite(a).all(), f"{name} {backend} {field} at {scale:g}"
            torch.testing.assert_close(a.double().cpu(), b, rtol=1e-4, atol=1e-5, msg=f"{backend} {field}")
        # The outputs' activations are O(1) functions of the children's activations at any scale of the votes, so
        # float32 leaves an absolute error of ~1e-7 in the activations' gradient even where its terms cancel to less.
        # Near float32's largest the true gradient (for example of mu with respect to a child's activation, the
        # size of a vote) may itself be beyond float32: only the entries float32 can hold are compared.
        for what, a, b, floor in zip(("votes", "activations"), grads, want_grads, (1e-30, 1e-6), strict=True):
            held = b.abs() <= torch.finfo(torch.float32).max
            a, b = a.double().cpu()[held], b[held]
            assert torch.isfinite(a).all(), f"{name} {backend} gradient of the {what} at {scale:g}"
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()) + floor,
                                       msg=f"{backend} gradient of the {what}")


def test_dynamic_activations_do_not_collapse_to_zero_for_large_votes():
    """The issue's symptom: from ~3e12 in float32 the old squash made every activation exactly 0. With one
    iteration every parent gets a share of every vote, so its squashed sum has length ~1."""
    votes, _ = votes_and_activations(scale=1e13)
    lengths = routing.create("dynamic", iterations=1)(votes).activations
    assert float(lengths.min()) > 0.99


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_every_router_is_finite_at_the_ends_of_the_float32_range(name, scale):
    votes, activations = votes_and_activations(scale=scale)
    result, grads = route_with_gradients(create_for(name, SHAPE), votes, activations)
    assert all(torch.isfinite(t).all() for t in (*result, *grads))


# ---------------------------------------------------------------- cause 7: second-order gradients


@pytest.mark.parametrize("name", ALGORITHMS)
def test_second_order_gradients_work_or_are_refused_clearly(name):
    """A hand-written backward refuses create_graph=True with a RuntimeError naming the router; a router routed by
    plain autograd (self-routing) passes gradgradcheck."""
    shape = (1, 3, 2, 2)
    votes, activations = votes_and_activations(shape, dtype=torch.float64)
    for backend in backends_of(name):
        router = create_for(name, shape, backend=backend).double().to(DEVICE)
        v = votes.to(DEVICE).requires_grad_(True)
        a = activations.to(DEVICE).requires_grad_(True)
        poses = router(v, a).poses
        try:
            (grad,) = torch.autograd.grad(poses.square().sum(), v, create_graph=True)
        except RuntimeError as error:
            assert f"{name} routing (backend '{backend}')" in str(error)
            assert "second-order gradients" in str(error) and "create_graph=True" in str(error)
            continue
        assert backend == "torch" and name == "self-routing", f"{name} {backend} took a second-order gradient"
        assert torch.autograd.gradgradcheck(lambda x, y, r=router: tuple(r(x, y)), (v, a))


def test_first_order_gradients_still_work_after_the_refusal_check():
    votes, activations = votes_and_activations(dtype=torch.float64)
    votes.requires_grad_(True)
    routing.create("dynamic", backend="torch")(votes, activations).poses.sum().backward()
    assert votes.grad is not None and torch.isfinite(votes.grad).all()


# ---------------------------------------------------------------- router inputs


@pytest.mark.parametrize("name", ALGORITHMS)
def test_inputs_that_are_not_tensors_are_type_errors(name):
    router = create_for(name, SHAPE)
    votes, activations = votes_and_activations()
    with pytest.raises(TypeError, match=r"votes must be a torch.Tensor .* got numpy.ndarray"):
        router(votes.numpy(), activations)
    with pytest.raises(TypeError, match=r"activations must be a torch.Tensor .* got list"):
        router(votes, activations.tolist())
    B, I, J, D = SHAPE
    with pytest.raises(TypeError, match=r"transforms must be a torch.Tensor .* got numpy.ndarray"):
        router(torch.randn(B, I, 3), activations, transforms=np.zeros((I, J, D, 3), dtype=np.float32))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_meta_tensors_are_clear_errors(name):
    router = create_for(name, SHAPE)
    votes, activations = votes_and_activations()
    with pytest.raises(ValueError, match="votes are on the meta device"):
        router(votes.to("meta"), activations.to("meta"))
    with pytest.raises(ValueError, match="activations are on the meta device"):
        router(votes, activations.to("meta"))
    if list(router.parameters()):
        with pytest.raises(ValueError, match=r"parameter \w+ is on meta but the inputs are on cpu; .*to_empty"):
            create_for(name, SHAPE).to("meta")(votes, activations)


def test_child_index_must_be_integers_in_range_before_anything_is_allocated():
    router = routing.create("em")
    votes = torch.randn(4, 3, 2, 4)
    good = torch.tensor([[0, 1, 2], [1, 2, 3]])
    assert torch.isfinite(router(votes, None, child_index=good).poses).all()
    with pytest.raises(ValueError, match="child_index must be an integer tensor .* got dtype torch.bool"):
        router(votes, None, child_index=good.bool())
    huge = good.clone()
    huge[1, 2] = 2**40
    with pytest.raises(ValueError, match=r"child_index values must be below P \* I = 2 \* 3 = 6 .* 1099511627776"):
        router(votes, None, child_index=huge)
    with pytest.raises(TypeError, match="child_index must be an integer torch.Tensor"):
        router(votes, None, child_index=[[0, 1, 2]])
    with pytest.raises(ValueError, match="meta device"):
        check_child_index(good.to("meta"), 4, 3)
    with pytest.raises(ValueError, match="non-negative, got a minimum of -1"):
        router(votes, None, child_index=torch.tensor([[0, -1, 2]]))


@pytest.mark.parametrize("detach_inner", [False, True])
def test_dynamic_double_backward_option_is_twice_differentiable_and_the_same_routing(detach_inner):
    shape = (2, 3, 2, 3)
    votes, activations = votes_and_activations(shape, dtype=torch.float64)
    plain = routing.create("dynamic", backend="torch", detach_inner=detach_inner, double_backward=True)
    written = routing.create("dynamic", backend="torch", detach_inner=detach_inner)
    got, got_grads = route_with_gradients(plain, votes, activations)
    want, want_grads = route_with_gradients(written, votes, activations)
    for a, b in zip((*got, *got_grads), (*want, *want_grads), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    v = votes[:1, :, :, :2].clone().requires_grad_(True)
    a = activations[:1].clone().requires_grad_(True)
    if not detach_inner:  # detach_inner's gradient is a surrogate: finite differences do not give it
        assert torch.autograd.gradgradcheck(lambda x, y: tuple(plain(x, y)), (v, a))
    with pytest.raises(RuntimeError, match=r"dynamic routing \(backend 'torch'\).*double_backward=True"):
        torch.autograd.grad(written(v, a).poses.sum(), v, create_graph=True)


def test_dynamic_double_backward_is_not_a_triton_kernel_path():
    votes, activations = votes_and_activations()
    if "triton" not in routing.backends("dynamic") or not TRITON:
        pytest.skip("no Triton backend here")
    with pytest.raises(ValueError, match="backend 'triton': double_backward=True routes with plain PyTorch"):
        routing.create("dynamic", backend="triton", double_backward=True)(votes.to(DEVICE), activations.to(DEVICE))
    router = routing.create("dynamic", backend="auto", double_backward=True).to(DEVICE)
    v = votes.to(DEVICE).double().requires_grad_(True)
    (grad,) = torch.autograd.grad(router(v).poses.square().sum(), v, create_graph=True)
    assert grad.requires_grad


def test_switches_and_helpers_refuse_values_of_the_wrong_kind():
    with pytest.raises(TypeError, match="finite_checks expects True or False, got str 'no'"):
        with routing.finite_checks("no"):
            pass
    with pytest.raises(ValueError, match=r"votes_shape must be \(B, I, J, D\), got \(2, 3, 4\)"):
        routing.sized_options("dynamic", (2, 3, 4))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_tiny_poses_keep_finite_gradients(name):
    """Poses whose squares underflow float32 (a parent that gets almost no vote) still have finite lengths'
    gradients: |v| is taken from v scaled by its largest entry."""
    shape = (1, 1, 4, 1)
    votes = 10.0 * torch.randn(shape, generator=torch.Generator().manual_seed(0))
    result, grads = route_with_gradients(create_for(name, shape), votes, torch.ones(1, 1))
    assert all(torch.isfinite(t).all() for t in (*result, *grads))
