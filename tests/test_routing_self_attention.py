"""Self-attention routing (Efficient-CapsNet, Mazzia et al. 2021) against a naive loop of the authors' equations,
gradients, its prior B, the conformance suite, bad options, the capsule layers and low precision."""

from __future__ import annotations

import math

import pytest
import torch

import capsules
import routing
import routing.cpu.chunking
import routing.self_attention  # noqa: F401  (registers "self-attention")
from routing.self_attention.squash import squash, squash_backward
from routing.testing import check_router
from tests.compare import assert_close

NAME = "self-attention"
F64 = dict(atol=1e-12, rtol=1e-10)


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def rand_acts(*shape, seed=1):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.8 + 0.1


def make_router(in_caps, out_caps, prior_seed=None, **options):
    router = routing.create(NAME, backend="torch", in_caps=in_caps, out_caps=out_caps, **options).double()
    if prior_seed is not None:
        with torch.no_grad():
            router.prior.copy_(randn(in_caps, out_caps, seed=prior_seed, scale=0.5))
    return router


# ---- the oracle: the authors' equations, one sample, child and parent at a time ----

def naive_self_attention(votes, activations, prior, eps=1e-8):
    """votes [B, I, J, D], activations [B, I] or None, prior [in_caps, J] or None (no prior term) ->
    (v [B, J, D], |v| [B, J], c [B, I, J]), in the quadratic form sum_k <u_ij, u_kj> / sqrt(D) of the paper."""
    B, I, J, D = votes.shape
    all_v, all_c = [], []
    for b in range(B):
        a = [votes.new_ones(()) if activations is None else activations[b, i] for i in range(I)]
        agreement = [[sum(a[k] * torch.dot(votes[b, i, j], votes[b, k, j]) for k in range(I)) / math.sqrt(D)
                      for j in range(J)] for i in range(I)]
        c = []
        for i in range(I):
            top = max(float(x.detach()) for x in agreement[i])
            e = [torch.exp(agreement[i][j] - top) for j in range(J)]
            c.append([e[j] / sum(e) for j in range(J)])
        v = []
        for j in range(J):
            s = votes.new_zeros(D)
            for i in range(I):
                weight = c[i][j] if prior is None else c[i][j] + prior[i % prior.shape[0], j]
                s = s + a[i] * weight * votes[b, i, j]
            n = torch.sqrt(sum(x * x for x in s))
            v.append((1 - torch.exp(-n)) * s / (n + eps))
        all_v.append(torch.stack(v))
        all_c.append(torch.stack([torch.stack(row) for row in c]))
    v = torch.stack(all_v)
    return v, torch.sqrt((v * v).sum(-1)), torch.stack(all_c)


def gradients(outputs, inputs, seed=7):
    """Gradients of <outputs, fixed random upstream> with respect to the inputs (None entries skipped)."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() for out in outputs)
    return torch.autograd.grad(loss, [t for t in inputs if t is not None])


@pytest.mark.parametrize("with_acts", [True, False])
@pytest.mark.parametrize("in_caps", [5, 10])  # 10 = I: a row of B per child; 5: children i and i + 5 share one
def test_matches_the_naive_loop_values_and_gradients_with_a_nonzero_prior(with_acts, in_caps):
    B, I, J, D = 2, 10, 3, 4
    votes = randn(B, I, J, D, scale=0.7).requires_grad_()
    acts = rand_acts(B, I).requires_grad_() if with_acts else None
    router = make_router(in_caps, J, prior_seed=3)
    got = router(votes, acts)
    prior = router.prior.detach().clone().requires_grad_()
    want = naive_self_attention(votes, acts, prior)
    for field, g, w in zip(routing.RoutingResult._fields, got, want, strict=True):
        assert_close(g, w, **F64, what=field)
    names = ["votes", "activations", "prior"] if with_acts else ["votes", "prior"]
    got_grads = gradients(got, [votes, acts, router.prior])
    want_grads = gradients(want, [votes, acts, prior])
    for what, g, w in zip(names, got_grads, want_grads, strict=True):
        assert w.abs().max() > 1e-3, f"the oracle's gradient of {what} vanishes: the check would say nothing"
        assert_close(g, w, **F64, what=f"gradient of {what}")


def test_at_initialisation_the_prior_is_zero_and_the_router_is_the_formula_without_prior():
    B, I, J, D = 2, 6, 4, 3
    votes, acts = randn(B, I, J, D).requires_grad_(), rand_acts(B, I).requires_grad_()
    router = make_router(I, J)
    assert torch.equal(router.prior, torch.zeros(I, J, dtype=torch.float64))
    got = router(votes, acts)
    want = naive_self_attention(votes, acts, None)
    for field, g, w in zip(routing.RoutingResult._fields, got, want, strict=True):
        assert_close(g, w, **F64, what=f"{field} at initialisation")
    # there the poses are the couplings' weighted sum exactly: s_j = sum_i a_i c_ij u_ij
    s = torch.einsum("bi,bij,bijd->bjd", acts, got.assignments, votes)
    n = s.norm(dim=-1, keepdim=True)
    assert_close(got.poses, -torch.expm1(-n) * s / (n + 1e-8), **F64, what="poses from the returned c")
    *got_grads, grad_prior = gradients(got, [votes, acts, router.prior])
    for what, g, w in zip(["votes", "activations"], got_grads, gradients(want, [votes, acts]), strict=True):
        assert_close(g, w, **F64, what=f"gradient of {what} at initialisation")
    assert grad_prior.abs().max() > 1e-3  # B's gradient at 0 is that of the prior term: training moves it


def test_agreement_scale_and_softmax_axis_as_in_the_authors_code():
    """c = softmax over parents of <u_ij, sum_k u_kj> / sqrt(D) (EscVM/Efficient-CapsNet FCCaps), no activations."""
    B, I, J, D = 1, 4, 3, 9
    votes = randn(B, I, J, D)
    c = make_router(I, J)(votes).assignments
    logits = torch.einsum("bijd,bjd->bij", votes, votes.sum(1)) / 3.0
    assert_close(c, logits.softmax(-1), **F64, what="couplings")


def test_gradcheck_including_the_prior():
    B, I, J, D = 2, 4, 2, 3
    router = make_router(2, J, prior_seed=5)
    votes, acts = randn(B, I, J, D, scale=0.8).requires_grad_(), rand_acts(B, I).requires_grad_()
    prior = router.prior.detach().clone().requires_grad_()

    def run(v, a, p):
        return tuple(torch.func.functional_call(router, {"prior": p}, (v, a)))

    assert torch.autograd.gradcheck(run, (votes, acts, prior), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradcheck(lambda v, p: run(v, None, p), (votes, prior), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_chunked_routing_matches_one_chunk(monkeypatch):
    """Several cache-sized chunks (a tiny budget) give the same values and gradients (B's summed over chunks)."""
    B, I, J, D = 5, 6, 3, 4
    votes, acts = randn(B, I, J, D), rand_acts(B, I)
    results = []
    for budget in (routing.cpu.chunking.CHUNK_BYTES, 1):
        monkeypatch.setattr(routing.cpu.chunking, "CHUNK_BYTES", budget)
        router = make_router(3, J, prior_seed=1)
        v, a = votes.clone().requires_grad_(), acts.clone().requires_grad_()
        out = router(v, a)
        results.append((out, gradients(out, [v, a, router.prior])))
    (one, one_grads), (many, many_grads) = results
    for g, w in zip([*many, *many_grads], [*one, *one_grads], strict=True):
        assert_close(g, w, **F64, what="chunked vs one chunk")


def test_fused_path_when_the_kept_votes_were_claimed_by_another_call():
    """The dense-layer path's backward forms the votes again when another call claimed the buffer since."""
    layer = capsules.CapsuleLinear(6, 3, 4, 5, NAME).double()
    with torch.no_grad():
        layer.router.prior.copy_(randn(6, 4, seed=2, scale=0.5))
    u, acts = randn(2, 6, 3).requires_grad_(), rand_acts(2, 6).requires_grad_()
    poses, out_acts = layer(u, acts)
    layer(randn(2, 6, 3, seed=9).requires_grad_(), rand_acts(2, 6, seed=8))  # claims the workspace buffers
    got = gradients((poses, out_acts), [u, acts, layer.weight, layer.router.prior])
    votes = torch.einsum("ijdk,bik->bijd", layer.weight, u)
    want_out = naive_self_attention(votes, acts, layer.router.prior)
    want = gradients(want_out[:2], [u, acts, layer.weight, layer.router.prior])
    for what, g, w in zip(["poses", "activations", "weight", "prior"], got, want, strict=True):
        assert_close(g, w, **F64, what=f"gradient of {what}")


# ---- the conformance suite ----

def test_conformance_suite_default_options():
    check_router(NAME)


def test_conformance_suite_shared_prior_rows_and_another_eps():
    check_router(NAME, votes_shape=(2, 6, 4, 5), in_caps=3, eps=1e-3)


# ---- options and sizes ----

@pytest.mark.parametrize("options, message", [
    (dict(out_caps=3), "needs the option in_caps"),
    (dict(in_caps=3), "needs the option out_caps"),
    (dict(in_caps=0, out_caps=3), "in_caps must be a positive integer"),
    (dict(in_caps=True, out_caps=3), "in_caps must be a positive integer"),
    (dict(in_caps=3, out_caps=2.0), "out_caps must be a positive integer"),
    (dict(in_caps=3, out_caps=3, eps=0.0), "eps must be a finite number > 0"),
    (dict(in_caps=3, out_caps=3, eps=-1e-8), "eps must be a finite number > 0"),
    (dict(in_caps=3, out_caps=3, eps=float("nan")), "eps must be a finite number > 0"),
    (dict(in_caps=3, out_caps=3, eps=float("inf")), "eps must be a finite number > 0"),
    (dict(in_caps=3, out_caps=3, iterations=3), "unknown option"),
])
def test_bad_options_give_clear_errors(options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        routing.create(NAME, **options)


def test_bad_sizes_give_clear_errors():
    router = routing.create(NAME, in_caps=4, out_caps=3)
    with pytest.raises(ValueError, match=r"in_caps=4 but votes have I=6 children; I must be a multiple"):
        router(torch.randn(2, 6, 3, 5))
    with pytest.raises(ValueError, match=r"out_caps=3 but votes have J=2 parents"):
        router(torch.randn(2, 8, 2, 5))
    with pytest.raises(ValueError, match=r"I=6 children"):
        router(torch.randn(2, 6, 3), transforms=torch.randn(6, 3, 5, 3))
    with pytest.raises(ValueError, match=r"J=4 parents"):
        router(torch.randn(2, 4, 3), transforms=torch.randn(4, 4, 5, 3))
    assert router(torch.randn(2, 8, 3, 5)).poses.shape == (2, 3, 5)  # I = 2 * in_caps


def test_squash_is_finite_at_zero_and_for_huge_sums():
    s = torch.tensor([[0.0, 0.0, 0.0], [3e-30, 0.0, 4e-30], [3e30, 0.0, -4e30], [1e3, 0.0, 0.0]])
    v, length = squash(s, 1e-8)  # |s|^2 overflows float32 in the third row, exp(|s|) in the last two
    assert torch.isfinite(v).all() and torch.isfinite(length).all()
    assert_close(length, torch.tensor([0.0, 5e-30 / (5e-30 + 1e-8) * 5e-30, 1.0, 1.0]), atol=1e-7, rtol=1e-6,
                 what="|v|")
    assert_close(v[2], torch.tensor([0.6, 0.0, -0.8]), atol=1e-7, rtol=0, what="v of a huge s")
    grad = squash_backward(s, torch.ones_like(s), torch.ones(4), 1e-8)
    assert torch.isfinite(grad).all() and grad[0].abs().max() == 0


def test_zero_tiny_and_large_votes_give_finite_results_and_gradients():
    router = routing.create(NAME, in_caps=5, out_caps=3)
    for votes in (torch.zeros(2, 5, 3, 4), torch.full((2, 5, 3, 4), 1e-20), torch.full((2, 5, 3, 4), 1e4)):
        leaf = votes.clone().requires_grad_()
        result = router(leaf, torch.rand(2, 5))
        (result.poses.sum() + result.activations.sum()).backward()
        for t in (*result, leaf.grad, router.prior.grad):
            assert torch.isfinite(t).all()
        assert (result.activations < 1 + 1e-6).all()
    zero = router(torch.zeros(1, 5, 3, 4))
    assert zero.poses.abs().max() == 0 and zero.activations.abs().max() == 0


# ---- in the capsule layers and a model ----

def assert_finite_grads(*tensors):
    for t in tensors:
        assert t is not None and torch.isfinite(t).all() and t.abs().sum() > 0


def test_in_capsule_linear():
    layer = capsules.CapsuleLinear(12, 8, 10, 16, routing=NAME)
    assert layer.router.prior.shape == (12, 10)
    u, acts = torch.randn(3, 12, 8, requires_grad=True), torch.rand(3, 12, requires_grad=True)
    poses, out_acts = layer(u, acts)
    assert poses.shape == (3, 10, 16) and out_acts.shape == (3, 10)
    (poses.square().sum() + out_acts.sum()).backward()
    assert_finite_grads(u.grad, acts.grad, layer.weight.grad, layer.router.prior.grad)


def test_in_conv_caps_per_window():
    layer = capsules.ConvCaps(3, 4, 3, 2, routing=NAME)
    assert layer.router.prior.shape == (27, 4)  # the K*K*in_types children of one window
    poses, acts = torch.randn(2, 7, 7, 3, 16, requires_grad=True), torch.rand(2, 7, 7, 3, requires_grad=True)
    out_poses, out_acts = layer(poses, acts)
    assert out_poses.shape == (2, 3, 3, 4, 16) and out_acts.shape == (2, 3, 3, 4)
    (out_poses.square().sum() + out_acts.sum()).backward()
    assert_finite_grads(poses.grad, acts.grad, layer.weight.grad, layer.router.prior.grad)


def test_in_class_caps_children_share_the_prior_rows_of_their_type():
    layer = capsules.ClassCaps(3, 5, routing=NAME)
    assert layer.router.prior.shape == (3, 5)
    poses, acts = torch.randn(2, 2, 3, 3, 16, requires_grad=True), torch.rand(2, 2, 3, 3, requires_grad=True)
    out_poses, out_acts = layer(poses, acts)
    assert out_poses.shape == (2, 5, 16) and out_acts.shape == (2, 5)
    (out_poses.square().sum() + out_acts.sum()).backward()
    assert_finite_grads(poses.grad, acts.grad, layer.weight.grad, layer.router.prior.grad)


def test_compact_model_on_a_tiny_batch():
    torch.manual_seed(0)
    model = capsules.create_model("compact", routing=NAME)
    images, labels = torch.rand(2, 1, 28, 28), torch.tensor([3, 7])
    out = model(images, labels)
    assert out.activations.shape == (2, 10) and out.poses.shape == (2, 10, 16)
    capsules.margin_loss(out.activations, labels).backward()
    prior = model.classes_caps.router.prior
    assert prior.shape == (7 * 7 * 4, 10) and prior.grad is not None and torch.isfinite(prior.grad).all()


# ---- precision ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_give_finite_results_of_their_dtype(dtype):
    B, I, J, D = 2, 8, 3, 4
    votes64, acts64 = randn(B, I, J, D), rand_acts(B, I)
    router = make_router(4, J, prior_seed=1)
    exact = router(votes64, acts64)
    router = router.float()
    votes, acts = votes64.to(dtype).requires_grad_(), acts64.to(dtype).requires_grad_()
    low = router(votes, acts)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for field, g, w in zip(routing.RoutingResult._fields, low, exact, strict=True):
        assert g.dtype == dtype and torch.isfinite(g).all()
        assert_close(g, w, atol=tol, rtol=tol, what=f"{field} in {dtype}")
    grads = gradients(low, [votes, acts, router.prior])
    assert [g.dtype for g in grads] == [dtype, dtype, torch.float32]
    assert all(torch.isfinite(g).all() for g in grads)
    layer = capsules.CapsuleLinear(6, 3, 4, 5, NAME).to(dtype)
    poses, out_acts = layer(torch.randn(2, 6, 3, dtype=dtype), torch.rand(2, 6, dtype=dtype))
    assert poses.dtype == out_acts.dtype == dtype and torch.isfinite(poses).all()
