"""Inverted dot-product attention routing (Tsai et al. 2020): against a naive loop implementation of the authors'
equations, gradients, initialisation, the conformance suite, option checks and the capsule layers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import capsules
import routing
import routing.inverted_dot_product  # noqa: F401  (registers "inverted-dot-product")
import routing.inverted_dot_product.router as idp_router
from routing.linear_votes import vector_votes
from routing.testing import check_router

NAME = "inverted-dot-product"


def naive_routing(votes, activations, iterations, norm_weight, norm_bias, head_weight, head_bias, eps):
    """The authors' equations, one sample, child and parent at a time, in float64 (activations None: ones).

    r = 1/J on the first pass; on later passes r_ij = softmax_j(<u_ij, v_j> / sqrt(D)); each pass
    v_j = LayerNorm(sum_i r_ij a_i u_ij) (over D, weight and bias); activation_j = sigmoid(<w, v_j> + b)."""
    B, I, J, D = votes.shape
    poses = [[None] * J for _ in range(B)]
    acts = [[None] * J for _ in range(B)]
    assign = [[[None] * J for _ in range(I)] for _ in range(B)]

    def layer_norm(s):
        if D == 1:
            return s
        mean = sum(s[d] for d in range(D)) / D
        var = sum((s[d] - mean) ** 2 for d in range(D)) / D
        return torch.stack([(s[d] - mean) / torch.sqrt(var + eps) * norm_weight[d] + norm_bias[d]
                            for d in range(D)])

    for b in range(B):
        a = [1.0 if activations is None else activations[b, i] for i in range(I)]
        r = [[torch.tensor(1.0 / J, dtype=torch.float64) for _ in range(J)] for _ in range(I)]
        v = None
        for t in range(iterations):
            if t > 0:
                for i in range(I):
                    logits = [torch.dot(votes[b, i, j], v[j]) / math.sqrt(D) for j in range(J)]
                    top = max(float(x.detach()) for x in logits)
                    exps = [torch.exp(x - top) for x in logits]
                    total = sum(exps)
                    r[i] = [e / total for e in exps]
            v = []
            for j in range(J):
                s = sum(r[i][j] * a[i] * votes[b, i, j] for i in range(I))
                v.append(layer_norm(s))
        for j in range(J):
            poses[b][j] = v[j]
            acts[b][j] = torch.sigmoid(torch.dot(head_weight, v[j]) + head_bias[0])
            for i in range(I):
                assign[b][i][j] = r[i][j]
    return (torch.stack([torch.stack(p) for p in poses]),
            torch.stack([torch.stack(a) for a in acts]),
            torch.stack([torch.stack([torch.stack(row) for row in s]) for s in assign]))


def randomise(router, seed=5):
    """Non-zero random values for every learned parameter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in router.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5 + 0.3)
    return router


def inputs(shape, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    B, I, J, D = shape
    votes = torch.randn(B, I, J, D, generator=g, dtype=torch.float64)
    acts = 0.1 + 0.8 * torch.rand(B, I, generator=g, dtype=torch.float64)
    return votes.to(dtype), acts.to(dtype)


@pytest.mark.parametrize("with_acts", [True, False])
@pytest.mark.parametrize(("shape", "iterations", "eps"), [((2, 5, 3, 4), 3, 1e-5), ((3, 4, 2, 1), 2, 1e-3),
                                                          ((2, 3, 4, 3), 1, 1e-5)])
def test_matches_naive_values_and_gradients(with_acts, shape, iterations, eps):
    router = randomise(routing.create(NAME, iterations=iterations, pose_dim=shape[-1], eps=eps).double())
    votes, acts = inputs(shape)
    acts = acts if with_acts else None
    g = torch.Generator().manual_seed(9)
    B, I, J, D = shape
    upstream = [torch.randn(s, generator=g, dtype=torch.float64) for s in ((B, J, D), (B, J), (B, I, J))]
    params = [router.norm_weight, router.norm_bias, router.head_weight, router.head_bias]

    def run(fn):
        leaves = [votes.clone().requires_grad_(True)]
        if acts is not None:
            leaves.append(acts.clone().requires_grad_(True))
        out = fn(*leaves)
        loss = sum((o * u).sum() for o, u in zip(out, upstream, strict=True))
        grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
        return [o.detach() for o in out], [torch.zeros_like(t) if gr is None else gr
                                           for gr, t in zip(grads, leaves + params, strict=True)]

    got, got_grads = run(lambda v, a=None: router(v, a))
    want, want_grads = run(lambda v, a=None: naive_routing(v, a, iterations, *params, eps))
    for x, y in zip(got + got_grads, want + want_grads, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11)
    if D > 1:  # every parameter takes part (with D = 1 the LayerNorm is left out, as in the authors' code)
        assert all(float(gr.abs().max()) > 0 for gr in got_grads[-4:])


def test_gradient_through_assignments_alone():
    router = randomise(routing.create(NAME, iterations=3, pose_dim=4).double())
    votes, acts = inputs((2, 4, 3, 4))
    params = list(router.parameters())
    upstream = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = []
    for fn in (lambda v, a: router(v, a), lambda v, a: naive_routing(v, a, 3, *params, router.eps)):
        leaves = [votes.clone().requires_grad_(True), acts.clone().requires_grad_(True)]
        loss = (fn(*leaves)[2] * upstream).sum()
        got = torch.autograd.grad(loss, leaves + params, allow_unused=True)
        grads.append([torch.zeros_like(t) if g is None else g for g, t in zip(got, leaves + params, strict=True)])
    for x, y in zip(*grads, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_acts", [True, False])
def test_fused_dense_layer_path(dtype, with_acts, monkeypatch):
    """router(poses, acts, transforms=W) (fused on the CPU) against routing the formed votes, with every
    parameter's gradient."""
    calls = []
    fused_route = idp_router.route_poses
    monkeypatch.setattr(idp_router, "route_poses", lambda *args: calls.append(1) or fused_route(*args))
    B, I, J, D, K = 3, 7, 4, 5, 3
    g = torch.Generator().manual_seed(6)
    poses = torch.randn(B, I, K, generator=g, dtype=torch.float64).to(dtype)
    transforms = (0.5 * torch.randn(I, J, D, K, generator=g, dtype=torch.float64)).to(dtype)
    acts = (0.1 + 0.8 * torch.rand(B, I, generator=g, dtype=torch.float64)).to(dtype) if with_acts else None
    upstream = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in ((B, J, D), (B, J), (B, I, J))]
    router = randomise(routing.create(NAME, iterations=3, pose_dim=D)).to(dtype)
    results = []
    for fused in (True, False):
        leaves = [poses.clone().requires_grad_(True), transforms.clone().requires_grad_(True)]
        a = None if acts is None else acts.clone().requires_grad_(True)
        if fused:
            out = router(leaves[0], a, transforms=leaves[1])
        else:
            out = router(vector_votes(leaves[0], leaves[1]), a)
        wrt = leaves + ([] if a is None else [a]) + list(router.parameters())
        loss = sum((o * u).sum() for o, u in zip(out, upstream, strict=True))
        results.append([o.detach() for o in out] + list(torch.autograd.grad(loss, wrt)))
        assert len(calls) == 1  # the fused path ran once (the first time), the formed votes' path did not
    tolerance = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for x, y in zip(*results, strict=True):
        torch.testing.assert_close(x, y, **tolerance)


def test_gradcheck_with_parameters():
    router = randomise(routing.create(NAME, iterations=3, pose_dim=3).double())
    votes, acts = inputs((2, 3, 3, 3))
    votes.requires_grad_(True)
    acts.requires_grad_(True)
    names = [name for name, _ in router.named_parameters()]
    assert names == ["norm_weight", "norm_bias", "head_weight", "head_bias"]

    def fn(v, a, *values):  # the router with its parameters replaced by gradcheck's (perturbed) tensors
        return tuple(torch.func.functional_call(router, dict(zip(names, values, strict=True)), (v, a)))

    leaves = (votes, acts, *[p.detach().clone().requires_grad_(True) for p in router.parameters()])
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_initialisation():
    torch.manual_seed(0)
    D = 1024
    router = routing.create(NAME, pose_dim=D).requires_grad_(False)
    assert torch.equal(router.norm_weight, torch.ones(D)) and torch.equal(router.norm_bias, torch.zeros(D))
    assert torch.equal(router.head_bias, torch.zeros(1))
    assert abs(float(router.head_weight.std()) * math.sqrt(D) - 1) < 0.1
    assert abs(float(router.head_weight.mean())) < 3 / D  # mean 0 (its standard error is 1/D)
    # At start the poses leave the LayerNorm with zero mean and unit variance over D, so <w, v_j> has unit
    # variance: activations spread over (0, 1), not saturated, and their gradient reaches the votes.
    router = routing.create(NAME, pose_dim=16)
    votes = torch.randn(64, 8, 10, 16, requires_grad=True)
    poses, acts, _ = router(votes)
    torch.testing.assert_close(poses.mean(-1), torch.zeros(64, 10), atol=1e-5, rtol=0)
    torch.testing.assert_close(poses.var(-1, unbiased=False), torch.ones(64, 10), atol=1e-2, rtol=0)  # var/(var+eps)
    logits = torch.logit(acts.detach().double())
    assert 0.5 < float(logits.std()) < 2.0 and float(acts.detach().min()) > 0.001 and float(acts.detach().max()) < 0.999
    acts.sum().backward()
    assert float(votes.grad.abs().max()) > 0


@pytest.mark.parametrize("with_acts", [True, False])
def test_one_iteration_is_layer_norm_of_uniform_mean(with_acts):
    B, I, J, D = 3, 7, 4, 5
    votes, acts = inputs((B, I, J, D))
    acts = acts if with_acts else None
    router = randomise(routing.create(NAME, iterations=1, pose_dim=D).double())
    poses, out_acts, assignments = router(votes, acts)
    weights = torch.ones(B, I, dtype=torch.float64) if acts is None else acts
    s = (weights[:, :, None, None] * votes).sum(1) / J  # coefficients 1/J
    want = F.layer_norm(s, (D,), router.norm_weight, router.norm_bias, router.eps)
    torch.testing.assert_close(poses, want)
    torch.testing.assert_close(assignments, torch.full((B, I, J), 1 / J, dtype=torch.float64))
    torch.testing.assert_close(out_acts, torch.sigmoid(want @ router.head_weight + router.head_bias))
    # the same up to the LayerNorm's epsilon as the LayerNorm of the mean over children
    mean = (weights[:, :, None, None] * votes).mean(1)
    torch.testing.assert_close(poses, F.layer_norm(mean, (D,), router.norm_weight, router.norm_bias, router.eps),
                               rtol=1e-3, atol=1e-3)
    # the iteration count takes effect: each further pass changes poses and assignments
    results = [routing.create(NAME, iterations=t, pose_dim=D).double()(votes, acts) for t in (1, 2, 3)]
    for earlier, later in zip(results, results[1:], strict=False):
        assert not torch.allclose(earlier.poses, later.poses)
        assert not torch.allclose(earlier.assignments, later.assignments)


def test_conformance():
    check_router(NAME)
    check_router(NAME, iterations=4, eps=1e-3, votes_shape=(2, 5, 3, 6))


def test_bad_options_and_sizes():
    with pytest.raises(ValueError, match="needs pose_dim"):
        routing.create(NAME)
    for bad, error in ((0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match="pose_dim must be a positive integer"):
            routing.create(NAME, pose_dim=bad)
    for bad, error in ((0, ValueError), (-1e-5, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
                       ("1e-5", TypeError)):
        with pytest.raises(error, match="eps .* finite number > 0"):
            routing.create(NAME, pose_dim=4, eps=bad)
    for bad, error in ((0, ValueError), (1.5, TypeError), (False, TypeError)):
        with pytest.raises(error, match="iterations must be a positive integer"):
            routing.create(NAME, pose_dim=4, iterations=bad)
    with pytest.raises(ValueError, match="unknown option"):
        routing.create(NAME, pose_dim=4, out_caps=3)
    router = routing.create(NAME, pose_dim=4)
    with pytest.raises(ValueError, match="pose_dim=4 but the votes have D=5"):
        router(torch.randn(2, 3, 2, 5))
    with pytest.raises(ValueError, match="pose_dim=4 but the votes have D=6"):
        router(torch.randn(2, 3, 5), transforms=torch.randn(3, 2, 6, 5))


def _finite_backward(output, *tensors):
    loss = sum(o.float().square().sum() for o in output)
    loss.backward()
    for t in tensors:
        assert t.grad is not None and torch.isfinite(t.grad).all()


def test_in_capsule_layers():
    torch.manual_seed(0)
    linear = capsules.CapsuleLinear(6, 8, 4, 16, routing=NAME, iterations=3)
    poses = torch.randn(2, 6, 8, requires_grad=True)
    acts = torch.rand(2, 6, requires_grad=True)
    out_poses, out_acts = linear(poses, acts)
    assert out_poses.shape == (2, 4, 16) and out_acts.shape == (2, 4)
    _finite_backward((out_poses, out_acts), poses, acts, linear.weight, *linear.router.parameters())

    conv = capsules.ConvCaps(2, 3, 3, stride=1, routing=NAME)
    poses = torch.randn(2, 4, 4, 2, 16, requires_grad=True)
    acts = torch.rand(2, 4, 4, 2, requires_grad=True)
    out_poses, out_acts = conv(poses, acts)
    assert out_poses.shape == (2, 2, 2, 3, 16) and out_acts.shape == (2, 2, 2, 3)
    _finite_backward((out_poses, out_acts), poses, acts, conv.weight, *conv.router.parameters())

    cls = capsules.ClassCaps(2, 5, routing=NAME)
    poses = torch.randn(2, 3, 3, 2, 16, requires_grad=True)
    acts = torch.rand(2, 3, 3, 2, requires_grad=True)
    out_poses, out_acts = cls(poses, acts)
    assert out_poses.shape == (2, 5, 16) and out_acts.shape == (2, 5)
    assert float(out_acts.detach().min()) > 0 and float(out_acts.detach().max()) < 1
    _finite_backward((out_poses, out_acts), poses, acts, cls.weight, *cls.router.parameters())

    model = capsules.create_model("compact", routing=NAME)
    out = model(torch.rand(2, 1, 28, 28))
    assert out.activations.shape == (2, 10) and out.poses.shape == (2, 10, 16)
    out.activations.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes(dtype):
    votes, acts = inputs((3, 6, 4, 8), dtype=dtype)
    router = routing.create(NAME, pose_dim=8)
    for a in (acts, None):
        result = router(votes, a)
        for t in result:
            assert t.dtype == dtype and torch.isfinite(t).all()
    reference = router(votes.double(), acts.double())
    tolerance = dict(rtol=0.05, atol=0.05) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(router(votes, acts).poses.double(), reference.poses, **tolerance)
