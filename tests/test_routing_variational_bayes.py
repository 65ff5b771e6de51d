"""Variational Bayes routing (Ribeiro et al. 2020): against a naive loop of the authors' equations, gradients,
the conformance suite, options and sizes, layers and models, dtypes and float32 numerics next to EM."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

import capsules
import routing
import routing.variational_bayes  # noqa: F401  (registers "variational-bayes")
import routing.variational_bayes.backward as vb_backward
import routing.variational_bayes.reference as vb_reference
from routing.testing import check_router

NAME = "variational-bayes"


# ---- a deliberately naive float64 loop over samples, children and parents (the authors' equations) ----

def naive_vb(votes, activations, beta_u, beta_a, iterations=3, alpha0=1.0, kappa0=1.0, psi0=1.0, nu0=None,
             eps=1e-8):
    """votes [B, I, J, D], activations [B, I] or None, beta_u, beta_a [J] or [1] -> (m [B, J, D], a [B, J],
    R [B, I, J]) of src/vb_routing.py (diagonal precision) without the batch normalisation, R a softmax over
    parents of E[ln pi] + ln p, m0 = 0, Psi0 = psi0 I. Differentiable (plain autograd through the loops)."""
    B, I, J, D = votes.shape
    nu0 = D + 1.0 if nu0 is None else nu0
    bu = beta_u.expand(J) if beta_u.numel() == 1 else beta_u
    ba = beta_a.expand(J) if beta_a.numel() == 1 else beta_a
    poses, acts, assignments = [], [], []
    for b in range(B):
        a = [activations[b, i] if activations is not None else torch.tensor(1.0, dtype=votes.dtype)
             for i in range(I)]
        R = [[torch.tensor(1.0 / J, dtype=votes.dtype) for _ in range(J)] for _ in range(I)]
        for t in range(iterations):
            stats = []
            for j in range(J):
                Rp = [R[i][j] * a[i] for i in range(I)]
                N = sum(Rp)
                mu = sum(Rp[i] * votes[b, i, j] for i in range(I)) / torch.clamp(N, min=eps)
                kappa, nu, alpha = kappa0 + N, nu0 + N, alpha0 + N
                m = N * mu / kappa
                inv_psi = psi0 + sum(Rp[i] * (votes[b, i, j] - mu) ** 2 for i in range(I)) \
                    + kappa0 * N / kappa * (mu - 0.0) ** 2
                ln_lambda = sum(torch.digamma((nu - d) / 2) for d in range(D)) + D * math.log(2) \
                    - torch.log(inv_psi).sum()
                stats.append((N, kappa, nu, alpha, m, inv_psi, ln_lambda))
            alpha_sum = sum(s[3] for s in stats)
            ln_pi = [torch.digamma(s[3]) - torch.digamma(alpha_sum) for s in stats]
            if t == iterations - 1:
                break
            new_R = []
            for i in range(I):
                logits = []
                for j in range(J):
                    N, kappa, nu, alpha, m, inv_psi, ln_lambda = stats[j]
                    e_q = D / kappa + nu * ((votes[b, i, j] - m) ** 2 / inv_psi).sum()
                    ln_p = 0.5 * ln_lambda - 0.5 * D * math.log(2 * math.pi) - 0.5 * e_q
                    logits.append(ln_pi[j] + ln_p)
                new_R.append(list(torch.softmax(torch.stack(logits), 0)))
            R = new_R
        poses.append(torch.stack([s[4] for s in stats]))
        entropy = [0.5 * D * math.log(2 * math.pi * math.e) - 0.5 * s[6] for s in stats]
        acts.append(torch.stack([torch.sigmoid(ba[j] - (torch.exp(ln_pi[j]) * entropy[j] + bu[j]))
                                 for j in range(J)]))
        assignments.append(torch.stack([torch.stack(R[i]) for i in range(I)]))
    return torch.stack(poses), torch.stack(acts), torch.stack(assignments)


def inputs(B=2, I=5, J=3, D=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    votes = (0.7 * torch.randn(B, I, J, D, generator=g, dtype=torch.float64) + 0.3).to(dtype)
    acts = (0.05 + 0.9 * torch.rand(B, I, generator=g, dtype=torch.float64)).to(dtype)
    return votes, acts


def randomise_betas(router, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (router.beta_u, router.beta_a):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return router


OPTIONS = [
    dict(iterations=3),
    dict(iterations=2, alpha0=0.5, kappa0=2.5, psi0=0.3, nu0=3.5),  # D = 4: nu0 > 3
    dict(iterations=4, kappa0=0.2, psi0=4.0, nu0=9.0),
]


@pytest.mark.parametrize("with_acts", [True, False])
@pytest.mark.parametrize("options", OPTIONS)
def test_matches_naive_loop_values_and_gradients(options, with_acts):
    votes, acts = inputs()
    J = votes.shape[2]
    router = randomise_betas(routing.create(NAME, out_caps=J, **options).double())
    leaves = [votes.clone().requires_grad_(True), acts.clone().requires_grad_(True)]
    got = router(leaves[0], leaves[1] if with_acts else None)
    bu = router.beta_u.detach().clone().requires_grad_(True)
    ba = router.beta_a.detach().clone().requires_grad_(True)
    ref_leaves = [votes.clone().requires_grad_(True), acts.clone().requires_grad_(True)]
    want = naive_vb(ref_leaves[0], ref_leaves[1] if with_acts else None, bu, ba, **options)
    for g_, w_ in zip(got, want, strict=True):
        torch.testing.assert_close(g_, w_, rtol=1e-10, atol=1e-12)
    gen = torch.Generator().manual_seed(9)
    upstream = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in want]
    wrt = [leaves[0], router.beta_u, router.beta_a] + ([leaves[1]] if with_acts else [])
    ref_wrt = [ref_leaves[0], bu, ba] + ([ref_leaves[1]] if with_acts else [])
    grads = torch.autograd.grad(sum((o * u).sum() for o, u in zip(got, upstream, strict=True)), wrt)
    ref_grads = torch.autograd.grad(sum((o * u).sum() for o, u in zip(want, upstream, strict=True)), ref_wrt)
    for g_, w_ in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g_, w_, rtol=1e-9, atol=1e-11)


def test_shared_betas_match_naive_loop():
    votes, acts = inputs(seed=3)
    router = randomise_betas(routing.create(NAME).double())  # out_caps=None: one beta_u and beta_a shared
    assert router.beta_u.shape == (1,) and router.beta_a.shape == (1,)
    got = router(votes, acts)
    want = naive_vb(votes, acts, router.beta_u.detach(), router.beta_a.detach())
    for g_, w_ in zip(got, want, strict=True):
        torch.testing.assert_close(g_, w_, rtol=1e-10, atol=1e-12)


def test_gradcheck_including_learned_parameters():
    votes, acts = inputs(B=2, I=3, J=3, D=3, seed=4)
    router = randomise_betas(routing.create(NAME, out_caps=3, iterations=3).double())
    params = [router.beta_u.detach().clone().requires_grad_(True), router.beta_a.detach().clone().requires_grad_(True)]

    def f(v, a, bu, ba):
        return tuple(functional_call(router, {"beta_u": bu, "beta_a": ba}, (v, a)))

    args = (votes.requires_grad_(True), acts.requires_grad_(True), *params)
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_initialisation_betas_zero_activation_is_the_negative_weighted_entropy():
    """Fresh routers learn beta_u and beta_a per parent type starting at 0 (as the authors'), so the untrained
    activation is sigmoid(-exp(E[ln pi_j]) H_j): the naive loop with zero betas."""
    router = routing.create(NAME, out_caps=3)
    for p in (router.beta_u, router.beta_a):
        assert p.shape == (3,) and bool((p == 0).all())
    assert [n for n, _ in router.named_parameters()] == ["beta_u", "beta_a"]
    votes, acts = inputs(seed=6)
    got = router.double()(votes, acts)
    zeros = torch.zeros(3, dtype=torch.float64)
    want = naive_vb(votes, acts, zeros, zeros)
    torch.testing.assert_close(got.activations, want[1], rtol=1e-10, atol=1e-12)


def test_chunked_equals_whole_batch(monkeypatch):
    """Rows routed one per chunk (forward and backward) give what routing the batch as one chunk gives."""
    votes, acts = inputs(B=4, seed=7)
    router = randomise_betas(routing.create(NAME, out_caps=3).double())

    def run():
        v, a = votes.clone().requires_grad_(True), acts.clone().requires_grad_(True)
        out = router(v, a)
        loss = out.poses.sum() + (out.activations * 2).sum() + (out.assignments ** 2).sum()
        return [*out, *torch.autograd.grad(loss, [v, a, router.beta_u, router.beta_a])]

    whole = run()
    monkeypatch.setattr(vb_reference, "CHUNK_BYTES", 1)
    monkeypatch.setattr(vb_backward, "CHUNK_BYTES", 1)
    for g_, w_ in zip(run(), whole, strict=True):
        torch.testing.assert_close(g_, w_, rtol=1e-12, atol=1e-13)


# ---- the conformance suite, options, sizes ----

def test_conformance_default_options():
    check_router(NAME)


def test_conformance_non_default_options():
    check_router(NAME, iterations=2, out_caps=4, alpha0=0.5, kappa0=2.0, psi0=0.25, nu0=6.0, eps=1e-6)


@pytest.mark.parametrize("option, value, match", [
    ("iterations", 0, "iterations must be a positive integer"),
    ("iterations", 2.0, "iterations must be a positive integer, got float 2.0"),
    ("out_caps", 0, "out_caps must be a positive integer or None"),
    ("out_caps", True, "out_caps must be a positive integer or None"),
    ("alpha0", 0.0, "alpha0 must be a finite number > 0"),
    ("alpha0", float("nan"), "alpha0 must be a finite number > 0"),
    ("kappa0", -1.0, "kappa0 must be a finite number > 0"),
    ("psi0", float("inf"), "psi0 must be a finite number > 0"),
    ("psi0", "1", "psi0 must be a finite number > 0"),
    ("nu0", 0.0, "nu0 .* must be a finite number > 0"),
    ("eps", 0.0, "eps must be a finite number > 0"),
    ("eps", float("inf"), "eps must be a finite number > 0"),
])
def test_bad_options_are_clear_errors(option, value, match):
    with pytest.raises((TypeError, ValueError), match=match):
        routing.create(NAME, **{option: value})


def test_bad_sizes_are_clear_errors():
    votes, acts = inputs(J=3, D=4)
    with pytest.raises(ValueError, match=r"out_caps=5 but the votes have J=3 parents"):
        routing.create(NAME, out_caps=5)(votes, acts)
    with pytest.raises(ValueError, match=r"nu0 must be > D - 1 = 3 for votes of size D=4"):
        routing.create(NAME, nu0=3.0)(votes, acts)
    poses, transforms = torch.randn(2, 5, 3), torch.randn(5, 3, 4, 3)
    with pytest.raises(ValueError, match=r"out_caps=4 but the votes have J=3 parents"):
        routing.create(NAME, out_caps=4)(poses, acts.float(), transforms=transforms)
    with pytest.raises(ValueError, match="unknown option"):
        routing.create(NAME, in_caps=5)


# ---- layers and models ----

def test_in_capsule_linear_conv_and_class_layers():
    torch.manual_seed(0)
    linear = capsules.CapsuleLinear(12, 8, 5, 16, routing=NAME)
    assert linear.router.out_caps == 5
    x, a = torch.randn(3, 12, 8), torch.rand(3, 12)
    poses, acts = linear(x.requires_grad_(True), a)
    assert poses.shape == (3, 5, 16) and acts.shape == (3, 5)
    (poses.square().sum() + acts.sum()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(linear.weight.grad).all()
    assert torch.isfinite(linear.router.beta_u.grad).all() and torch.isfinite(linear.router.beta_a.grad).all()

    conv = capsules.ConvCaps(3, 4, 3, 2, routing=NAME, iterations=2)
    assert conv.router.out_caps == 4 and not conv.shares_children  # defined per window
    grid, grid_acts = torch.randn(2, 7, 7, 3, 16).requires_grad_(True), torch.rand(2, 7, 7, 3)
    poses, acts = conv(grid, grid_acts)
    assert poses.shape == (2, 3, 3, 4, 16) and acts.shape == (2, 3, 3, 4)
    (poses.square().sum() + acts.sum()).backward()
    assert torch.isfinite(grid.grad).all() and torch.isfinite(conv.weight.grad).all()

    class_caps = capsules.ClassCaps(3, 5, routing=NAME)
    grid = torch.randn(2, 3, 3, 3, 16).requires_grad_(True)
    poses, acts = class_caps(grid, torch.rand(2, 3, 3, 3))
    assert poses.shape == (2, 5, 16) and acts.shape == (2, 5)
    (poses.square().sum() + acts.sum()).backward()
    assert torch.isfinite(grid.grad).all() and torch.isfinite(class_caps.weight.grad).all()


def test_compact_model_on_mnist_sized_images():
    torch.manual_seed(0)
    model = capsules.create_model("compact", routing=NAME)
    out = model(torch.rand(2, 1, 28, 28))
    assert out.activations.shape == (2, 10) and out.poses.shape == (2, 10, 16)
    out.activations.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float32_and_bfloat16_inputs(dtype):
    votes, acts = inputs(B=3, I=6, J=4, D=5, seed=8, dtype=dtype)
    router = routing.create(NAME, out_caps=4)
    v = votes.clone().requires_grad_(True)
    result = router(v, acts)
    for t in result:
        assert t.dtype == dtype and torch.isfinite(t.float()).all()
    want = router.double()(votes.double(), acts.double())
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for got, ref in zip(result, want, strict=True):
        torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)
    router.float()
    result = router(v, acts)
    sum(t.float().sum() for t in result).backward()
    assert v.grad.dtype == dtype and torch.isfinite(v.grad.float()).all()


# ---- float32 numerics where EM routing is at its most fragile ----

def hard_inputs():
    """(name, votes [B, I, J, D], activations [B, I], well conditioned in float64) of the hard cases."""
    g = torch.Generator().manual_seed(11)
    B, I, J, D = 2, 8, 3, 16
    centres = torch.randn(B, 1, J, D, generator=g, dtype=torch.float64)
    mixed = (torch.rand(B, I, generator=g, dtype=torch.float64) > 0.5).double()
    noise = torch.randn(B, I, J, D, generator=g, dtype=torch.float64)
    ones = torch.ones(B, I, dtype=torch.float64)
    return [
        ("tiny variances", centres + 1e-6 * noise, 0.1 + 0.8 * torch.rand(B, I, generator=g, dtype=torch.float64)),
        ("identical votes", centres.expand(B, I, J, D).clone(), ones),
        ("all activations 0", noise, torch.zeros(B, I, dtype=torch.float64)),
        ("all activations 1", noise, ones),
        ("activations 0 and 1 mixed", noise, mixed),
        ("large votes", 1e4 * noise, ones * 0.7),
        ("large votes, tiny spread", 1e4 * centres + 1e-3 * noise, ones),
    ]


def routed_with_gradients(algorithm, votes, activations, dtype):
    """Results and the gradients of votes, activations and the router's parameters of a weighted sum of them."""
    router = routing.create(algorithm, out_caps=votes.shape[2]).to(dtype)
    v = votes.to(dtype).requires_grad_(True)
    a = activations.to(dtype).requires_grad_(True)
    out = router(v, a)
    loss = sum((t * (k + 1)).sum() for k, t in enumerate(out))
    return [*out, *torch.autograd.grad(loss, [v, a, *router.parameters()])]


FIELDS = ("poses", "activations", "assignments", "grad votes", "grad activations", "grad beta_u", "grad beta_a")


@pytest.mark.parametrize("case", range(7), ids=[c[0] for c in hard_inputs()])
def test_float32_finite_on_hard_inputs_next_to_em(case):
    """Results and gradients finite in float32 (EM's too, on the same inputs), and close to float64 (every case
    here is well conditioned in float64: Psi0 bounds each parent's precision, so nothing collapses)."""
    name, votes64, acts64 = hard_inputs()[case]
    for algorithm in (NAME, "em"):
        for what, t in zip(FIELDS, routed_with_gradients(algorithm, votes64, acts64, torch.float32), strict=True):
            assert torch.isfinite(t).all(), f"{algorithm} on {name}: {what} not finite"
    got = routed_with_gradients(NAME, votes64, acts64, torch.float32)
    want = routed_with_gradients(NAME, votes64, acts64, torch.float64)
    for what, g_, w_ in zip(FIELDS, got, want, strict=True):
        atol = 1e-4 * max(1.0, w_.abs().max().item())  # relative to the largest entry (poses of size 1e4)
        torch.testing.assert_close(g_.double(), w_, rtol=1e-4, atol=atol, msg=f"{name}: {what}")
