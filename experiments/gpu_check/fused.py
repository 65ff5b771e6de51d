"""The fused dense-layer section of the GPU check: ``router(poses, activations, transforms=W)`` on the Triton
backend, whose kernels form the votes inside (kernels/dynamic/votes_op.py, kernels/em/votes_op.py), at the models'
sizes against the PyTorch backend (correctness, torch.compile, speed).

    python -m experiments.gpu_check --only fused
    TRITON_INTERPRET=1 python -m experiments.gpu_check --only fused --smoke     # CPU, tiny shapes

Layers (B, I children of K numbers -> J parents of D):
    dynamic  CapsNet's DigitCaps, 1152 x 8D -> 10 x 16D, batch 128
    em       the smallNORB model's class capsules as a dense layer of 4x4 matrices, 4x4x32 = 512 -> 5, batch 64
             (transforms kron(I_4, W_ij): capsules.layers.votes.matrix_transforms)
Speed: forward and forward + backward (gradients into poses and W) of four providers: "torch" (the PyTorch
backend, eager), "torch-compile" (the same under torch.compile), "triton-unfused" (the votes formed by one batched
product, then routed by the Triton kernels) and "triton-fused" (the votes formed inside the kernels).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

import routing
from experiments.gpu_check.report import Report
from kernels.dynamic.votes_op import dynamic_routing_linear
from kernels.em.votes_op import em_routing_linear
from routing.linear_votes import vector_votes
from routing.squash import SQUASH_EPS

ITERATIONS = 3
# name -> ((B, I, J, D, K) at real size, the same under --smoke)
LAYERS = {"dynamic": ((128, 1152, 10, 16, 8), (3, 9, 10, 16, 8)),
          "em": ((64, 512, 5, 16, 16), (2, 9, 5, 16, 16))}
TOLERANCES = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}  # relative to the largest value
PROVIDERS = ("torch", "torch-compile", "triton-unfused", "triton-fused")


def layer_shape(name: str, smoke: bool) -> tuple[int, int, int, int, int]:
    real, small = LAYERS[name]
    return small if smoke else real


def layer_inputs(shape: tuple[int, int, int, int, int], device: torch.device, dtype: torch.dtype,
                 seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Poses [B, I, K] ~ N(0, 1), transforms [I, J, D, K] ~ N(0, 0.5^2 / K), activations [B, I] in [0.1, 0.9]."""
    B, I, J, D, K = shape
    g = torch.Generator().manual_seed(seed)
    poses = torch.randn(B, I, K, generator=g, dtype=torch.float64)
    transforms = torch.randn(I, J, D, K, generator=g, dtype=torch.float64) * 0.5 / K**0.5
    acts = 0.1 + 0.8 * torch.rand(B, I, generator=g, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype) for t in (poses, transforms, acts))


def make_router(name: str, backend: str, J: int, device: torch.device, dtype: torch.dtype = torch.float32):
    """The router with small random betas for EM (the same for every backend)."""
    options = {"out_caps": J} if name == "em" else {}
    router = routing.create(name, backend=backend, iterations=ITERATIONS, **options)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in router.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return router.to(device=device, dtype=dtype)


def outputs_and_grads(fn, leaves: list[Tensor], seed: int = 2) -> list[Tensor]:
    """fn(*leaves)'s outputs and the gradients into `leaves` of a fixed random linear function of them."""
    out = list(fn(*leaves))
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device) for o in out]
    loss = sum((o.double() * w).sum() for o, w in zip(out, weights, strict=True))
    return [o.detach() for o in out] + list(torch.autograd.grad(loss, leaves))


def check_correctness(report: Report) -> None:
    """The fused path against the PyTorch backend in float64 (on the same rounded inputs) at the layers' sizes:
    values and gradients of poses, transforms, activations (and EM's betas), float32, bfloat16 and float16 (not
    under --smoke: tests/test_kernels_fused_votes.py has it); the router's transforms path equal to the fused op
    called directly, and deterministic."""
    dtypes = (torch.float32, torch.bfloat16) + (() if report.smoke else (torch.float16,))  # --smoke: time
    for name in LAYERS:
        for dtype in dtypes:
            check_layer(report, name, dtype)


def check_layer(report: Report, name: str, dtype: torch.dtype) -> None:
    shape = layer_shape(name, report.smoke)
    reference = make_router(name, "torch", shape[2], report.device, torch.float64)
    fused = make_router(name, "triton", shape[2], report.device)
    low = [t.requires_grad_() for t in layer_inputs(shape, report.device, dtype)]
    exact = [t.detach().double().requires_grad_() for t in low]

    def routed(x: Tensor, w: Tensor, a: Tensor, *_: Tensor):
        return fused(x, a, transforms=w)

    want = outputs_and_grads(lambda x, w, a, *_: reference(vector_votes(x, w), a),
                             exact + list(reference.parameters()))
    got = outputs_and_grads(routed, low + list(fused.parameters()))
    label = f"fused {name} {'x'.join(map(str, shape))} {str(dtype).removeprefix('torch.')}"
    names = ["poses", "activations", "assignments", "grad poses", "grad transforms", "grad activations"]
    names += [f"grad {n}" for n, _ in reference.named_parameters()]
    tol = TOLERANCES[dtype]
    for what, x, y in zip(names, got, want, strict=True):
        report.close(f"{label}: {what}", x, y, tol * float(y.abs().max()), tol)
    again = outputs_and_grads(routed, low + list(fused.parameters()))
    report.check(f"{label}: deterministic (bitwise equal on a second run)",
                 all(torch.equal(x, y) for x, y in zip(got, again, strict=True)))
    with torch.no_grad():
        direct = direct_fused_call(name, fused, *low)
        through_router = routed(*low)
    report.check(f"{label}: the router's transforms path runs the fused kernels",
                 all(torch.equal(x, y) for x, y in zip(direct, through_router, strict=True)))


def direct_fused_call(name: str, router, poses: Tensor, transforms: Tensor, acts: Tensor) -> tuple[Tensor, ...]:
    """The fused op called directly with the router's settings."""
    if name == "dynamic":
        return dynamic_routing_linear(poses, transforms, acts, ITERATIONS, False, SQUASH_EPS)
    return em_routing_linear(poses, transforms, acts, router.beta_u, router.beta_a, iterations=ITERATIONS,
                             final_lambda=router.final_lambda, min_var=router.min_var, eps=router.eps)


class DenseCapsules(nn.Module):
    """A dense capsule layer routed from poses and transforms: poses [B, I, K] -> a scalar loss of the outputs."""

    def __init__(self, name: str, shape: tuple[int, int, int, int, int], backend: str = "triton", fused: bool = True):
        super().__init__()
        B, I, J, D, K = shape
        self.weight = nn.Parameter(torch.randn(I, J, D, K) * 0.5 / K**0.5)
        self.router = make_router(name, backend, J, torch.device("cpu"))
        self.fused = fused

    def forward(self, poses: Tensor, acts: Tensor) -> Tensor:
        if self.fused:
            out = self.router(poses, acts, transforms=self.weight)
        else:
            out = self.router(vector_votes(poses, self.weight), acts)
        return out.poses.square().sum() + out.activations.sum() + out.assignments.amax(-1).sum()


def check_compile(report: Report) -> None:
    """torch.compile(fullgraph=True) of a layer calling the fused ops: same loss and gradients as eager."""
    if report.smoke:
        print("[skip] fused torch.compile: the interpreter's kernels cannot be compiled", flush=True)
        return
    for name in LAYERS:
        shape = layer_shape(name, False)
        torch.manual_seed(0)
        layer = DenseCapsules(name, shape).to(report.device)
        poses, _, acts = layer_inputs(shape, report.device, torch.float32)
        params = list(layer.parameters())
        want = layer(poses, acts)
        want_grads = torch.autograd.grad(want, params)
        compiled = torch.compile(layer, fullgraph=True)
        got = compiled(poses, acts)
        got_grads = torch.autograd.grad(got, params)
        label = f"fused {name} torch.compile(fullgraph=True)"
        report.close(f"{label}: loss", got, want, 1e-4, 1e-4)
        for (what, _), x, y in zip(layer.named_parameters(), got_grads, want_grads, strict=True):
            report.close(f"{label}: {what} gradient", x, y, 1e-5 * float(y.abs().max()), 1e-3)


def benchmark(report: Report) -> None:
    """Forward and forward + backward of each provider (PROVIDERS) at each layer's size, float32."""
    for name in LAYERS:
        benchmark_layer(report, name)


def benchmark_layer(report: Report, name: str) -> None:
    shape = layer_shape(name, report.smoke)
    B, I, J, D, K = shape
    poses, transforms, acts = layer_inputs(shape, report.device, torch.float32)
    leaves = [poses.clone().requires_grad_(), transforms.clone().requires_grad_()]
    label = dict(case="capsule-linear", routing=name, dtype="float32", iterations=ITERATIONS, batch=B,
                 shape=f"poses [{B}, {I}, {K}] -> [{B}, {J}, {D}]")
    bytes_read = ITERATIONS * B * I * J * D * 4  # the throughput table's convention: the votes read per iteration
    torch_router = make_router(name, "torch", J, report.device)
    triton_router = make_router(name, "triton", J, report.device)
    calls = {"torch": lambda x, w: torch_router(x, acts, transforms=w),
             "triton-unfused": lambda x, w: triton_router(vector_votes(x, w), acts),
             "triton-fused": lambda x, w: triton_router(x, acts, transforms=w)}
    if not report.smoke:
        calls["torch-compile"] = torch.compile(calls["torch"])
    ms: dict[tuple[str, str], float] = {}
    with routing.finite_checks(False):
        for provider in PROVIDERS:
            if provider not in calls:
                for mode in ("forward", "forward+backward"):
                    report.skip("not timed under --smoke (compiling on the CPU takes minutes)", provider=provider,
                                mode=mode, **label)
                continue
            timed = functools.partial(time_provider, ms=ms, label={**label, "provider": provider},
                                      call=calls[provider], inputs=(poses, transforms), leaves=leaves,
                                      bytes_read=bytes_read)
            report.attempt(f"fused {name}: timing {provider}", timed)
    case = f"fused {name} {'x'.join(map(str, shape))} T={ITERATIONS} float32"
    for mode in ("forward", "forward+backward"):
        if ("triton-fused", mode) in ms and ("triton-unfused", mode) in ms:
            report.target(f"{case} {mode}: speed-up of fusing the votes",
                          ms["triton-unfused", mode] / ms["triton-fused", mode], 1)
        if ("triton-fused", mode) in ms and ("torch", mode) in ms:
            report.target(f"{case} {mode}: speed-up over torch eager", ms["torch", mode] / ms["triton-fused", mode],
                          5 if mode == "forward" else 3)


def time_provider(report: Report, *, ms: dict[tuple[str, str], float], label: dict, call, inputs: tuple[Tensor, ...],
                  leaves: list[Tensor], bytes_read: int) -> None:
    """Time call(*inputs) and its forward + backward into `leaves`, into ms[provider, mode]."""
    provider = label["provider"]
    ms[provider, "forward"] = report.time(lambda: call(*inputs), mode="forward", bytes_moved=bytes_read, **label)
    ms[provider, "forward+backward"] = report.time(lambda: backward(call(*leaves)), mode="forward+backward",
                                                   grad_to_none=leaves, **label)


def backward(result) -> None:
    """Backward of the poses' and activations' sums into the leaves."""
    torch.autograd.backward([result.poses, result.activations],
                            [torch.ones_like(result.poses), torch.ones_like(result.activations)])


def run(report: Report) -> None:
    """The section's entry point (main.SECTIONS["fused"])."""
    report.attempt("fused correctness", check_correctness)
    report.attempt("fused torch.compile", check_compile)
    report.attempt("fused throughput", benchmark)
