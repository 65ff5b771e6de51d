"""The conformance suite every routing algorithm passes: ``check_router(name, backend="torch", **options)``.

    from routing.testing import check_router
    check_router("dynamic")                               # the PyTorch backend, default options
    check_router("em", backend="triton", out_caps=4)      # Triton under TRITON_INTERPRET=1 on a CPU

It builds the router with ``routing.create(name, backend=backend, **options)`` and runs every contract check of
the ``Router`` interface on small random inputs, raising ``AssertionError`` with a message that names the
algorithm, the backend and the check on the first violation:

- shapes and dtypes of poses [B, J, D], activations [B, J] and assignments [B, I, J] (float32 and float64);
- the assignments normalised as the router's ``normalisation`` attribute says ("parents", "children", "none");
- each sample's result independent of the rest of the batch;
- for routers without per-child parameters (``child_parameters`` False), permuting the children permutes the
  assignments and leaves poses and activations unchanged;
- float64 gradients of the votes and activations against finite differences (``torch.autograd.gradcheck``),
  unless the router's ``exact_gradients`` is False (a documented surrogate gradient);
- ``router(poses, activations, transforms=W)`` equal to routing ``vector_votes(poses, W)``, values and
  gradients, with the CPU machinery (routing.cpu) on and off;
- a ValueError for wrong ndim, mismatched shapes, integer dtypes, NaN/Inf, an empty child axis, tensors on the
  meta device and activations outside the router's ``activation_range``; a TypeError for a numpy array;
- bit-identical results from repeated calls, and a different result for 1 iteration than for 3 where the
  router takes ``iterations``;
- finite outputs and gradients for float32 votes of magnitude 1e-30 and 1e30 (the ends of the float32 range where
  float64 routing of the same votes is finite);
- second-order gradients (create_graph=True) that pass ``torch.autograd.gradgradcheck``, or a RuntimeError
  refusing them (a hand-written backward whose result carries no graph would otherwise be silently wrong).

A plugin author calls it on their own algorithm (after registering it) from their tests.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from routing.cpu.switch import tuning
from routing.linear_votes import vector_votes
from routing.registry import create, sized_options
from routing.result import RoutingResult
from routing.router import Router
from routing.validation import finite_checks

NORMALISATIONS = ("parents", "children", "none")
DEFAULT_SHAPE = (3, 6, 4, 5)  # B, I, J, D
GRADCHECK_SHAPE = (2, 3, 3, 3)
SECOND_ORDER_SHAPE = (1, 2, 2, 2)
FLOAT32_ENDS = (1e-30, 1e30)  # magnitudes of float32 votes every router must route to finite results
POSE_SIZE = 3  # K of the transforms path
F64 = dict(rtol=1e-9, atol=1e-12)  # float64 results that differ only in the order of a sum


class _Context:
    """Who is being checked, for the failure messages."""

    def __init__(self, name: str, backend: str, options: dict[str, Any]) -> None:
        self.name, self.backend, self.options = name, backend, options

    def fail(self, check: str, detail: str) -> AssertionError:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return AssertionError(f"check_router({self.name!r}, backend={self.backend!r}{opts}) failed {check}: {detail}")

    def close(self, check: str, what: str, got: Tensor, want: Tensor, rtol: float, atol: float) -> None:
        if got.shape != want.shape:
            raise self.fail(check, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        if not torch.isfinite(got).all():
            raise self.fail(check, f"{what} contains NaN or Inf")
        error = (got - want).abs()
        bound = atol + rtol * want.abs()
        if bool((error > bound).any()):
            worst = int((error - bound).argmax())
            raise self.fail(check, f"{what} differs by up to {float(error.max()):.3g} (at flat index {worst}: "
                                   f"{float(got.flatten()[worst]):.6g} vs {float(want.flatten()[worst]):.6g}; "
                                   f"rtol={rtol}, atol={atol})")


def check_router(
    name: str,
    backend: str = "torch",
    *,
    votes_shape: tuple[int, int, int, int] | None = None,
    device: str | torch.device | None = None,
    **options: Any,
) -> None:
    """Run every contract check on algorithm `name`, backend `backend`, built with `options`.

    votes_shape: (B, I, J, D) of the test inputs (default (3, 6, 4, 5), with I, J, D taken from the options
    in_caps, out_caps, pose_dim where given). A router that takes those size options (routing.SIZE_OPTIONS) gets
    them from the inputs' shape unless `options` sets them, as the capsule layers do.
    device: where the inputs live (default: CUDA for an accelerated backend when available, else the CPU; Triton
    on the CPU needs TRITON_INTERPRET=1).
    Raises AssertionError naming the first violated check; returns None when all pass.
    """
    ctx = _Context(name, backend, options)
    shape = votes_shape or _default_shape(options)
    B, I, J, D = shape

    def options_for(shape: tuple[int, int, int, int], **changes: Any) -> dict[str, Any]:
        return sized_options(name, shape, **{**options, **changes})

    probe = create(name, backend=backend, **options_for(shape))  # for its attributes
    if device is None:
        device = "cuda" if probe.accelerated and torch.cuda.is_available() else "cpu"
    device = torch.device(device)

    def build(dtype: torch.dtype = torch.float64, shape: tuple[int, int, int, int] = shape, **changes: Any
              ) -> Router:
        torch.manual_seed(0)  # routers whose parameters start random start alike
        return create(name, backend=backend, **options_for(shape, **changes)).to(device=device, dtype=dtype)

    with finite_checks(True):
        _check_normalisation_attribute(ctx, probe)
        _check_shapes_and_dtypes(ctx, build, (B, I, J, D), device)
        _check_normalisation(ctx, build(), (B, I, J, D), device)
        _check_batch_independence(ctx, build(), (B, I, J, D), device)
        if not probe.child_parameters:
            _check_child_permutation(ctx, build(), (B, I, J, D), device)
        if probe.exact_gradients:
            small = _gradcheck_shape(options)
            _check_gradients(ctx, build(shape=small), small, device)
        _check_transforms_path(ctx, build, (B, I, J, D), device)
        _check_bad_inputs(ctx, build(torch.float32), (B, I, J, D), device)
        _check_determinism(ctx, build(), (B, I, J, D), device)
        if "iterations" in inspect.signature(type(probe).__init__).parameters:
            _check_iterations_take_effect(ctx, build, (B, I, J, D), device)
        small = _gradcheck_shape(options)
        _check_float32_range(ctx, build(torch.float32, shape=small), small, device)
        small = _default_shape(options, SECOND_ORDER_SHAPE)
        _check_second_order(ctx, build(shape=small), small, device)


def _default_shape(options: dict[str, Any], default: tuple[int, int, int, int] = DEFAULT_SHAPE
                   ) -> tuple[int, int, int, int]:
    """(B, I, J, D): the default's, except the sizes that options in_caps, out_caps, pose_dim fix."""
    B, I, J, D = default
    return B, options.get("in_caps") or I, options.get("out_caps") or J, options.get("pose_dim") or D


def _gradcheck_shape(options: dict[str, Any]) -> tuple[int, int, int, int]:
    return _default_shape(options, GRADCHECK_SHAPE)


def _inputs(shape: tuple[int, int, int, int], device: torch.device, dtype: torch.dtype = torch.float64,
            seed: int = 1) -> tuple[Tensor, Tensor]:
    """Votes [B, I, J, D] ~ N(0, 0.5^2) and activations [B, I] in [0.1, 0.9]."""
    g = torch.Generator().manual_seed(seed)
    B, I, J, D = shape
    votes = 0.5 * torch.randn(B, I, J, D, generator=g, dtype=torch.float64)
    activations = 0.1 + 0.8 * torch.rand(B, I, generator=g, dtype=torch.float64)
    return votes.to(device=device, dtype=dtype), activations.to(device=device, dtype=dtype)


def _route(ctx: _Context, router: Router, check: str, *args: Any, **kwargs: Any) -> RoutingResult:
    try:
        result = router(*args, **kwargs)
    except Exception as exc:  # a contract check reports any crash as a failure of that check
        raise ctx.fail(check, f"the router raised {type(exc).__name__}: {exc}") from exc
    if not (isinstance(result, tuple) and len(result) == 3):
        raise ctx.fail(check, f"expected a RoutingResult(poses, activations, assignments), got {type(result)}")
    return RoutingResult(*result)


def _check_normalisation_attribute(ctx: _Context, router: Router) -> None:
    if getattr(router, "normalisation", None) not in NORMALISATIONS:
        raise ctx.fail("the normalisation attribute", f"{type(router).__name__}.normalisation must be one of "
                                                      f"{NORMALISATIONS}, got {router.normalisation!r}")


def _check_shapes_and_dtypes(ctx: _Context, build: Callable[..., Router], shape, device) -> None:
    B, I, J, D = shape
    check = "shapes and dtypes"
    for dtype in (torch.float32, torch.float64):
        votes, activations = _inputs(shape, device, dtype)
        for acts in (activations, None):
            poses, out_acts, assignments = _route(ctx, build(dtype), check, votes, acts)
            for what, t, want in (("poses", poses, (B, J, D)), ("activations", out_acts, (B, J)),
                                  ("assignments", assignments, (B, I, J))):
                if tuple(t.shape) != want or t.dtype != dtype or t.device != votes.device:
                    raise ctx.fail(check, f"{what} for {dtype} votes {list(votes.shape)} "
                                          f"(activations {'given' if acts is not None else 'None'}): got "
                                          f"{t.dtype} {list(t.shape)} on {t.device}, expected {dtype} "
                                          f"{list(want)} on {votes.device}")
                if not torch.isfinite(t).all():
                    raise ctx.fail(check, f"{what} for {dtype} votes contain NaN or Inf")


def _check_normalisation(ctx: _Context, router: Router, shape, device) -> None:
    votes, activations = _inputs(shape, device)
    assignments = _route(ctx, router, "normalisation", votes, activations).assignments
    kind = router.normalisation
    if kind == "none":
        return
    check = f"normalisation over {kind}"
    if bool((assignments < 0).any()):
        raise ctx.fail(check, f"assignments must be >= 0, got a minimum of {float(assignments.min()):.3g}")
    total = assignments.sum(dim=2 if kind == "parents" else 1)
    per = "dim 2, per child" if kind == "parents" else "dim 1, per parent"
    ctx.close(check, f"assignments summed over {kind} ({per})", total, torch.ones_like(total), rtol=0, atol=1e-9)


def _check_batch_independence(ctx: _Context, router: Router, shape, device) -> None:
    check = "batch independence"
    votes, activations = _inputs(shape, device)
    other_votes, other_acts = _inputs(shape, device, seed=2)
    whole = _route(ctx, router, check, votes, activations)
    for b in range(votes.shape[0]):
        alone = _route(ctx, router, check, votes[b:b + 1], activations[b:b + 1])
        mixed_votes, mixed_acts = other_votes.clone(), other_acts.clone()  # sample b among other samples
        mixed_votes[b], mixed_acts[b] = votes[b], activations[b]
        mixed = _route(ctx, router, check, mixed_votes, mixed_acts)
        for field, got_alone, got_mixed, want in zip(RoutingResult._fields, alone, mixed, whole, strict=True):
            ctx.close(check, f"sample {b}'s {field} routed alone vs in the batch", got_alone[0], want[b], **F64)
            ctx.close(check, f"sample {b}'s {field} among other samples vs in the batch", got_mixed[b], want[b],
                      **F64)


def _check_child_permutation(ctx: _Context, router: Router, shape, device) -> None:
    check = "child permutation (a router without per-child parameters)"
    votes, activations = _inputs(shape, device)
    perm = torch.randperm(shape[1], generator=torch.Generator().manual_seed(3)).to(device)
    base = _route(ctx, router, check, votes, activations)
    permuted = _route(ctx, router, check, votes[:, perm], activations[:, perm])
    ctx.close(check, "poses", permuted.poses, base.poses, **F64)
    ctx.close(check, "activations", permuted.activations, base.activations, **F64)
    ctx.close(check, "assignments (expected permuted with the children)", permuted.assignments,
              base.assignments[:, perm], **F64)


def _check_gradients(ctx: _Context, router: Router, shape, device) -> None:
    check = "float64 gradients against finite differences"
    votes, activations = _inputs(shape, device)
    votes.requires_grad_(True)
    activations.requires_grad_(True)

    def outputs(v: Tensor, a: Tensor) -> tuple[Tensor, ...]:
        return tuple(router(v, a))

    # An accelerated backend off its device runs in a slow interpreter: there gradcheck compares the gradient
    # along random directions against finite differences (fast_mode) instead of every entry of the Jacobian.
    fast = router.accelerated and device.type == "cpu"
    try:
        torch.autograd.gradcheck(outputs, (votes, activations), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=fast)
    except Exception as exc:  # gradcheck's GradcheckError, or a crash of the backward
        raise ctx.fail(check, f"{type(exc).__name__}: {str(exc)[:600]}") from None


def _check_transforms_path(ctx: _Context, build: Callable[..., Router], shape, device) -> None:
    B, I, J, D = shape
    g = torch.Generator().manual_seed(4)
    poses = torch.randn(B, I, POSE_SIZE, generator=g, dtype=torch.float64).to(device)
    transforms = (0.5 * torch.randn(I, J, D, POSE_SIZE, generator=g, dtype=torch.float64)).to(device)
    activations = (0.1 + 0.8 * torch.rand(B, I, generator=g, dtype=torch.float64)).to(device)
    upstream = [torch.randn(s, generator=g, dtype=torch.float64).to(device) for s in ((B, J, D), (B, J), (B, I, J))]
    for cpu_tuning in (True, False):
        check = f"transforms path (routing.cpu tuning {'on' if cpu_tuning else 'off'})"
        with tuning(cpu_tuning):
            router = build()
            leaves = [t.clone().requires_grad_(True) for t in (poses, transforms, activations)]
            fused = _route(ctx, router, check, leaves[0], leaves[2], transforms=leaves[1])
            fused_grads = _gradients(fused, leaves, router, upstream)
            leaves_ref = [t.clone().requires_grad_(True) for t in (poses, transforms, activations)]
            formed = _route(ctx, router, check, vector_votes(leaves_ref[0], leaves_ref[1]), leaves_ref[2])
            formed_grads = _gradients(formed, leaves_ref, router, upstream)
        for field, got, want in zip(RoutingResult._fields, fused, formed, strict=True):
            ctx.close(check, f"{field} vs routing vector_votes(poses, W)", got.detach(), want.detach(), **F64)
        names = ["poses", "transforms", "activations"] + [f"parameter {n}" for n, _ in router.named_parameters()]
        for what, got, want in zip(names, fused_grads, formed_grads, strict=True):
            ctx.close(check, f"gradient of {what} vs routing vector_votes(poses, W)", got, want, **F64)


def _gradients(result: RoutingResult, leaves: list[Tensor], router: Router, upstream: list[Tensor]) -> list[Tensor]:
    """Gradients of <result, upstream> with respect to the leaves and the router's parameters (zeros if unused)."""
    wrt = leaves + list(router.parameters())
    loss = sum((out * up).sum() for out, up in zip(result, upstream, strict=True))
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt, strict=True)]


def _check_bad_inputs(ctx: _Context, router: Router, shape, device) -> None:
    B, I, J, D = shape
    votes, activations = _inputs(shape, device, torch.float32)
    nan_votes = votes.clone()
    nan_votes[0, 0, 0, 0] = float("nan")
    inf_acts = activations.clone()
    inf_acts[-1, -1] = float("inf")
    cases = {
        "votes with 3 dims": (votes[0], activations[0], ValueError),
        "votes with 5 dims": (votes.unsqueeze(0), activations, ValueError),
        "activations of the wrong shape": (votes, activations[:, :-1], ValueError),
        "integer votes": (votes.to(torch.int64), activations, ValueError),
        "integer activations": (votes, activations.to(torch.int32), ValueError),
        "NaN in the votes": (nan_votes, activations, ValueError),
        "Inf in the activations": (votes, inf_acts, ValueError),
        "an empty child axis": (votes[:, :0], activations[:, :0], ValueError),
        "votes on the meta device": (votes.to("meta"), activations.to("meta"), ValueError),
        "votes as a numpy array": (votes.cpu().numpy(), activations, TypeError),
    }
    if router.activation_range is not None:
        low, high = router.activation_range
        outside = activations.clone()
        outside[0, 0] = low - 0.5 if high is None else high + 0.5
        cases[f"activations outside the activation_range {router.activation_range}"] = (votes, outside, ValueError)
    for what, (v, a, expected) in cases.items():
        try:
            router(v, a)
        except expected as exc:
            if not str(exc):
                raise ctx.fail("clear errors for bad input", f"{what}: {expected.__name__} without a message") from exc
            continue
        except Exception as exc:  # anything else is a deep traceback for the user
            raise ctx.fail("clear errors for bad input",
                           f"{what}: expected a {expected.__name__} saying what was expected, got "
                           f"{type(exc).__name__}: {exc}") from exc
        raise ctx.fail("clear errors for bad input", f"{what}: expected a {expected.__name__}, the call succeeded")


def _check_determinism(ctx: _Context, router: Router, shape, device) -> None:
    check = "deterministic repeated calls"
    votes, activations = _inputs(shape, device)
    first = _route(ctx, router, check, votes, activations)
    second = _route(ctx, router, check, votes, activations)
    for field, a, b in zip(RoutingResult._fields, first, second, strict=True):
        if not torch.equal(a, b):
            raise ctx.fail(check, f"{field} differs between two calls on the same inputs by up to "
                                  f"{float((a - b).abs().max()):.3g}")


def _check_iterations_take_effect(ctx: _Context, build: Callable[..., Router], shape, device) -> None:
    check = "the iteration count takes effect"
    votes, activations = _inputs(shape, device)
    one = _route(ctx, build(iterations=1), check, votes, activations)
    three = _route(ctx, build(iterations=3), check, votes, activations)
    if all(torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(one, three, strict=True)):
        raise ctx.fail(check, "iterations=1 and iterations=3 gave the same poses, activations and assignments")


def _check_float32_range(ctx: _Context, router: Router, shape, device) -> None:
    for magnitude in FLOAT32_ENDS:
        check = f"finite results for float32 votes of magnitude {magnitude:g}"
        votes, activations = _inputs(shape, device, torch.float32)
        votes = (2 * magnitude * votes).detach().requires_grad_(True)  # _inputs' votes have std 0.5
        result = _route(ctx, router, check, votes, activations)
        for field, t in zip(RoutingResult._fields, result, strict=True):
            if not torch.isfinite(t).all():
                raise ctx.fail(check, f"{field} contain NaN or Inf")
        (grad,) = torch.autograd.grad(sum(t.sum() for t in result), votes)
        if not torch.isfinite(grad).all():
            raise ctx.fail(check, "the votes' gradient contains NaN or Inf")


def _check_second_order(ctx: _Context, router: Router, shape, device) -> None:
    check = "second-order gradients (create_graph=True) correct or refused"
    votes, activations = _inputs(shape, device)
    votes.requires_grad_(True)
    activations.requires_grad_(True)
    try:
        poses = router(votes, activations).poses
        torch.autograd.grad(poses.square().sum(), votes, create_graph=True)
    except RuntimeError as exc:
        if not str(exc):
            raise ctx.fail(check, "a RuntimeError without a message") from exc
        return  # refused: fine, the user is told

    def outputs(v: Tensor, a: Tensor) -> tuple[Tensor, ...]:
        return tuple(router(v, a))

    try:  # along random directions (fast_mode): a graph-less backward fails it as surely as the full Jacobian
        torch.autograd.gradgradcheck(outputs, (votes, activations), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)
    except Exception as exc:  # gradgradcheck's GradcheckError, or a crash of the double backward
        raise ctx.fail(check, f"second-order gradients are taken but wrong ({type(exc).__name__}: "
                              f"{str(exc)[:400]}); refuse create_graph=True in the backward with a RuntimeError "
                              f"if it is not twice differentiable") from None
