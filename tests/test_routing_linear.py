"""Routing from poses and transforms (``router(poses, activations, transforms=W)``) and the fused CPU path of
dynamic routing (routing.dynamic.linear, routing.em.linear): same values and gradients as routing the formed votes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import routing
import routing.cpu.chunking
from capsules.layers import CapsuleLinear
from routing.cpu.fusion import PARENT_MAJOR, PRODUCT
from routing.cpu.workspace import release_workspaces, workspace
from routing.linear_votes import vector_votes
from tests.compare import assert_close

F64 = dict(atol=1e-12, rtol=1e-10)


def inputs(B=3, I=7, K=3, J=4, D=5, activations=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    poses = torch.randn(B, I, K, generator=g, dtype=dtype).requires_grad_()
    transforms = (torch.randn(I, J, D, K, generator=g, dtype=dtype) * 0.7).requires_grad_()
    acts = (torch.rand(B, I, generator=g, dtype=dtype) * 0.8 + 0.1).requires_grad_() if activations else None
    return poses, transforms, acts


def grads_of(result: routing.RoutingResult, leaves, seed=5):
    """Gradients of a random linear function of every output (poses, activations, assignments)."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in result)
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("name", ["dynamic", "em"])
@pytest.mark.parametrize("with_activations", [False, True])
@pytest.mark.parametrize("detach_inner", [False, True])
def test_routing_from_transforms_matches_routing_the_votes(name, with_activations, detach_inner):
    if name == "em" and detach_inner:
        pytest.skip("detach_inner is a dynamic-routing option")
    options = dict(detach_inner=detach_inner) if name == "dynamic" else dict(out_caps=4)
    router = routing.create(name, backend="torch", iterations=3, **options).double()
    poses, transforms, acts = inputs(activations=with_activations)
    leaves = [t for t in (poses, transforms, acts) if t is not None]
    fused = router(poses, acts, transforms=transforms)
    plain = router(vector_votes(poses, transforms), acts)
    for what, a, b in zip(("poses", "activations", "assignments"), fused, plain, strict=False):
        assert_close(a, b, **F64, what=what)
    pairs = zip(("poses", "transforms", "activations"), grads_of(fused, leaves), grads_of(plain, leaves), strict=False)
    for what, a, b in pairs:
        assert_close(a, b, **F64, what=f"gradient of {what}")


def test_fused_dynamic_routing_gradcheck():
    router = routing.create("dynamic", backend="torch", iterations=3)
    poses, transforms, acts = inputs(B=2, I=5, K=2, J=3, D=4)
    assert torch.autograd.gradcheck(lambda p, w, a: tuple(router(p, a, transforms=w)), (poses, transforms, acts))


def test_fused_backward_recomputes_votes_another_call_overwrote():
    """Another fused call between a forward and its backward reuses the scratch buffer: the first call's
    backward must notice and recompute its votes, not read the other call's."""
    router = routing.create("dynamic", backend="torch", iterations=3)
    poses, transforms, acts = inputs()
    want = grads_of(router(vector_votes(poses, transforms), acts), [poses, transforms, acts])
    first = router(poses, acts, transforms=transforms)
    other_poses, other_transforms, other_acts = inputs(seed=9)
    router(other_poses, other_acts, transforms=other_transforms)  # overwrites the shared buffer
    got = grads_of(first, [poses, transforms, acts])
    for what, a, b in zip(("poses", "transforms", "activations"), got, want, strict=False):
        assert_close(a, b, **F64, what=f"gradient of {what}")


def test_fused_path_uses_the_workspace_and_release_frees_it():
    release_workspaces()
    router = routing.create("dynamic", backend="torch", iterations=2)
    poses, transforms, _ = inputs(dtype=torch.float32)
    router(poses, None, transforms=transforms)
    for name in (PRODUCT, PARENT_MAJOR):
        buffer, _ = workspace().claim(name, (1,), torch.float32)
        assert buffer.untyped_storage().nbytes() >= 3 * 7 * 4 * 5 * 4  # the votes [I, B, J*D] in float32
    release_workspaces()
    assert workspace()._buffers == {}


def test_capsule_linear_routes_through_transforms_and_hooks_still_see_the_result():
    layer = CapsuleLinear(7, 3, 4, 5, routing="dynamic", backend="torch", iterations=3).double()
    seen = []
    layer.router.register_forward_hook(lambda module, args, result: seen.append(result))
    poses = inputs()[0]
    out_poses, out_acts = layer(poses)
    want = layer.router(vector_votes(poses, layer.weight))
    assert len(seen) == 2
    assert_close(out_poses, want.poses, **F64, what="layer poses")
    assert_close(seen[0].assignments, want.assignments, **F64, what="hooked assignments")


@pytest.mark.parametrize(
    "poses_shape, transforms_shape, message",
    [
        ((3, 7, 3), (7, 4, 5), "transforms must have shape"),
        ((3, 6, 3), (7, 4, 5, 3), "must match transforms"),
        ((3, 7, 2), (7, 4, 5, 3), "must match transforms"),
        ((3, 7), (7, 4, 5, 3), "poses must have shape"),
    ],
)
def test_bad_poses_or_transforms_say_what_was_expected(poses_shape, transforms_shape, message):
    router = routing.create("dynamic", backend="torch")
    with pytest.raises(ValueError, match=message):
        router(torch.randn(poses_shape), None, transforms=torch.randn(transforms_shape))


def test_transforms_of_another_dtype_or_nan_poses_are_refused():
    router = routing.create("dynamic", backend="torch")
    poses, transforms, _ = inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="dtype and device"):
        router(poses, None, transforms=transforms.double())
    with pytest.raises(ValueError, match="NaN or Inf"):
        router(poses.detach().clone().fill_(float("nan")), None, transforms=transforms)
    with pytest.raises(ValueError, match="activations must have shape"):
        router(poses, torch.rand(3, 6), transforms=transforms)


@pytest.mark.parametrize("name", ["dynamic", "em"])
def test_conv_caps_routes_window_poses_as_the_window_votes(name):
    """ConvCaps hands the router its windows' poses and kron transforms (with EM's child_index): the same
    values and gradients as routing the windows' votes."""
    from capsules.layers import ConvCaps
    from capsules.layers.votes import matrix_votes
    from capsules.layers.windows import extract_windows, window_child_index

    layer = ConvCaps(2, 3, 2, stride=1, routing=name, backend="torch", iterations=3).double()
    with torch.no_grad():
        for p in layer.router.parameters():
            p.normal_()
    g = torch.Generator().manual_seed(3)
    poses = torch.randn(2, 3, 3, 2, 16, generator=g, dtype=torch.float64).requires_grad_()
    acts = (torch.rand(2, 3, 3, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    out = layer(poses, acts)
    windows = extract_windows(poses, 2, 1).reshape(8, 8, 16)
    votes = matrix_votes(windows, layer.weight.view(8, 3, 4, 4))
    extra = {"child_index": window_child_index(3, 3, 2, 2, 1)} if name == "em" else {}
    want = layer.router(votes, extract_windows(acts, 2, 1).reshape(8, 8), **extra)
    assert_close(out[0], want.poses.reshape(2, 2, 2, 3, 16), **F64, what="poses")
    assert_close(out[1], want.activations.reshape(2, 2, 2, 3), **F64, what="activations")
    leaves = [poses, acts, layer.weight, *layer.router.parameters()]
    got = torch.autograd.grad(out[0].sum() + out[1].square().sum(), leaves)
    expected = torch.autograd.grad(want.poses.sum() + want.activations.square().sum(), leaves)
    for i, (a, b) in enumerate(zip(got, expected, strict=False)):
        assert_close(a, b, **F64, what=f"gradient of leaf {i}")


def test_mixed_dtypes_are_allowed_under_autocast_only():
    router = routing.create("dynamic", backend="torch")
    poses, transforms, _ = inputs(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = router(poses.bfloat16(), None, transforms=transforms)
    assert result.poses.shape == (3, 4, 5) and torch.isfinite(result.poses.float()).all()
    with pytest.raises(ValueError, match="dtype and device"):
        router(poses.bfloat16(), None, transforms=transforms)


def test_a_forward_without_gradients_leaves_the_kept_votes_alone():
    """Evaluation between a training forward and its backward (torch.no_grad) must not take the buffer the
    backward reads its parent-major votes from."""
    router = routing.create("dynamic", backend="torch", iterations=3)
    poses, transforms, acts = inputs()
    first = router(poses, acts, transforms=transforms)
    owner = dict(workspace()._owner)
    with torch.no_grad():
        router(*inputs(seed=4)[:1], None, transforms=transforms.detach())
    assert workspace()._owner[(PARENT_MAJOR, torch.float64)] is owner[(PARENT_MAJOR, torch.float64)]
    want = grads_of(router(vector_votes(poses, transforms), acts), [poses, transforms, acts])
    got = grads_of(first, [poses, transforms, acts])
    for what, a, b in zip(("poses", "transforms", "activations"), got, want, strict=False):
        assert_close(a, b, **F64, what=f"gradient of {what}")


@pytest.mark.parametrize("name", ["dynamic", "em"])
def test_cpu_tuning_off_routes_in_plain_pytorch_with_the_same_results(name, monkeypatch):
    router = routing.create(name, backend="torch").double()
    poses, transforms, acts = inputs(B=5)
    tuned = router(poses, acts, transforms=transforms)
    tuned_grads = grads_of(tuned, [poses, transforms, acts])
    release_workspaces()
    row_chunks = routing.cpu.chunking.row_chunks
    monkeypatch.setattr(routing.cpu.chunking, "CHUNK_BYTES", 1)  # one sample a chunk while tuning is on
    monkeypatch.setattr(routing.cpu.chunking, "EM_CHUNK_BYTES", 1)
    with routing.cpu.tuning(False):
        assert not routing.cpu.tuning_enabled()
        assert row_chunks(5, row_bytes=100) == [slice(0, 5)]  # the whole batch is one chunk
        plain = router(poses, acts, transforms=transforms)
        plain_grads = grads_of(plain, [poses, transforms, acts])
    assert routing.cpu.tuning_enabled()
    assert not workspace()._buffers, "tuning off must not claim the fused path's buffers"
    assert len(row_chunks(5, row_bytes=100)) == 5
    for what, a, b in zip(("poses", "activations", "assignments"), plain, tuned, strict=True):
        assert_close(a, b, **F64, what=what)
    for what, a, b in zip(("poses", "transforms", "activations"), plain_grads, tuned_grads, strict=True):
        assert_close(a, b, **F64, what=f"gradient of {what}")


def test_cpu_tuning_switch_from_the_environment_and_bad_values():
    script = "import routing; print(routing.cpu.tuning_enabled())"
    for value, want in (("0", "False"), ("off", "False"), ("1", "True")):
        out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "CAPSULES_CPU_TUNING": value},
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == want, f"CAPSULES_CPU_TUNING={value}: tuning_enabled() printed {out!r}"
    with pytest.raises(ValueError, match="expects True or False"):
        with routing.cpu.tuning("no"):
            pass
