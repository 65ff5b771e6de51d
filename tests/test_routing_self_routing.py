"""Self-routing (Hahn, Pyeon & Kim 2019): the router against a naive loop of the equations, its gradients, its
initialisation, the conformance suite, its errors, and the router inside the capsule layers."""

import pytest
import torch
from torch.func import functional_call

import capsules
import routing
import routing.cpu.chunking
import routing.self_routing  # noqa: F401  (registers "self-routing")
from routing.cpu.switch import tuning
from routing.linear_votes import vector_votes
from routing.testing import check_router

F64 = torch.float64
NAME = "self-routing"


def make(in_caps=2, out_caps=3, pose_dim=3, random_parameters=True, seed=0, **options):
    router = routing.create(NAME, in_caps=in_caps, out_caps=out_caps, pose_dim=pose_dim, **options).to(F64)
    if random_parameters:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            router.weight.copy_(torch.randn(router.weight.shape, generator=g, dtype=F64))
            router.bias.copy_(torch.randn(router.bias.shape, generator=g, dtype=F64))
    return router


def inputs(B=2, I=4, J=3, D=3, seed=1, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    votes = torch.randn(B, I, J, D, generator=g, dtype=F64)
    activations = 0.1 + 0.8 * torch.rand(B, I, generator=g, dtype=F64)
    return votes.to(dtype), activations.to(dtype)


# ---- a deliberately naive loop implementation of the equations, in float64 ----

def naive_route(votes, activations, logit, eps):
    """Loops over samples, children and parents: c_ij = softmax_j(logit(b, i, j)),
    a_j = sum_i c_ij a_i / max(sum_i a_i, eps), v_j = sum_i c_ij a_i u_ij / max(sum_i c_ij a_i, eps)."""
    B, I, J, D = votes.shape
    poses, out_acts, assignments = [], [], []
    for b in range(B):
        a = [activations[b, i] if activations is not None else torch.ones((), dtype=F64) for i in range(I)]
        c = []
        for i in range(I):
            e = [torch.exp(logit(b, i, j)) for j in range(J)]
            z = sum(e)
            c.append([e[j] / z for j in range(J)])
        total = torch.clamp(sum(a), min=eps)
        sample_poses, sample_acts = [], []
        for j in range(J):
            mass = sum(c[i][j] * a[i] for i in range(I))
            sample_acts.append(mass / total)
            sample_poses.append(torch.stack([sum(c[i][j] * a[i] * votes[b, i, j, d] for i in range(I))
                                             / torch.clamp(mass, min=eps) for d in range(D)]))
        poses.append(torch.stack(sample_poses))
        out_acts.append(torch.stack(sample_acts))
        assignments.append(torch.stack([torch.stack(row) for row in c]))
    return torch.stack(poses), torch.stack(out_acts), torch.stack(assignments)


def naive_votes_logits(votes, weight, bias):
    """The router's logits from the votes: b_ij = <w_(i mod in_caps) j, u_ij> + beta_(i mod in_caps) j."""
    n, _, D = weight.shape
    return lambda b, i, j: sum(weight[i % n, j, d] * votes[b, i, j, d] for d in range(D)) + bias[i % n, j]


def naive_pose_logits(poses, transforms, weight, bias):
    """The paper's logits from the child's pose: b_ij = W_route[i, j] . x_i + beta_ij, with
    W_route[i, j, k] = sum_d W[i, j, d, k] w[i, j, d] (the reparametrisation of router.py)."""
    I, J, D, K = transforms.shape
    n = weight.shape[0]
    route = [[[sum(transforms[i, j, d, k] * weight[i % n, j, d] for d in range(D)) for k in range(K)]
              for j in range(J)] for i in range(I)]
    return lambda b, i, j: sum(route[i][j][k] * poses[b, i, k] for k in range(K)) + bias[i % n, j]


def naive_votes(poses, transforms):
    B, I, K = poses.shape
    _, J, D, _ = transforms.shape
    return torch.stack([torch.stack([torch.stack([torch.stack([sum(transforms[i, j, d, k] * poses[b, i, k]
                                                                   for k in range(K)) for d in range(D)])
                                                  for j in range(J)]) for i in range(I)]) for b in range(B)])


def grads(outputs, leaves, upstream):
    loss = sum((out * up).sum() for out, up in zip(outputs, upstream, strict=True))
    return torch.autograd.grad(loss, leaves, allow_unused=True)


def upstream_for(B, I, J, D, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=F64) for s in ((B, J, D), (B, J), (B, I, J))]


@pytest.mark.parametrize("with_activations", [True, False])
@pytest.mark.parametrize("I", [2, 4])  # 4 = 2 * in_caps: child i uses row i % in_caps
def test_router_matches_naive_loop_values_and_gradients(with_activations, I):
    router = make(in_caps=2, out_caps=3, pose_dim=3)
    votes, activations = inputs(I=I)
    acts = activations if with_activations else None
    leaves = [votes.clone().requires_grad_(True)] + ([activations.clone().requires_grad_(True)] if acts is not None
                                                     else [])
    got = router(leaves[0], leaves[1] if acts is not None else None)
    params = [router.weight, router.bias]
    ref_leaves = [t.detach().clone().requires_grad_(True) for t in leaves + params]
    ref_acts = ref_leaves[1] if acts is not None else None
    want = naive_route(ref_leaves[0], ref_acts, naive_votes_logits(ref_leaves[0], *ref_leaves[-2:]), router.eps)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    upstream = upstream_for(2, I, 3, 3)
    for g, w in zip(grads(got, leaves + params, upstream), grads(want, ref_leaves, upstream), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("with_activations", [True, False])
def test_transforms_path_is_the_papers_pose_based_routing(with_activations):
    """router(poses, transforms=W) routes with the paper's logits W_route[i, j] . x_i, W_route = W_ij^T w_ij."""
    B, I, J, D, K = 2, 4, 3, 3, 2
    router = make(in_caps=2, out_caps=J, pose_dim=D, seed=3)
    g = torch.Generator().manual_seed(7)
    poses = torch.randn(B, I, K, generator=g, dtype=F64)
    transforms = torch.randn(I, J, D, K, generator=g, dtype=F64)
    activations = 0.1 + 0.8 * torch.rand(B, I, generator=g, dtype=F64) if with_activations else None
    leaves = [t.clone().requires_grad_(True) for t in (poses, transforms, activations) if t is not None]
    got = router(leaves[0], leaves[2] if with_activations else None, transforms=leaves[1])
    params = [router.weight, router.bias]
    ref = [t.detach().clone().requires_grad_(True) for t in leaves + params]
    votes = naive_votes(ref[0], ref[1])
    want = naive_route(votes, ref[2] if with_activations else None,
                       naive_pose_logits(ref[0], ref[1], *ref[-2:]), router.eps)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    upstream = upstream_for(B, I, J, D)
    for a, b in zip(grads(got, leaves + params, upstream), grads(want, ref, upstream), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck_including_learned_parameters():
    router = make(in_caps=2, out_caps=2, pose_dim=2)
    votes, activations = inputs(I=4, J=2, D=2)
    names = ("weight", "bias")
    params = [p.detach().clone() for p in (router.weight, router.bias)]

    def on_votes(v, a, w, b):
        return tuple(functional_call(router, dict(zip(names, (w, b), strict=True)), (v, a)))

    leaves = [t.requires_grad_(True) for t in (votes, activations, *params)]
    assert torch.autograd.gradcheck(on_votes, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)

    g = torch.Generator().manual_seed(2)
    poses = torch.randn(2, 4, 2, generator=g, dtype=F64)
    transforms = torch.randn(4, 2, 2, 2, generator=g, dtype=F64)

    def on_poses(x, W, a, w, b):
        return tuple(functional_call(router, dict(zip(names, (w, b), strict=True)), (x, a), {"transforms": W}))

    leaves = [t.detach().clone().requires_grad_(True) for t in (poses, transforms, activations, *params)]
    assert torch.autograd.gradcheck(on_poses, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("with_activations", [True, False])
def test_default_initialisation_routes_uniformly(with_activations):
    J = 4
    router = make(in_caps=3, out_caps=J, pose_dim=5, random_parameters=False)
    assert not router.weight.any() and not router.bias.any()
    votes, activations = inputs(B=3, I=6, J=J, D=5)
    acts = activations if with_activations else None
    poses, out_acts, assignments = router(votes, acts)
    assert torch.equal(assignments, torch.full_like(assignments, 1 / J))
    a = acts if acts is not None else torch.ones(3, 6, dtype=F64)
    mean = (a[:, :, None, None] * votes).sum(1) / a.sum(1)[:, None, None]
    torch.testing.assert_close(poses, mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out_acts, torch.full_like(out_acts, 1 / J), rtol=1e-12, atol=1e-14)
    # the same from poses and transforms
    g = torch.Generator().manual_seed(0)
    x, W = torch.randn(3, 6, 2, generator=g, dtype=F64), torch.randn(6, J, 5, 2, generator=g, dtype=F64)
    result = router(x, acts, transforms=W)
    assert torch.equal(result.assignments, torch.full_like(result.assignments, 1 / J))
    torch.testing.assert_close(result.poses, (a[:, :, None, None] * vector_votes(x, W)).sum(1)
                               / a.sum(1)[:, None, None], rtol=1e-12, atol=1e-14)


def test_conformance_suite():
    check_router(NAME)
    check_router(NAME, votes_shape=(2, 6, 3, 4), in_caps=3, eps=1e-6)  # I = 2 * in_caps children


@pytest.mark.parametrize("with_activations", [True, False])
def test_chunked_routing_matches_one_chunk(monkeypatch, with_activations):
    """One sample per chunk (routing.cpu.chunking) gives the values and gradients of the whole batch at once."""
    router = make(in_caps=2, out_caps=3, pose_dim=3)
    votes, activations = inputs(B=5, I=4)
    g = torch.Generator().manual_seed(9)
    x, W = torch.randn(5, 4, 2, generator=g, dtype=F64), torch.randn(4, 3, 3, 2, generator=g, dtype=F64)
    upstream = upstream_for(5, 4, 3, 3)

    def run(*args, **kwargs):
        leaves = [t.clone().requires_grad_(True) for t in args]
        if not with_activations:
            leaves[1] = None
        kw = {k: v.clone().requires_grad_(True) for k, v in kwargs.items()}
        out = router(*leaves, **kw)
        wrt = [t for t in leaves if t is not None] + list(kw.values()) + [router.weight, router.bias]
        return list(out) + list(grads(out, wrt, upstream))

    for args, kwargs in (((votes, activations), {}), ((x, activations), {"transforms": W})):
        with tuning(False):
            whole = run(*args, **kwargs)
        monkeypatch.setattr(routing.cpu.chunking, "CHUNK_BYTES", 1)
        assert len(routing.cpu.chunking.row_chunks(5, 100)) == 5
        chunked = run(*args, **kwargs)
        monkeypatch.undo()
        for a, b in zip(chunked, whole, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_transforms_with_K_greater_than_D_form_the_votes():
    router = make(in_caps=4, out_caps=3, pose_dim=2)
    g = torch.Generator().manual_seed(1)
    x, W = torch.randn(2, 4, 5, generator=g, dtype=F64), torch.randn(4, 3, 2, 5, generator=g, dtype=F64)
    acts = torch.rand(2, 4, generator=g, dtype=F64)
    for a, b in zip(router(x, acts, transforms=W), router(vector_votes(x, W), acts), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({}, "in_caps, out_caps and pose_dim are required, missing in_caps, out_caps, pose_dim"),
        ({"in_caps": 4, "out_caps": 3}, "missing pose_dim"),
        ({"in_caps": 0, "out_caps": 3, "pose_dim": 2}, "in_caps must be a positive integer, got 0"),
        ({"in_caps": 4, "out_caps": 2.0, "pose_dim": 2}, "out_caps must be a positive integer, got float 2.0"),
        ({"in_caps": 4, "out_caps": 3, "pose_dim": True}, "pose_dim must be a positive integer, got bool True"),
        ({"in_caps": 4, "out_caps": 3, "pose_dim": 2, "eps": 0.0}, "eps must be a finite number > 0, got 0.0"),
        ({"in_caps": 4, "out_caps": 3, "pose_dim": 2, "eps": -1e-8}, "eps must be a finite number > 0"),
        ({"in_caps": 4, "out_caps": 3, "pose_dim": 2, "eps": float("inf")}, "eps must be a finite number > 0"),
        ({"in_caps": 4, "out_caps": 3, "pose_dim": 2, "eps": float("nan")}, "eps must be a finite number > 0"),
        ({"in_caps": 4, "out_caps": 3, "pose_dim": 2, "iterations": 3}, "unknown option.*'iterations'"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises((TypeError, ValueError), match=match):
        routing.create(NAME, **options)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((2, 5, 3, 2), "I a multiple of 4, J = 3 and D = 2; got I=5, J=3, D=2"),
        ((2, 4, 4, 2), "got I=4, J=4, D=2"),
        ((2, 8, 3, 3), "got I=8, J=3, D=3"),
    ],
)
def test_bad_sizes(shape, match):
    router = routing.create(NAME, in_caps=4, out_caps=3, pose_dim=2)
    votes = torch.randn(shape)
    with pytest.raises(ValueError, match=match):
        router(votes)
    B, I, J, D = shape
    with pytest.raises(ValueError, match=match):
        router(torch.randn(B, I, 2), transforms=torch.randn(I, J, D, 2))


def backward_is_finite(module, outputs):
    loss = sum(o.float().square().sum() for o in outputs)
    loss.backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    router = module.router if hasattr(module, "router") else None
    if router is not None:
        assert router.weight.grad.abs().sum() > 0 and router.bias.grad.abs().sum() > 0


def test_capsule_linear():
    torch.manual_seed(0)
    layer = capsules.CapsuleLinear(12, 4, 5, 8, routing=NAME)
    assert (layer.router.in_caps, layer.router.out_caps, layer.router.pose_dim) == (12, 5, 8)
    poses, acts = torch.randn(3, 12, 4, requires_grad=True), torch.rand(3, 12)
    out_poses, out_acts = layer(poses, acts)
    assert out_poses.shape == (3, 5, 8) and out_acts.shape == (3, 5)
    assert torch.isfinite(out_poses).all() and torch.isfinite(out_acts).all()
    backward_is_finite(layer, (out_poses, out_acts))
    assert torch.isfinite(poses.grad).all()


def test_conv_caps_routes_each_window():
    torch.manual_seed(0)
    layer = capsules.ConvCaps(2, 3, kernel_size=3, stride=1, routing=NAME)
    assert (layer.router.in_caps, layer.router.out_caps, layer.router.pose_dim) == (18, 3, 16)
    poses, acts = torch.randn(2, 5, 5, 2, 16, requires_grad=True), torch.rand(2, 5, 5, 2)
    out_poses, out_acts = layer(poses, acts)
    assert out_poses.shape == (2, 3, 3, 3, 16) and out_acts.shape == (2, 3, 3, 3)
    assert torch.isfinite(out_poses).all() and torch.isfinite(out_acts).all()
    backward_is_finite(layer, (out_poses, out_acts))
    assert torch.isfinite(poses.grad).all()


def test_class_caps_with_coordinate_addition():
    torch.manual_seed(0)
    layer = capsules.ClassCaps(2, 4, routing=NAME)
    assert (layer.router.in_caps, layer.router.out_caps, layer.router.pose_dim) == (2, 4, 16)
    poses, acts = torch.randn(2, 3, 3, 2, 16, requires_grad=True), torch.rand(2, 3, 3, 2)
    out_poses, out_acts = layer(poses, acts)
    assert out_poses.shape == (2, 4, 16) and out_acts.shape == (2, 4)
    assert torch.isfinite(out_poses).all() and torch.isfinite(out_acts).all()
    backward_is_finite(layer, (out_poses, out_acts))
    assert torch.isfinite(poses.grad).all()


def test_compact_model():
    torch.manual_seed(0)
    model = capsules.create_model("compact", routing=NAME)
    out = model(torch.rand(2, 1, 28, 28))
    assert out.activations.shape == (2, 10) and out.poses.shape == (2, 10, 16)
    assert torch.isfinite(out.activations).all() and torch.isfinite(out.poses).all()
    (out.activations.sum() + out.poses.square().sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_activations", [True, False])
def test_low_precision_inputs(dtype, with_activations):
    router = make(in_caps=4, out_caps=3, pose_dim=5).float()
    votes, activations = inputs(B=2, I=8, J=3, D=5, dtype=dtype)
    acts = activations if with_activations else None
    result = router(votes, acts)
    reference = router.double()(votes.double(), None if acts is None else acts.double())
    router.float()
    for got, want in zip(result, reference, strict=True):
        assert got.dtype == dtype and torch.isfinite(got).all()
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 4, generator=g).to(dtype).requires_grad_(True)
    W = torch.randn(8, 3, 5, 4, generator=g).to(dtype).requires_grad_(True)
    fused = router(x, acts, transforms=W)
    assert all(t.dtype == dtype and torch.isfinite(t).all() for t in fused)
    sum(t.float().sum() for t in fused).backward()
    assert x.grad.dtype == dtype and W.grad.dtype == dtype and torch.isfinite(x.grad).all()
