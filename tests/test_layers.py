"""Capsule layers against naive loops: votes, windows, routing by any name, coordinate addition, bad inputs."""

from __future__ import annotations

import pytest
import torch

import routing
from capsules import CapsuleLinear, ClassCaps, ConvCaps, PrimaryCaps, ReconstructionDecoder
from capsules.layers.class_caps import scaled_coordinates
from capsules.layers.votes import matrix_votes, shared_matrix_votes, shared_vector_votes, vector_votes
from capsules.layers.windows import extract_windows, window_child_index
from tests.compare import assert_close
from tests.naive_routing import naive_em
from tests.routers import iteration_options

ALGORITHMS = routing.available()
F64 = dict(atol=1e-12, rtol=1e-10)


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def rand_acts(*shape, seed=1):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.8 + 0.1


def randomise(module: torch.nn.Module, seed: int = 2) -> torch.nn.Module:
    """Random values for every parameter (EM's beta_u, beta_a start at 0, which would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


def capture_assignments(layer: torch.nn.Module) -> list[routing.RoutingResult]:
    seen: list[routing.RoutingResult] = []
    layer.router.register_forward_hook(lambda module, args, result: seen.append(result))
    return seen


# ---- votes: one batched product against a loop over (sample, child, parent) ----

def test_vector_votes_match_loops():
    u, W = randn(2, 5, 3), randn(5, 4, 6, 3, seed=1)
    votes = vector_votes(u, W)
    want = torch.stack([torch.stack([torch.stack([W[i, j] @ u[b, i] for j in range(4)]) for i in range(5)])
                        for b in range(2)])
    assert_close(votes, want, **F64, what="vector votes")


def test_matrix_votes_match_loops():
    M, W = randn(2, 5, 16), randn(5, 3, 4, 4, seed=1)
    votes = matrix_votes(M, W)
    want = torch.stack([torch.stack([torch.stack([(M[b, i].view(4, 4) @ W[i, j]).flatten() for j in range(3)])
                                     for i in range(5)]) for b in range(2)])
    assert_close(votes, want, **F64, what="matrix votes")


def test_votes_gradients_match_finite_differences():
    u, W = randn(3, 5, 4).requires_grad_(), randn(5, 2, 6, 4, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(vector_votes, (u, W))
    M, Wm = randn(3, 5, 16).requires_grad_(), randn(5, 2, 4, 4, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(matrix_votes, (M, Wm))


@pytest.mark.parametrize("pose", ["vector", "matrix"])
def test_shared_votes_use_one_transform_per_type_at_every_position(pose):
    B, P, T, J = 2, 3, 4, 5
    if pose == "matrix":
        x, W = randn(B, P, T, 16), randn(T, J, 4, 4, seed=1)
        votes = shared_matrix_votes(x, W)
        one = lambda b, p, t, j: (x[b, p, t].view(4, 4) @ W[t, j]).flatten()  # noqa: E731
    else:
        x, W = randn(B, P, T, 3), randn(T, J, 6, 3, seed=1)
        votes = shared_vector_votes(x, W)
        one = lambda b, p, t, j: W[t, j] @ x[b, p, t]  # noqa: E731
    want = torch.stack([torch.stack([torch.stack([one(b, p, t, j) for j in range(J)])
                                     for p in range(P) for t in range(T)]) for b in range(B)])
    assert_close(votes, want, **F64, what=f"shared {pose} votes")


# ---- windows ----

def test_windows_and_child_index_match_a_loop_over_positions():
    B, H, W, T, K, s = 2, 5, 6, 3, 3, 2
    grid = randn(B, H, W, T, 4)
    windows = extract_windows(grid, K, s)
    index = window_child_index(H, W, T, K, s)
    Ho, Wo = (H - K) // s + 1, (W - K) // s + 1
    assert windows.shape == (B, Ho, Wo, K, K, T, 4) and index.shape == (Ho * Wo, K * K * T)
    for y in range(Ho):
        for x in range(Wo):
            for ky in range(K):
                for kx in range(K):
                    for t in range(T):
                        assert torch.equal(windows[:, y, x, ky, kx, t], grid[:, y * s + ky, x * s + kx, t])
                        local = (ky * K + kx) * T + t
                        assert index[y * Wo + x, local] == ((y * s + ky) * W + (x * s + kx)) * T + t


def test_window_larger_than_grid_is_a_clear_error():
    with pytest.raises(ValueError, match="does not fit"):
        extract_windows(torch.zeros(1, 2, 2, 3, 16), 3, 1)


# ---- primary capsules ----

def test_primary_caps_vector_is_sabours_layer():
    layer = PrimaryCaps(256, 32, kernel_size=9, stride=2, pose="vector", dim=8)
    assert sum(p.numel() for p in layer.parameters()) == 9 * 9 * 256 * 256 + 256  # 5,308,672
    poses, acts = layer(torch.randn(2, 256, 20, 20))
    assert poses.shape == (2, 6, 6, 32, 8) and acts.shape == (2, 6, 6, 32)
    assert_close(acts, torch.linalg.vector_norm(poses, dim=-1), atol=1e-6, rtol=1e-6, what="lengths")
    assert float(acts.detach().max()) < 1, "primary capsules are squashed"


def test_primary_caps_matrix_is_a_linear_pose_and_a_sigmoid_activation():
    layer = PrimaryCaps(6, 4, kernel_size=1, pose="matrix").double()
    x = randn(2, 6, 3, 5)
    poses, acts = layer(x)
    assert poses.shape == (2, 3, 5, 4, 16) and acts.shape == (2, 3, 5, 4)
    conv = layer.poses(x).view(2, 4, 16, 3, 5)
    assert_close(poses, conv.permute(0, 3, 4, 1, 2), **F64, what="poses")
    assert_close(acts, torch.sigmoid(layer.activations(x)).permute(0, 2, 3, 1), **F64, what="activations")


def test_primary_caps_rejects_bad_arguments():
    with pytest.raises(ValueError, match="pose must be one of"):
        PrimaryCaps(8, 4, pose="quaternion")
    with pytest.raises(ValueError, match="4x4"):
        PrimaryCaps(8, 4, pose="matrix", dim=8)
    with pytest.raises(ValueError, match=r"\[B, in_channels, H, W\]"):
        PrimaryCaps(8, 4)(torch.zeros(2, 7, 5, 5))


# ---- CapsuleLinear: votes + the named router ----

def test_digit_caps_has_sabours_weight_count_and_nothing_else():
    layer = CapsuleLinear(1152, 8, 10, 16, "dynamic")
    assert [(n, p.numel()) for n, p in layer.named_parameters()] == [("weight", 1_474_560)]
    assert layer.weight.shape == (1152, 10, 16, 8)


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("pose", ["vector", "matrix"])
def test_capsule_linear_routes_the_loop_votes_with_any_algorithm(name, pose):
    in_dim, out_dim = (3, 5) if pose == "vector" else (16, 16)
    layer = randomise(CapsuleLinear(6, in_dim, 4, out_dim, name, pose=pose, **iteration_options(name, 2)).double())
    u, acts = randn(2, 6, in_dim), rand_acts(2, 6)
    poses, out_acts = layer(u, acts)
    W = layer.weight.detach()
    if pose == "vector":
        votes = torch.einsum("ijdk,bik->bijd", W, u)
    else:
        votes = torch.einsum("birc,ijce->bijre", u.view(2, 6, 4, 4), W).reshape(2, 6, 4, 16)
    want = layer.router(votes, acts)
    assert poses.shape == (2, 4, out_dim) and out_acts.shape == (2, 4)
    assert_close(poses, want.poses, **F64, what="poses")
    assert_close(out_acts, want.activations, **F64, what="activations")


def test_capsule_linear_gradients_match_autograd_through_loop_votes():
    layer = randomise(CapsuleLinear(5, 3, 4, 2, "dynamic", iterations=3).double())
    u = randn(2, 5, 3).requires_grad_()
    poses, acts = layer(u)
    (poses.square().sum() + acts.sum()).backward()
    W = layer.weight.detach().clone().requires_grad_()
    u2 = u.detach().clone().requires_grad_()
    votes = torch.stack([torch.stack([torch.stack([W[i, j] @ u2[b, i] for j in range(4)]) for i in range(5)])
                         for b in range(2)])
    want = layer.router(votes)
    (want.poses.square().sum() + want.activations.sum()).backward()
    assert_close(u.grad, u2.grad, **F64, what="grad poses")
    assert_close(layer.weight.grad, W.grad, **F64, what="grad weight")


def test_em_layers_learn_betas_per_parent_type_and_take_routing_options():
    layer = CapsuleLinear(6, 16, 5, 16, "em", pose="matrix", iterations=2, final_lambda=0.02)
    assert layer.router.beta_u.shape == (5,) and layer.router.beta_a.shape == (5,)
    assert layer.router.iterations == 2 and layer.router.final_lambda == 0.02
    assert {n for n, _ in layer.named_parameters()} == {"weight", "router.beta_u", "router.beta_a"}
    conv = ConvCaps(3, 7, 3, routing="em")
    assert conv.router.beta_u.shape == (7,)
    assert CapsuleLinear(6, 8, 5, 16, "dynamic", iterations=1).router.iterations == 1


def test_unknown_routing_names_and_options_are_clear_errors():
    with pytest.raises(KeyError, match="available: .*dynamic.*em"):
        CapsuleLinear(6, 8, 5, 16, "no-such-routing")
    with pytest.raises(KeyError, match="available"):
        ConvCaps(3, 3, 3, routing="no-such-routing")
    with pytest.raises(KeyError, match="available"):
        ClassCaps(3, 5, "no-such-routing")
    with pytest.raises(ValueError, match="unknown option.*'iteration'"):
        CapsuleLinear(6, 8, 5, 16, "dynamic", iteration=3)


def test_capsule_linear_rejects_bad_shapes():
    layer = CapsuleLinear(6, 8, 5, 16, "dynamic")
    with pytest.raises(ValueError, match=r"\[B, in_caps, in_dim\] = \[\*, 6, 8\], got \[2, 7, 8\]"):
        layer(torch.zeros(2, 7, 8))
    with pytest.raises(ValueError, match=r"\[B, in_caps, in_dim\]"):
        layer(torch.zeros(6, 8))
    with pytest.raises(ValueError, match=r"activations must have shape \[B, in_caps\]"):
        layer(torch.zeros(2, 6, 8), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="floating-point"):
        layer(torch.zeros(2, 6, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="in_dim and out_dim must be 16"):
        CapsuleLinear(6, 8, 5, 16, "em", pose="matrix")
    with pytest.raises(ValueError, match="positive integers"):
        CapsuleLinear(0, 8, 5, 16)


# ---- ConvCaps ----

def naive_conv_votes(poses: torch.Tensor, weight: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Loop over samples, output positions, kernel offsets and types: votes [B*P, K*K*T, O, 16] and the
    sample-level child id of every local child [P, K*K*T]."""
    B, H, W, T, _ = poses.shape
    K, O = weight.shape[0], weight.shape[3]
    Ho, Wo = (H - K) // stride + 1, (W - K) // stride + 1
    rows, ids = [], []
    for b in range(B):
        for y in range(Ho):
            for x in range(Wo):
                row, row_ids = [], []
                for ky in range(K):
                    for kx in range(K):
                        for t in range(T):
                            M = poses[b, y * stride + ky, x * stride + kx, t].view(4, 4)
                            row.append(torch.stack([(M @ weight[ky, kx, t, o]).flatten() for o in range(O)]))
                            row_ids.append(((y * stride + ky) * W + (x * stride + kx)) * T + t)
                rows.append(torch.stack(row))
                if b == 0:
                    ids.append(row_ids)
    return torch.stack(rows), torch.tensor(ids)


def test_conv_caps_em_normalises_each_child_over_all_windows_like_the_naive_loops():
    B, H, W, T, O, K, s = 1, 4, 4, 2, 2, 3, 1
    layer = randomise(ConvCaps(T, O, K, s, routing="em", iterations=3).double())
    poses, acts = randn(B, H, W, T, 16, scale=0.5), rand_acts(B, H, W, T)
    seen = capture_assignments(layer)
    out_poses, out_acts = layer(poses, acts)
    assert out_poses.shape == (B, 2, 2, O, 16) and out_acts.shape == (B, 2, 2, O)

    votes, child_index = naive_conv_votes(poses, layer.weight.detach(), s)
    child_acts = torch.stack([acts[0, y:y + K, x:x + K].reshape(-1) for y in range(2) for x in range(2)])
    mu, a, R = naive_em(votes, child_acts, layer.router.beta_u.detach(), layer.router.beta_a.detach(), 3,
                        child_index=child_index)
    assert_close(out_poses, mu.view(B, 2, 2, O, 16), atol=1e-10, rtol=1e-8, what="poses")
    assert_close(out_acts, a.view(B, 2, 2, O), atol=1e-10, rtol=1e-8, what="activations")
    assert_close(seen[0].assignments, R, atol=1e-10, rtol=1e-8, what="assignments")


def test_conv_caps_em_assignments_of_a_child_sum_to_one_over_every_window_it_feeds():
    B, H, W, T, O, K, s = 2, 5, 5, 3, 4, 3, 2
    layer = randomise(ConvCaps(T, O, K, s, routing="em", iterations=2).double())
    seen = capture_assignments(layer)
    layer(randn(B, H, W, T, 16), rand_acts(B, H, W, T))
    R = seen[0].assignments  # [B*P, K*K*T, O]
    index = window_child_index(H, W, T, K, s)
    P = index.shape[0]
    totals = torch.zeros(B, H * W * T, dtype=R.dtype)
    totals.scatter_add_(1, index.reshape(1, -1).expand(B, -1), R.sum(-1).reshape(B, P * K * K * T))
    fed = torch.zeros(H * W * T).scatter_add_(0, index.flatten(), torch.ones(index.numel())) > 0
    assert_close(totals[:, fed], torch.ones_like(totals[:, fed]), atol=1e-12, rtol=0, what="sum of R")


def test_conv_caps_dynamic_routes_each_window_on_its_own():
    B, H, W, T, O, K = 1, 4, 5, 2, 3, 3
    layer = randomise(ConvCaps(T, O, K, 1, routing="dynamic", iterations=3).double())
    poses, acts = randn(B, H, W, T, 16, scale=0.3), rand_acts(B, H, W, T)
    seen = capture_assignments(layer)
    out_poses, out_acts = layer(poses, acts)
    votes, _ = naive_conv_votes(poses, layer.weight.detach(), 1)
    child_acts = torch.stack([acts[0, y:y + K, x:x + K].reshape(-1) for y in range(2) for x in range(3)])
    want = layer.router(votes, child_acts)
    assert_close(out_poses, want.poses.view(B, 2, 3, O, 16), **F64, what="poses")
    assert_close(out_acts, want.activations.view(B, 2, 3, O), **F64, what="activations")
    assert_close(seen[0].assignments.sum(-1), torch.ones(6, K * K * T, dtype=torch.float64), **F64, what="sum c")


@pytest.mark.parametrize("name", ALGORITHMS)
def test_conv_caps_forward_and_backward_with_any_algorithm(name):
    layer = ConvCaps(3, 4, 3, 2, routing=name, **iteration_options(name, 2))
    poses = torch.randn(2, 7, 7, 3, 16, requires_grad=True)
    acts = torch.rand(2, 7, 7, 3, requires_grad=True)
    out_poses, out_acts = layer(poses, acts)
    assert out_poses.shape == (2, 3, 3, 4, 16) and out_acts.shape == (2, 3, 3, 4)
    (out_poses.square().sum() + out_acts.sum()).backward()
    for t in (poses.grad, acts.grad, layer.weight.grad):
        assert t is not None and torch.isfinite(t).all() and t.abs().sum() > 0


def test_conv_caps_rejects_bad_shapes():
    layer = ConvCaps(3, 4, 3)
    with pytest.raises(ValueError, match=r"\[B, H, W, in_types, 16\]"):
        layer(torch.zeros(2, 5, 5, 4, 16), torch.zeros(2, 5, 5, 4))
    with pytest.raises(ValueError, match=r"\[B, H, W, in_types\]"):
        layer(torch.zeros(2, 5, 5, 3, 16), torch.zeros(2, 5, 4, 3))
    with pytest.raises(ValueError, match="does not fit"):
        layer(torch.zeros(2, 2, 5, 3, 16), torch.zeros(2, 2, 5, 3))


# ---- class capsules: shared transforms, coordinate addition ----

@pytest.mark.parametrize("pose, slots", [("matrix", (3, 7)), ("vector", (0, 1))])
def test_coordinate_addition_changes_votes_by_exactly_the_scaled_positions(pose, slots):
    in_dim, out_dim = (16, 16) if pose == "matrix" else (4, 6)
    B, H, W, T, J = 2, 3, 4, 2, 5
    with_ca = ClassCaps(T, J, "em", pose=pose, in_dim=in_dim, out_dim=out_dim, coordinate_addition=True).double()
    without = ClassCaps(T, J, "em", pose=pose, in_dim=in_dim, out_dim=out_dim, coordinate_addition=False).double()
    without.load_state_dict(with_ca.state_dict())
    poses = randn(B, H, W, T, in_dim)
    diff = (with_ca.votes(poses) - without.votes(poses)).view(B, H, W, T, J, out_dim)
    want = torch.zeros(B, H, W, T, J, out_dim, dtype=torch.float64)
    for y in range(H):
        for x in range(W):
            want[:, y, x, :, :, slots[0]] = (y + 0.5) / H
            want[:, y, x, :, :, slots[1]] = (x + 0.5) / W
    assert_close(diff, want, atol=1e-14, rtol=0, what="coordinate offsets")


def test_scaled_coordinates_are_row_and_column_centres():
    coords = scaled_coordinates(2, 4)
    assert coords.tolist()[:5] == [[0.25, 0.125], [0.25, 0.375], [0.25, 0.625], [0.25, 0.875], [0.75, 0.125]]


@pytest.mark.parametrize("name", ALGORITHMS)
def test_class_caps_routes_the_shared_votes_of_every_position(name):
    layer = randomise(ClassCaps(3, 4, name, **iteration_options(name, 2)).double())
    poses, acts = randn(2, 2, 3, 3, 16), rand_acts(2, 2, 3, 3)
    out_poses, out_acts = layer(poses, acts)
    votes = torch.stack([torch.stack([torch.stack([(poses[b, y, x, t].view(4, 4) @ layer.weight[t, j]).flatten()
                                                   + torch.tensor([0, 0, 0, (y + .5) / 2, 0, 0, 0, (x + .5) / 3]
                                                                  + [0] * 8, dtype=torch.float64)
                                                   for j in range(4)])
                                      for y in range(2) for x in range(3) for t in range(3)]) for b in range(2)])
    want = layer.router(votes.detach(), acts.reshape(2, 18))
    assert out_poses.shape == (2, 4, 16) and out_acts.shape == (2, 4)
    assert_close(out_poses, want.poses, **F64, what="poses")
    assert_close(out_acts, want.activations, **F64, what="activations")


def test_class_caps_rejects_bad_shapes():
    layer = ClassCaps(3, 5)
    with pytest.raises(ValueError, match=r"\[B, H, W, in_types, in_dim\]"):
        layer(torch.zeros(2, 3, 3, 2, 16))
    with pytest.raises(ValueError, match=r"\[B, H, W, in_types\]"):
        layer(torch.zeros(2, 3, 3, 3, 16), torch.zeros(2, 9, 3))


# ---- decoder ----

def test_decoder_is_sabours_and_masks_by_label_in_training_and_by_the_longest_capsule_otherwise():
    decoder = ReconstructionDecoder(10, 16, (1, 28, 28))
    assert sum(p.numel() for p in decoder.parameters()) == 1_411_344
    small = ReconstructionDecoder(3, 2, (1, 2, 2), hidden=(5,)).double()
    poses = randn(2, 3, 2)
    lengths = torch.linalg.vector_norm(poses, dim=-1)
    labels = (lengths.argmax(1) + 1) % 3  # never the longest capsule
    first = small.layers[0]
    inputs = []
    first.register_forward_hook(lambda module, args, out: inputs.append(args[0]))
    small.train()
    small(poses, lengths, labels)
    small.eval()
    small(poses, lengths, labels)
    for seen, chosen in zip(inputs, (labels, lengths.argmax(1)), strict=False):
        want = torch.zeros(2, 3, 2, dtype=torch.float64)
        want[torch.arange(2), chosen] = poses[torch.arange(2), chosen]
        assert torch.equal(seen, want.flatten(1))
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        small.train()(poses, lengths, torch.tensor([0, 3]))
