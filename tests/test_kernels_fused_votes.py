"""The dense layer's votes formed inside the Triton kernels (kernels/dynamic/votes_op.py, kernels/em/votes_op.py)
against the PyTorch backend routing the formed votes in float64: values and gradients of poses, transforms,
activations (and EM's betas), awkward shapes, 1..3 iterations, low-precision inputs, the routers' dispatch of
``router(poses, activations, transforms=W)`` and the launchers' input checks. Runs under TRITON_INTERPRET=1 on a
CPU (tests/conftest.py); shapes are small because the interpreter is slow."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import routing
from kernels.utils import interpreter_enabled
from routing.linear_votes import vector_votes

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or interpreter_enabled()),
                                reason="the Triton kernels need CUDA or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

from kernels.dynamic import votes_op as dynamic_votes  # noqa: E402  (imports triton)
from kernels.em import votes_op as em_votes  # noqa: E402

# ((B, I, J, D, K), iterations, activations given): one child, one parent, one sample, non-powers of two
CASES = [((2, 1, 3, 4, 2), 2, True), ((3, 5, 1, 3, 2), 3, False), ((1, 6, 3, 5, 3), 1, True),
         ((5, 7, 3, 5, 3), 3, True), ((5, 7, 3, 5, 3), 2, False)]
CASE_IDS = [f"{'x'.join(map(str, s))}-T{t}-{'activations' if a else 'no-activations'}" for s, t, a in CASES]
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 1e-2}


def inputs(shape, dtype, activations=True, seed=0):
    """Poses [B, I, K] ~ N(0, 1), transforms [I, J, D, K] ~ N(0, 0.5^2), activations [B, I] in [0.1, 0.9] (or
    None), rounded to `dtype`, as float64 leaves (the oracle's inputs) and `dtype` leaves (the kernel's)."""
    B, I, J, D, K = shape
    g = torch.Generator().manual_seed(seed)
    exact = [torch.randn(B, I, K, generator=g, dtype=torch.float64),
             0.5 * torch.randn(I, J, D, K, generator=g, dtype=torch.float64)]
    if activations:
        exact.append(0.1 + 0.8 * torch.rand(B, I, generator=g, dtype=torch.float64))
    low = [t.to(dtype) for t in exact]
    exact = [t.to(DEVICE).double().requires_grad_() for t in low]
    low = [t.to(DEVICE).requires_grad_() for t in low]
    return exact, low


def outputs_and_gradients(fn, leaves: list[Tensor], seed: int = 1) -> list[Tensor]:
    """fn(*leaves)'s three outputs and the gradients of a fixed random linear function of them into `leaves`."""
    out = fn(*leaves)
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(DEVICE) for o in out]
    loss = sum((o.double() * w).sum() for o, w in zip(out, weights, strict=True))
    return [o.detach() for o in out] + list(torch.autograd.grad(loss, leaves))


def assert_matches(got: list[Tensor], want: list[Tensor], dtype: torch.dtype, names: list[str]) -> None:
    tol = TOLERANCES[dtype]
    for name, x, y in zip(names, got, want, strict=True):
        assert x.dtype == (dtype if name in ("poses", "activations", "assignments") else x.dtype)
        torch.testing.assert_close(x.double(), y, rtol=tol, atol=tol * float(y.abs().max()) + 1e-12,
                                   msg=lambda m, name=name: f"{name}: {m}")


NAMES = ["poses", "activations", "assignments", "grad poses", "grad transforms", "grad activations"]


# ------------------------------------------------------------------------------------------------- dynamic


def dynamic_reference(iterations, detach_inner=False):
    router = routing.create("dynamic", backend="torch", iterations=iterations, detach_inner=detach_inner)
    return lambda x, w, a=None: tuple(router(vector_votes(x, w), a))


@pytest.mark.parametrize(("shape", "iterations", "activations"), CASES, ids=CASE_IDS)
def test_dynamic_fused_matches_the_float64_reference(shape, iterations, activations):
    exact, low = inputs(shape, torch.float32, activations)
    want = outputs_and_gradients(dynamic_reference(iterations), exact)

    def fused(x, w, a=None):  # several groups of samples and chunks of children, so the reductions are exercised
        return dynamic_votes.dynamic_routing_linear(x, w, a, iterations, False, 1e-8, block_b=2,
                                                    children_per_program=2)

    assert_matches(outputs_and_gradients(fused, low), want, torch.float32, NAMES[:len(want)])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_dynamic_fused_dtypes_accumulate_in_float32(dtype):
    shape = (3, 7, 3, 5, 3)
    exact, low = inputs(shape, dtype)
    want = outputs_and_gradients(dynamic_reference(2), exact)
    got = outputs_and_gradients(lambda x, w, a: dynamic_votes.dynamic_routing_linear(x, w, a, 2, False, 1e-8), low)
    assert_matches(got, want, dtype, NAMES)


def test_dynamic_fused_detach_inner_matches_the_reference():
    exact, low = inputs((3, 6, 4, 3, 2), torch.float64)
    want = outputs_and_gradients(dynamic_reference(3, detach_inner=True), exact)
    got = outputs_and_gradients(
        lambda x, w, a: dynamic_votes.dynamic_routing_linear(x, w, a, 3, True, 1e-8, block_b=1,
                                                             children_per_program=1), low)
    assert_matches(got, want, torch.float64, NAMES)


def test_dynamic_default_launch_config_shares_w_between_samples_within_the_tile():
    config = dynamic_votes.votes_launch_config(128, 1152, 10, 16, torch.float32, torch.device("cpu"))
    assert config.block_b * 16 * 16 <= dynamic_votes.VOTES_TILE and config.block_b >= dynamic_votes.MIN_BLOCK_B
    assert config.n_groups == 128 // config.block_b
    assert config.n_chunks * config.children_per_program >= 1152
    small = dynamic_votes.votes_launch_config(3, 5, 1, 1, torch.float32, torch.device("cpu"))
    assert small.block_b == 4  # no more samples than the batch needs
    with pytest.raises(ValueError, match="block_b must be a power of two"):
        dynamic_votes.votes_launch_config(4, 8, 2, 2, torch.float32, torch.device("cpu"), block_b=3)


# ------------------------------------------------------------------------------------------------------ EM


def em_routers(J: int, iterations: int, dtype=torch.float64):
    """(torch, triton) EM routers with the same small random betas."""
    ref = routing.create("em", backend="torch", iterations=iterations, out_caps=J)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    tri = routing.create("em", backend="triton", iterations=iterations, out_caps=J)
    tri.load_state_dict(ref.state_dict())
    return ref.to(DEVICE, torch.float64), tri.to(DEVICE, dtype)


def em_names(activations: bool) -> list[str]:
    return NAMES[:5] + (["grad activations"] if activations else []) + ["grad beta_u", "grad beta_a"]


def em_functions(ref, iterations: int, activations: bool):
    """(reference, fused) functions of (poses, transforms[, activations], beta_u, beta_a)."""

    def split(args):
        return args[0], args[1], args[2] if activations else None

    def reference(*args):
        x, w, a = split(args)
        return tuple(ref(vector_votes(x, w), a))

    def fused(*args):
        x, w, a = split(args)
        return em_votes.em_routing_linear(x, w, a, args[-2], args[-1], iterations=iterations)

    return reference, fused


@pytest.mark.parametrize(("shape", "iterations", "activations"), CASES, ids=CASE_IDS)
def test_em_fused_matches_the_float64_reference(shape, iterations, activations):
    exact, low = inputs(shape, torch.float32, activations)
    ref, tri = em_routers(shape[2], iterations, torch.float32)
    reference, fused = em_functions(ref, iterations, activations)
    want = outputs_and_gradients(reference, exact + [ref.beta_u, ref.beta_a])
    got = outputs_and_gradients(fused, low + [tri.beta_u, tri.beta_a])
    assert_matches(got, want, torch.float32, em_names(activations))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_em_fused_dtypes_accumulate_in_float32(dtype):
    shape = (3, 7, 3, 5, 3)
    exact, low = inputs(shape, dtype)
    ref, tri = em_routers(3, 2, torch.float32 if dtype != torch.float64 else torch.float64)
    reference, fused = em_functions(ref, 2, True)
    want = outputs_and_gradients(reference, exact + [ref.beta_u, ref.beta_a])
    got = outputs_and_gradients(fused, low + [tri.beta_u, tri.beta_a])
    assert_matches(got, want, dtype, em_names(True))


# ------------------------------------------------------------------------------------- routers and checks


@pytest.mark.parametrize("name", ["dynamic", "em"])
def test_router_with_transforms_runs_the_fused_kernel(name, monkeypatch):
    """router(poses, activations, transforms=W) on the Triton backend goes through the fused op (and equals routing
    the formed votes); with poses and W of different dtypes it routes the formed votes instead."""
    module = dynamic_votes if name == "dynamic" else em_votes
    backend = __import__(f"routing.{name}.triton_backend", fromlist=["_"])
    public = "dynamic_routing_linear" if name == "dynamic" else "em_routing_linear"
    calls = []
    original = getattr(module, public)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(backend, public, counted)
    options = {"out_caps": 3} if name == "em" else {}
    router = routing.create(name, backend="triton", iterations=2, **options).to(DEVICE, torch.float64)
    _, (x, w, a) = inputs((2, 5, 3, 4, 2), torch.float64)
    fused = router(x, a, transforms=w)
    assert calls == [1]
    formed = router(vector_votes(x, w), a)
    for got, want in zip(fused, formed, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):  # poses and W of two dtypes: the votes are formed first
        mixed = router(x.float(), a.float(), transforms=w.to(torch.bfloat16))
    assert calls == [1]
    for got, want in zip(mixed, formed, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=3e-2, atol=3e-2 * want.detach().abs().max().item())


@pytest.mark.parametrize("name", ["dynamic", "em"])
def test_parents_beyond_the_fused_tile_are_routed_from_formed_votes(name, monkeypatch):
    module = dynamic_votes if name == "dynamic" else em_votes
    public = "dynamic_routing_linear" if name == "dynamic" else "em_routing_linear"
    backend = __import__(f"routing.{name}.triton_backend", fromlist=["_"])
    monkeypatch.setattr(backend, public, lambda *args, **kwargs: pytest.fail("the fused op was called"))
    J, D = 64, 32  # 2048 padded float32 values per child: more than the fused kernels hold
    options = {"out_caps": J} if name == "em" else {}
    router = routing.create(name, backend="triton", iterations=1, **options).to(DEVICE, torch.float32)
    _, (x, w, a) = inputs((1, 2, J, D, 2), torch.float32)
    for got, want in zip(router(x, a, transforms=w), router(vector_votes(x, w), a), strict=True):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match=r"fused .* kernels hold up to 1024 padded torch.float32 values"):
        getattr(module, public)(x, w, a, *((1, False, 1e-8) if name == "dynamic" else (router.beta_u, router.beta_a)))


@pytest.mark.parametrize("name", ["dynamic", "em"])
def test_fused_launchers_reject_bad_inputs_clearly(name):
    _, (x, w, a) = inputs((2, 5, 3, 4, 2), torch.float32)
    if name == "dynamic":
        def call(x, w, a):
            return dynamic_votes.dynamic_routing_linear(x, w, a, 2, False, 1e-8)
    else:
        def call(x, w, a):
            return em_votes.em_routing_linear(x, w, a, torch.zeros(3), torch.zeros(3), iterations=2)
    with pytest.raises(ValueError, match=r"poses \[B, I, K\] and transforms \[I, J, D, K\]"):
        call(x[0], w, a)
    with pytest.raises(ValueError, match="I = 5 and K = 2"):
        call(x, w[:, :, :, :1], a)
    with pytest.raises(ValueError, match=r"activations must be \[B, I\] = \[2, 5\]"):
        call(x, w, a[:, :3])
    with pytest.raises(ValueError, match="dtype torch.int64 is not supported"):
        call(x.detach().long(), w.detach().long(), a)
    with pytest.raises(ValueError, match="differ in dtype"):
        call(x, w.detach().double(), a)
    if name == "em":
        with pytest.raises(ValueError, match=r"beta_u must have shape \[J\] = \[3\]"):
            em_votes.em_routing_linear(x, w, a, torch.zeros(2), torch.zeros(3))


def test_fused_ops_are_registered_with_torch_library():
    assert hasattr(torch.ops.capsule_routing, "dynamic_votes_forward")
    assert hasattr(torch.ops.capsule_routing, "em_votes_forward")
