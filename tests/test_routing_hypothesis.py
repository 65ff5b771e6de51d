"""Property-based test of every registered router (hypothesis): any drawn shape, dtype, magnitude of the votes
(1e-30 to 1e30), option values (valid and not) and range of activations either raises a clear TypeError or
ValueError, naming what was wrong, or routes to finite outputs with finite gradients.

The draws are derandomized, so CI sees the same examples on every run; the PyTorch backends get most of them, the
Triton backends (under the interpreter on a CPU, which is slow) a small set.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import Tensor

import routing
from kernels.utils import interpreter_enabled

TORCH_ROUTERS = routing.available()
TRITON_ROUTERS = [name for name in routing.available() if "triton" in routing.backends(name)]
# What a call may refuse a drawn input for (the option checks are at create time, these at call time): anything
# else a router raises on these inputs is a failure.
CALL_REFUSALS = ("activations must be", "NaN or Inf", "was built with", "nu0 must be", "I must be a multiple",
                 "backend 'triton': ")
INVALID_VALUES = (0, -1, 0.0, -1.0, math.nan, math.inf, -math.inf, "abc", "0.1", True, 2.5, [1])


def option_strategy(option: str, default: Any, invalid_too: bool = True) -> st.SearchStrategy:
    """Valid-looking values of the option's kind (read from its default) and, where `invalid_too`, sometimes
    invalid ones."""
    invalid = st.sampled_from(INVALID_VALUES)
    if isinstance(default, bool):
        valid = st.booleans()
        invalid = st.sampled_from(("no", "False", 0, 1, None))
    elif isinstance(default, int):
        valid = st.integers(1, 4)
    elif isinstance(default, float):
        valid = st.integers(-12, 12).map(lambda e: 10.0**e)
    else:  # None by default: a size option (filled from the votes' shape) or an optional number
        valid = st.one_of(st.none(), st.integers(1, 8).map(float))
    return st.one_of(*[valid] * 5, invalid) if invalid_too else valid


@st.composite
def routing_case(draw: st.DrawFn, name: str, dtypes: tuple[torch.dtype, ...], max_size: int = 5,
                 invalid_options: bool = True) -> dict[str, Any]:
    B = draw(st.integers(1, 3))
    I, J, D = (draw(st.integers(1, max_size)) for _ in range(3))
    defaults = routing.option_defaults(name)
    sizes = routing.size_options(name)
    options = {}
    for option in routing.options(name):
        if option in sizes or not draw(st.booleans()):
            continue  # size options come from the votes' shape; other options keep their defaults half the time
        options[option] = draw(option_strategy(option, defaults.get(option), invalid_options))
    return dict(
        shape=(B, I, J, D), options=options, dtype=draw(st.sampled_from(dtypes)),
        magnitude=10.0 ** draw(st.integers(-30, 30)),
        pattern=draw(st.sampled_from(("normal", "normal", "agreeing children", "zeros"))),
        activations=draw(st.sampled_from(("none", "unit interval", "drawn range", "zeros"))),
        low=draw(st.floats(-0.5, 1.0)), width=draw(st.floats(0.0, 1.0)),
        transforms=draw(st.booleans()) and draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )


def make_inputs(case: dict[str, Any]) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(votes or poses, activations or None, transforms or None) in float64, as the case says."""
    g = torch.Generator().manual_seed(case["seed"])
    B, I, J, D = case["shape"]
    scale = case["magnitude"]
    if case["transforms"]:  # poses [B, I, K] and transforms [I, J, D, K] whose votes reach the magnitude
        K = 3
        first = math.sqrt(scale) * torch.randn(B, I, K, generator=g, dtype=torch.float64)
        transforms = math.sqrt(scale) * torch.randn(I, J, D, K, generator=g, dtype=torch.float64)
    else:
        first, transforms = scale * torch.randn(B, I, J, D, generator=g, dtype=torch.float64), None
    if case["pattern"] == "agreeing children":
        first = first[:, :1].expand_as(first).clone()
    elif case["pattern"] == "zeros":
        first = torch.zeros_like(first)
    kind = case["activations"]
    if kind == "none":
        activations = None
    elif kind == "zeros":
        activations = torch.zeros(B, I, dtype=torch.float64)
    elif kind == "unit interval":
        activations = torch.rand(B, I, generator=g, dtype=torch.float64)
    else:
        activations = case["low"] + case["width"] * torch.rand(B, I, generator=g, dtype=torch.float64)
    return first, activations, transforms


def routed(router: routing.Router, leaves: list[Tensor], has_activations: bool, has_transforms: bool,
           seed: int) -> tuple[list[Tensor], list[Tensor | None]]:
    """The router's outputs on the leaves (votes or poses, activations, transforms) and the gradients of a random
    projection of them with respect to the leaves and the router's parameters."""
    activations = leaves[1] if has_activations else None
    transforms = leaves[-1] if has_transforms else None
    result = router(leaves[0], activations, transforms=transforms)
    g = torch.Generator().manual_seed(seed)
    loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device)).sum()
               for t in result)
    wrt = leaves + [p for p in router.parameters() if p.requires_grad]
    return list(result), list(torch.autograd.grad(loss, wrt, allow_unused=True))


def representable(oracle: Tensor | None, dtype: torch.dtype) -> bool:
    """Whether the float64 oracle's values are finite and within the range of `dtype` (where the tested dtype can
    hold the answer at all)."""
    return oracle is not None and bool(torch.isfinite(oracle).all()) and (
        oracle.numel() == 0 or float(oracle.abs().max()) <= torch.finfo(dtype).max)


def check_case(name: str, backend: str, case: dict[str, Any], device: str = "cpu") -> None:
    options = routing.sized_options(name, case["shape"], **case["options"])
    try:
        router = routing.create(name, backend=backend, **options)
    except (TypeError, ValueError) as error:
        named = [option for option in case["options"] if option in str(error)]
        assert named and name in str(error), f"create({name!r}, {case['options']}) raised an unclear {error!r}"
        event("an option refused")
        return
    dtype = case["dtype"]
    router = router.to(device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    first, activations, transforms = make_inputs(case)
    given = [t.to(device=device, dtype=dtype) for t in (first, activations, transforms) if t is not None]
    flags = activations is not None, transforms is not None, case["seed"] + 1
    try:
        outputs, grads = routed(router, [t.clone().requires_grad_(True) for t in given], *flags)
    except (TypeError, ValueError) as error:
        assert any(reason in str(error) for reason in CALL_REFUSALS), f"{name} refused {case} with {error!r}"
        event("the inputs refused")
        return
    event("routed")
    for field, t in zip(routing.RoutingResult._fields, outputs, strict=True):
        assert t.dtype == dtype, f"{name} {field}: dtype {t.dtype} for {dtype} inputs ({case})"
    if dtype == torch.float64 and backend == "torch":
        oracle_outputs, oracle_grads = outputs, grads
    else:  # the same inputs (rounded to dtype) and parameters routed in float64 by the PyTorch backend
        oracle = routing.create(name, backend="torch", **options)
        oracle.load_state_dict(router.state_dict())
        oracle = oracle.to(device=device, dtype=torch.float64)
        oracle_outputs, oracle_grads = routed(oracle, [t.double().requires_grad_(True) for t in given], *flags)
    for field, want in zip(routing.RoutingResult._fields, oracle_outputs, strict=True):
        assert torch.isfinite(want).all(), f"{name} {field} not finite in float64 for {case}"
    for i, want in enumerate(oracle_grads):
        assert want is None or torch.isfinite(want).all(), f"{name}: float64 gradient {i} not finite for {case}"
    for field, t, want in zip(routing.RoutingResult._fields, outputs, oracle_outputs, strict=True):
        assert torch.isfinite(t).all() or not representable(want, dtype), f"{name} {field} not finite for {case}"
    for i, (grad, want) in enumerate(zip(grads, oracle_grads, strict=True)):
        ok = grad is None or torch.isfinite(grad).all() or not representable(want, dtype)
        assert ok, f"{name}: gradient {i} (leaves, then parameters) not finite for {case}"


SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None)


@pytest.mark.parametrize("name", TORCH_ROUTERS)
@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_torch_backend_clear_error_or_finite(name, data):
    case = data.draw(routing_case(name, (torch.float32, torch.float64, torch.bfloat16)))
    check_case(name, "torch", case)


def check_triton(name: str, data: st.DataObject) -> None:
    if not (torch.cuda.is_available() or interpreter_enabled()):
        pytest.skip("the Triton backend needs CUDA or TRITON_INTERPRET=1")
    case = data.draw(routing_case(name, (torch.float32, torch.float64), max_size=3, invalid_options=False))
    case["transforms"] = False
    check_case(name, "triton", case, "cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", TRITON_ROUTERS)
@settings(max_examples=2, **SETTINGS)
@given(data=st.data())
def test_triton_backend_clear_error_or_finite(name, data):
    check_triton(name, data)


@pytest.mark.slow
@pytest.mark.parametrize("name", TRITON_ROUTERS)
@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_triton_backend_clear_error_or_finite_more_examples(name, data):
    check_triton(name, data)
