"""The written-out backwards of the PyTorch routing backends against plain autograd, over chunking and layouts.

routing.em and routing.dynamic route a cache-sized chunk of rows at a time and write the votes' gradient
in closed form; here they are compared with a plain-autograd EM (the textbook vectorised loop) and with
themselves in one chunk, on several chunks, both votes layouts, the convolutional child_index mode, float32
inputs with tiny variances against float64, and half inputs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import routing
import routing.cpu.chunking
import routing.em.reference
from tests.compare import assert_close


def autograd_em(votes, acts, beta_u, beta_a, iterations, child_index=None, final_lambda=0.01, min_var=1e-4,
                eps=1e-8):
    """EM routing as plain differentiable tensor code (votes [N, I, J, D]) -> (mu [N, J, D], a [N, J], R [N, I, J])."""
    N, I, J, D = votes.shape
    V = votes.transpose(1, 2)  # [N, J, I, D]
    a_in = torch.ones(N, 1, I, dtype=votes.dtype) if acts is None else acts.unsqueeze(1)
    bu, ba = beta_u.view(1, -1, 1), beta_a.view(1, -1)
    R = torch.full((N, J, I), 1.0 / J, dtype=votes.dtype)
    for t in range(iterations):
        lam = final_lambda * (1 - 0.95 ** (t + 1))
        Rp = R * a_in
        mass = Rp.sum(-1, keepdim=True)
        coeff = Rp / mass.clamp_min(eps)
        mu = torch.einsum("nji,njid->njd", coeff, V)
        diff2 = (V - mu.unsqueeze(2)) ** 2
        var = torch.einsum("nji,njid->njd", coeff, diff2) + min_var
        cost = ((bu + 0.5 * torch.log(var)) * mass).sum(-1)
        logit = lam * (ba - cost)
        if t == iterations - 1:
            break
        log_norm = (torch.log(var) + math.log(2 * math.pi)).sum(-1, keepdim=True)
        log_p = -0.5 * ((diff2 / var.unsqueeze(2)).sum(-1) + log_norm)
        log_num = F.logsigmoid(logit).unsqueeze(-1) + log_p
        if child_index is None:
            R = log_num.softmax(dim=1)
        else:
            R = routing.em.reference.normalise_over_shared_children(log_num, child_index).exp()
    return mu, torch.sigmoid(logit), R.transpose(1, 2)


def em_inputs(N, I, J, D, layout, dtype=torch.float64, seed=0, scale=0.5, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    if layout == "parent-major":
        votes = torch.randn(N, J, I, D, generator=g, dtype=torch.float64).transpose(1, 2)
    else:
        votes = torch.randn(N, I, J, D, generator=g, dtype=torch.float64)
    votes = (votes * scale + offset).to(dtype)
    acts = (torch.rand(N, I, generator=g, dtype=torch.float64) * 0.8 + 0.1).to(dtype)
    betas = torch.randn(2, J, generator=g, dtype=torch.float64)
    return votes, acts, betas[0], betas[1]


def run_em(votes, acts, beta_u, beta_a, iterations, child_index, grads, fn=None):
    """Outputs and the gradients of (votes, acts, beta_u, beta_a) for upstream gradients `grads`."""
    leaves = [x.detach().clone().requires_grad_() for x in (votes, acts, beta_u, beta_a)]
    if fn is None:
        router = routing.create("em", backend="torch", iterations=iterations, out_caps=beta_u.numel())
        router = router.to(beta_u.dtype)
        params = {"beta_u": leaves[2], "beta_a": leaves[3]}
        out = torch.func.functional_call(router, params, (leaves[0], leaves[1]), {"child_index": child_index})
    else:
        out = fn(leaves[0], leaves[1], leaves[2], leaves[3], iterations, child_index)
    # R of 1 iteration is constant
    pairs = [(o, g.to(o.dtype)) for o, g in zip(out, grads, strict=False) if o.requires_grad]
    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    return [o.detach() for o in out], [x.grad for x in leaves]


def upstream(N, I, J, D, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, J, D, generator=g, dtype=torch.float64), torch.randn(N, J, generator=g, dtype=torch.float64),
            torch.randn(N, I, J, generator=g, dtype=torch.float64)]


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Route a few rows per chunk, so the chunked loops and the last, shorter chunk are exercised."""
    monkeypatch.setattr(routing.cpu.chunking, "CHUNK_BYTES", 1)
    monkeypatch.setattr(routing.cpu.chunking, "EM_CHUNK_BYTES", 1)


CONV_INDEX = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4], [0, 2, 4, 1]])  # 3 windows, 4 of 5 shared children


@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("layout", ["parent-major", "contiguous"])
@pytest.mark.parametrize("conv", [False, True])
def test_em_closed_form_backward_matches_autograd(iterations, layout, conv, tiny_chunks):
    N, I, J, D = (9, 4, 3, 5)  # 3 samples of 3 windows in the conv mode
    child_index = CONV_INDEX if conv else None
    votes, acts, bu, ba = em_inputs(N, I, J, D, layout)
    grads = upstream(N, I, J, D)
    got, got_grads = run_em(votes, acts, bu, ba, iterations, child_index, grads)
    want, want_grads = run_em(votes, acts, bu, ba, iterations, child_index, grads, fn=autograd_em)
    for name, g, w in zip(("poses", "activations", "assignments"), got, want, strict=False):
        assert_close(g, w, atol=1e-12, rtol=1e-10, what=name)
    for name, g, w in zip(("votes", "activations", "beta_u", "beta_a"), got_grads, want_grads, strict=False):
        assert_close(g, w, atol=1e-11, rtol=1e-9, what=f"gradient of {name}")
    assert got_grads[0].stride() == votes.stride()  # the gradient comes in the votes' own layout


def test_em_without_activations_and_with_shared_betas(tiny_chunks):
    votes, _, _, _ = em_inputs(5, 6, 3, 4, "parent-major", seed=2)
    leaf, ref = votes.clone().requires_grad_(), votes.clone().requires_grad_()
    router = routing.create("em", backend="torch", iterations=3).double()  # one beta_u, one beta_a for all parents
    with torch.no_grad():
        router.beta_u.fill_(0.3)
        router.beta_a.fill_(-0.2)
    out = router(leaf)
    bu, ba = router.beta_u.detach().clone().requires_grad_(), router.beta_a.detach().clone().requires_grad_()
    want = autograd_em(ref, None, bu.expand(3), ba.expand(3), 3)
    def loss(o):
        return (o[0] * torch.linspace(-1, 1, o[0].numel(), dtype=o[0].dtype).view_as(o[0])).sum() + o[1].sum()

    loss(out).backward()
    loss(want).backward()
    for name, g, w in [("votes", leaf.grad, ref.grad), ("beta_u", router.beta_u.grad, bu.grad),
                       ("beta_a", router.beta_a.grad, ba.grad)]:
        assert_close(g, w, atol=1e-11, rtol=1e-9, what=f"gradient of {name}")


def test_em_float32_with_tiny_variances_is_as_accurate_as_plain_float32():
    """Votes far from 0 (offset 3) with a spread of 1e-2 per parent, so var is about 2e-4: float32 then loses
    digits in V - mu whatever the formulation (the plain autograd code in float32 is off by ~6e-5 in R). The
    backend's outputs and gradients must be no less accurate than that plain float32 code, against float64 on
    the same float32-rounded inputs (a moments-about-zero variance would be off by ~1e-3 here)."""
    N, I, J, D = 4, 12, 3, 16
    votes, acts, bu, ba = (x.float().double() for x in em_inputs(N, I, J, D, "parent-major", scale=1e-2, offset=3.0))
    grads = upstream(N, I, J, D)
    exact, exact_grads = run_em(votes, acts, bu, ba, 3, None, grads, fn=autograd_em)
    single = [x.float() for x in (votes, acts, bu, ba)]
    plain, plain_grads = run_em(*single, 3, None, grads, fn=autograd_em)
    got, got_grads = run_em(*single, 3, None, grads)
    names = ("poses", "activations", "assignments", "grad votes", "grad activations", "grad beta_u", "grad beta_a")
    for name, g, p, e in zip(names, [*got, *got_grads], [*plain, *plain_grads], [*exact, *exact_grads], strict=False):
        err, plain_err = (g.double() - e).abs().max().item(), (p.double() - e).abs().max().item()
        assert err <= 2 * plain_err + 1e-6 * e.abs().max().item(), \
            f"{name}: error {err:.3e}, plain float32 {plain_err:.3e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_em_half_inputs_compute_in_float32(dtype, tiny_chunks):
    N, I, J, D = 9, 4, 3, 5
    votes, acts, bu, ba = em_inputs(N, I, J, D, "parent-major")
    grads = upstream(N, I, J, D)
    exact, exact_grads = run_em(votes, acts, bu, ba, 3, CONV_INDEX, grads)
    low, low_grads = run_em(votes.to(dtype), acts.to(dtype), bu.float(), ba.float(), 3, CONV_INDEX, grads)
    for name, g, w in zip(("poses", "activations", "assignments"), low, exact, strict=False):
        assert g.dtype == dtype
        assert_close(g, w, atol=2e-2, rtol=2e-2, what=f"{dtype} {name}")
    for name, g, w in zip(("votes", "activations"), low_grads[:2], exact_grads[:2], strict=False):
        assert g.dtype == dtype
        assert_close(g, w, atol=2e-2 * w.abs().max().item(), rtol=2e-2, what=f"{dtype} gradient of {name}")


# ---- dynamic routing: chunks and layouts change nothing ----

@pytest.mark.parametrize("layout", ["parent-major", "contiguous"])
@pytest.mark.parametrize("detach_inner", [False, True])
def test_dynamic_chunked_matches_one_chunk(layout, detach_inner, monkeypatch):
    votes, acts, _, _ = em_inputs(7, 5, 3, 4, layout, scale=1.0)
    grads = upstream(7, 5, 3, 4)
    router = routing.create("dynamic", backend="torch", iterations=3, detach_inner=detach_inner)

    def run():
        leaves = [votes.clone().requires_grad_(), acts.clone().requires_grad_()]
        out = router(*leaves)
        torch.autograd.backward(list(out), grads)
        return [o.detach() for o in out], [x.grad for x in leaves]

    whole, whole_grads = run()
    monkeypatch.setattr(routing.cpu.chunking, "CHUNK_BYTES", 1)
    chunked, chunked_grads = run()
    for g, w in zip([*chunked, *chunked_grads], [*whole, *whole_grads], strict=False):
        assert_close(g, w, atol=1e-13, rtol=1e-12, what="chunked vs one chunk")
    assert chunked_grads[0].stride() == votes.stride()


def test_row_chunks_cover_the_rows_in_whole_groups():
    chunks = routing.cpu.chunking.row_chunks(10, row_bytes=100, group=2, budget=450)
    assert [(c.start, c.stop) for c in chunks] == [(0, 4), (4, 8), (8, 10)]
    assert routing.cpu.chunking.row_chunks(3, row_bytes=10**9, group=3) == [slice(0, 3)]
