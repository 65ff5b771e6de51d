"""What the throughput comparison measures: one case per workload, built for a routing algorithm and a backend.

A case builds a `Workload`: the module to time (a router, or a whole capsule layer), its inputs, the leaves the
backward differentiates (inputs that need a gradient, and the module's parameters), and the size of the votes
tensor the routing works on, for the bytes-moved model of `bytes_moved`.

Cases (B is the swept batch size):
    routing         the routing step alone: votes [B, 1152, 10, 16] and activations [B, 1152] in, RoutingResult out
                    (the CapsNet DigitCaps votes, so every algorithm is timed on the same input)
    capsule-linear  capsules.CapsuleLinear(1152, 8, 10, 16): poses [B, 1152, 8] -> [B, 10, 16], CapsNet DigitCaps
    conv-caps       capsules.ConvCaps(16, 16, kernel_size=3, stride=1): poses [B, 6, 6, 16, 16] and activations
                    [B, 6, 6, 16] -> [B, 4, 4, 16, 16] (a matrix-capsule layer; votes [B*16, 144, 16, 16])

A case may also have a baseline per routing (provider "naive-torch"): the same layer written the public way
(naive.py), timed in the same run at the CPU targets' batch (`TARGETS`) so that the targets compare against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import routing
from capsules import CapsuleLinear, ConvCaps
from experiments.throughput.naive import NaiveCapsuleLinear, NaiveEMConvCaps

MODES = ("forward", "backward", "forward+backward")
BASELINE = "naive-torch"  # the provider name of the naive baselines' rows


@dataclass
class Workload:
    """One timed setting: ``module(*inputs)`` returns (poses, activations, ...)."""

    module: nn.Module
    inputs: tuple[Tensor | None, ...]
    leaves: tuple[Tensor, ...]  # what backward differentiates: inputs with requires_grad, then parameters
    votes_shape: tuple[int, ...]  # [rows, I, J, D] of the votes the routing step sees
    shape: str  # human-readable description of the input and output shapes

    def votes_bytes(self) -> int:
        dtype = next((t.dtype for t in self.inputs if t is not None), torch.float32)
        return torch.Size(self.votes_shape).numel() * torch.empty((), dtype=dtype).element_size()


def bytes_moved(votes_bytes: int, iterations: int, mode: str) -> int:
    """The traffic model for achieved GB/s: the least a routing implementation must move through memory.

    forward: the votes are read once per iteration (T reads); backward: read once per iteration again and their
    gradient written once (T + 1); forward+backward: both (2T + 1). Outputs, activations and the layers' weights
    and matrix products are ignored (each is at most 1/D of the votes, or not routing work).
    """
    factor = {"forward": iterations, "backward": iterations + 1, "forward+backward": 2 * iterations + 1}
    if mode not in factor:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    return factor[mode] * votes_bytes


def _leaf(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, positive: bool = False) -> Tensor:
    x = torch.randn(shape, device=device)
    if positive:
        x = torch.sigmoid(x)
    return x.to(dtype).requires_grad_()


def _leaves(inputs: tuple[Tensor | None, ...], module: nn.Module) -> tuple[Tensor, ...]:
    params = tuple(p for p in module.parameters() if p.requires_grad)
    return tuple(t for t in inputs if t is not None and t.requires_grad) + params


def routing_step(name: str, iterations: int, backend: str, batch: int, dtype: torch.dtype,
                 device: torch.device) -> Workload:
    """The router alone on votes [B, 1152, 10, 16] and activations [B, 1152]."""
    I, J, D = 1152, 10, 16
    options = routing.sized_options(name, (batch, I, J, D), **_iterations(name, iterations))
    module = routing.create(name, backend=backend, **options).to(device=device, dtype=dtype)
    inputs = (_leaf((batch, I, J, D), dtype, device), _leaf((batch, I), dtype, device, positive=True))
    return Workload(module, inputs, _leaves(inputs, module), (batch, I, J, D),
                    f"votes [{batch}, {I}, {J}, {D}] -> [{batch}, {J}, {D}]")


def _iterations(name: str, iterations: int) -> dict[str, int]:
    """The iterations option, for the algorithms that iterate (self-routing and self-attention do not)."""
    return {"iterations": iterations} if "iterations" in routing.options(name) else {}


def capsule_linear(name: str, iterations: int, backend: str, batch: int, dtype: torch.dtype,
                   device: torch.device) -> Workload:
    """CapsuleLinear 1152 x 8D -> 10 x 16D (CapsNet DigitCaps) on poses [B, 1152, 8], no input activations."""
    I, in_dim, J, D = 1152, 8, 10, 16
    module = CapsuleLinear(I, in_dim, J, D, routing=name, backend=backend, **_iterations(name, iterations))
    module = module.to(device=device, dtype=dtype)
    inputs = (_leaf((batch, I, in_dim), dtype, device), None)
    return Workload(module, inputs, _leaves(inputs, module), (batch, I, J, D),
                    f"poses [{batch}, {I}, {in_dim}] -> [{batch}, {J}, {D}]")


def conv_caps(name: str, iterations: int, backend: str, batch: int, dtype: torch.dtype,
              device: torch.device) -> Workload:
    """ConvCaps 16 -> 16 types, K=3, stride 1, 4x4 poses, on a 6x6 grid -> 4x4 (votes [B*16, 144, 16, 16])."""
    H = W = 6
    types, K, pose = 16, 3, 16
    module = ConvCaps(types, types, K, 1, routing=name, backend=backend, **_iterations(name, iterations))
    module = module.to(device=device, dtype=dtype)
    inputs = (_leaf((batch, H, W, types, pose), dtype, device), _leaf((batch, H, W, types), dtype, device, True))
    out = H - K + 1
    return Workload(module, inputs, _leaves(inputs, module), (batch * out * out, K * K * types, types, pose),
                    f"poses [{batch}, {H}, {W}, {types}, {pose}] -> [{batch}, {out}, {out}, {types}, {pose}]")


def naive_capsule_linear(name: str, iterations: int, backend: str, batch: int, dtype: torch.dtype,
                         device: torch.device) -> Workload:
    """The capsule-linear case written the public way (naive.NaiveCapsuleLinear; dynamic routing, `backend`
    ignored): the same shapes, so its rows line up with ours."""
    I, in_dim, J, D = 1152, 8, 10, 16
    module = NaiveCapsuleLinear(I, in_dim, J, D, iterations=iterations).to(device=device, dtype=dtype)
    inputs = (_leaf((batch, I, in_dim), dtype, device), None)
    return Workload(module, inputs, _leaves(inputs, module), (batch, I, J, D),
                    f"poses [{batch}, {I}, {in_dim}] -> [{batch}, {J}, {D}]")


def naive_conv_caps(name: str, iterations: int, backend: str, batch: int, dtype: torch.dtype,
                    device: torch.device) -> Workload:
    """The conv-caps case written the public way (naive.NaiveEMConvCaps; EM routing, `backend` ignored): the same
    shapes, so its rows line up with ours."""
    H = W = 6
    types, K, pose = 16, 3, 16
    module = NaiveEMConvCaps(types, types, K, iterations=iterations).to(device=device, dtype=dtype)
    inputs = (_leaf((batch, H, W, types, pose), dtype, device), _leaf((batch, H, W, types), dtype, device, True))
    out = H - K + 1
    return Workload(module, inputs, _leaves(inputs, module), (batch * out * out, K * K * types, types, pose),
                    f"poses [{batch}, {H}, {W}, {types}, {pose}] -> [{batch}, {out}, {out}, {types}, {pose}]")


Builder = Callable[[str, int, str, int, torch.dtype, torch.device], Workload]


@dataclass(frozen=True)
class Case:
    name: str
    build: Builder
    batch_sizes: tuple[int, ...]  # the default sweep: a small batch and the CPU targets' batch (REFERENCE.md)
    baselines: dict[str, Builder] = field(default_factory=dict)  # routing name -> the naive-torch workload


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case("routing", routing_step, (8, 32)),
        Case("capsule-linear", capsule_linear, (16, 128), baselines={"dynamic": naive_capsule_linear}),
        Case("conv-caps", conv_caps, (4, 32), baselines={"em": naive_conv_caps}),
    )
}


@dataclass(frozen=True)
class Target:
    """A CPU target: our PyTorch backend's forward + backward on (case, routing) at this batch, iterations and
    dtype, 10x faster than the public implementation (public_ms: its time on a 2-core CPU, REFERENCE.md, another
    machine: context only; the target is judged against the same-run naive baseline where the case has one)."""

    case: str
    routing: str
    batch: int
    what: str
    public: str
    public_ms: float
    iterations: int = 3
    dtype: str = "float32"


TARGETS = (
    Target("capsule-linear", "dynamic", 128, "dense layer 1152 x 8D -> 10 x 16D, 3 iterations, batch 128",
           "XifengGuo", 1294.0),
    Target("conv-caps", "em", 32, "EM ConvCaps 6x6 -> 4x4, K=3, 16 -> 16 types, 3 iterations, batch 32",
           "yl-1993", 2202.0),
)
TARGET_SPEEDUP = 10.0


def get_case(name: str) -> Case:
    if name not in CASES:
        raise KeyError(f"unknown case {name!r}; available: {', '.join(CASES)}")
    return CASES[name]
