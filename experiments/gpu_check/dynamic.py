"""The dynamic-routing section of the GPU check: the Triton kernel at the MNIST CapsNet DigitCaps size against the
PyTorch backend (correctness, torch.compile, speed).

    python -m experiments.gpu_check --only dynamic
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

import routing
from experiments.gpu_check.report import Report, peak_bandwidth_gbs
from kernels.dynamic.op import dynamic_routing
from routing.squash import SQUASH_EPS

# MNIST CapsNet DigitCaps (Sabour et al. 2017): 1152 primary capsules routed to 10 x 16D, batch 128, 3 iterations
DYNAMIC_SHAPE = (128, 1152, 10, 16)
DYNAMIC_SMOKE_SHAPE = (2, 40, 10, 16)
ITERATIONS = 3


def random_votes(shape, device, dtype, *, seed=0, parent_major=False, acts=True):
    """Votes [B, I, J, D] (a [B, J, I, D]-contiguous view when parent_major) and activations [B, I] or None."""
    B, I, J, D = shape
    g = torch.Generator(device=device).manual_seed(seed)
    raw = torch.randn((B, J, I, D) if parent_major else shape, generator=g, device=device, dtype=dtype)
    votes = raw.transpose(1, 2) if parent_major else raw
    a = torch.rand(B, I, generator=g, device=device, dtype=dtype) * 0.8 + 0.1 if acts else None
    return votes, a


def outputs_and_grads(fn, votes, acts, seed=1):
    """fn(votes, acts) -> (v, |v|, c); returns those and the gradients of a random linear function of them."""
    leaves = [x.detach().clone().requires_grad_() for x in (votes, acts) if x is not None]
    out = fn(*leaves) if acts is not None else fn(leaves[0], None)
    g = torch.Generator(device=votes.device).manual_seed(seed)
    weights = [torch.randn(o.shape, generator=g, device=o.device, dtype=torch.float64).to(o.dtype) for o in out]
    grads = torch.autograd.grad(list(out), leaves, weights)
    return [o.detach() for o in out], list(grads)


def kernel_outputs(votes: Tensor, acts: Tensor | None, detach_inner: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The kernel's op called directly: (v, |v|, c)."""
    return dynamic_routing(votes, acts, ITERATIONS, detach_inner, SQUASH_EPS)


def check_dynamic_correctness(report: Report) -> None:
    """Kernel vs the PyTorch backend in float64: real sizes, both gradient modes, layouts, dtypes, odd shapes."""
    shape = DYNAMIC_SMOKE_SHAPE if report.smoke else DYNAMIC_SHAPE
    odd = [(2, 33, 1, 7), (3, 5, 37, 3)] if report.smoke else [(3, 4000, 1, 7), (5, 33, 37, 3), (1, 1, 1, 1)]
    cases = [  # shape, dtype, atol, rtol, detach_inner, parent_major, activations
        (shape, torch.float32, 1e-5, 1e-4, False, False, True),
        (shape, torch.float32, 1e-5, 1e-4, True, False, False),
        (shape, torch.float32, 1e-5, 1e-4, False, True, True),
        (shape, torch.bfloat16, 3e-2, 3e-2, False, False, True),
        (shape, torch.float16, 5e-3, 1e-2, False, True, False),
        *[(s, torch.float64, 1e-10, 1e-9, False, False, True) for s in odd],
    ]
    for shape_, dtype, atol, rtol, detach, parent_major, use_acts in cases:
        votes, acts = random_votes(shape_, report.device, dtype, parent_major=parent_major, acts=use_acts)
        reference = routing.create("dynamic", backend="torch", iterations=ITERATIONS, detach_inner=detach)
        want, want_grads = outputs_and_grads(
            reference, votes.double(), None if acts is None else acts.double())
        kernel_fn = functools.partial(kernel_outputs, detach_inner=detach)
        got, got_grads = outputs_and_grads(kernel_fn, votes, acts)
        label = (f"dynamic {'x'.join(map(str, shape_))} {str(dtype).removeprefix('torch.')} detach_inner={detach} "
                 f"{'parent-major' if parent_major else 'child-major'} activations={use_acts}")
        names = ("v", "|v|", "c", "grad votes", "grad activations")  # no activations: no last gradient
        for name, g, w in zip(names, got + got_grads, want + want_grads, strict=False):
            report.close(f"{label}: {name}", g, w, atol, rtol)
        again, again_grads = outputs_and_grads(kernel_fn, votes, acts)
        same = all(torch.equal(x, y) for x, y in zip(got + got_grads, again + again_grads, strict=True))
        report.check(f"{label}: deterministic (bitwise equal on a second run)", same)


class DigitCaps(nn.Module):
    """A CapsNet-style dense capsule layer: u [B, I, 8] -> votes W_ij u_i [B, I, J, D] -> routed v [B, J, D]."""

    def __init__(self, I: int, J: int, D: int, in_dim: int = 8, backend: str = "triton"):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(I, J, D, in_dim) * 0.05)
        self.router = routing.create("dynamic", backend=backend, iterations=ITERATIONS)

    def forward(self, u: Tensor) -> Tensor:
        votes = torch.einsum("ijdk,bik->bijd", self.weight, u)
        out = self.router(votes)
        return out.poses.square().sum() + out.activations.sum() + out.assignments.amax(-1).sum()


def check_dynamic_compile(report: Report) -> None:
    """torch.compile(fullgraph=True) of a model that calls the op: same loss and gradients as eager."""
    if report.smoke:
        print("[skip] dynamic torch.compile: the interpreter's kernels cannot be compiled", flush=True)
        return
    B, I, J, D = DYNAMIC_SHAPE
    torch.manual_seed(0)
    model = DigitCaps(I, J, D).to(report.device)
    u = torch.randn(B, I, 8, device=report.device)
    want = model(u)
    want_grad = torch.autograd.grad(want, model.weight)[0]
    compiled = torch.compile(model, fullgraph=True)
    got = compiled(u)
    got_grad = torch.autograd.grad(got, model.weight)[0]
    report.close("dynamic torch.compile(fullgraph=True): loss", got, want, 1e-4, 1e-4)
    report.close("dynamic torch.compile(fullgraph=True): weight gradient", got_grad, want_grad, 1e-5, 1e-3)


def bench_dynamic(report: Report) -> None:
    """Forward and forward + backward at the DigitCaps shape: Triton vs PyTorch eager vs PyTorch compiled."""
    shape = DYNAMIC_SMOKE_SHAPE if report.smoke else DYNAMIC_SHAPE
    case = f"dynamic {'x'.join(map(str, shape))} T={ITERATIONS} float32"
    votes, _ = random_votes(shape, report.device, torch.float32)
    leaf = votes.detach().clone().requires_grad_()
    bytes_read = ITERATIONS * votes.numel() * votes.element_size()  # the votes read once per iteration
    providers = {"triton": routing.create("dynamic", backend="triton", iterations=ITERATIONS),
                 "torch": routing.create("dynamic", backend="torch", iterations=ITERATIONS)}
    if not report.smoke:
        providers["torch-compile"] = torch.compile(providers["torch"], fullgraph=True)
    ms: dict[tuple[str, str], float] = {}
    with routing.finite_checks(False):
        for name, router in providers.items():
            def run(report: Report, name=name, router=router) -> None:
                label = dict(case="routing", routing="dynamic", provider=name, dtype="float32",
                             iterations=ITERATIONS, batch=shape[0], shape=votes_shape_text(shape))
                ms[name, "forward"] = report.time(lambda: router(votes), mode="forward", bytes_moved=bytes_read,
                                                  **label)
                ms[name, "forward+backward"] = report.time(lambda: fwd_bwd(router, leaf), mode="forward+backward",
                                                           grad_to_none=[leaf], **label)

            report.attempt(f"{case}: timing {name}", run)
    if ("triton", "forward+backward") not in ms or ("torch", "forward+backward") not in ms:
        return
    peak = peak_bandwidth_gbs(report.device)
    if peak is not None:
        report.target(f"{case} forward: fraction of HBM peak ({peak:.0f} GB/s)",
                      bytes_read / ms["triton", "forward"] / 1e6 / peak, 0.7)
    report.target(f"{case} forward: speed-up over torch eager", ms["torch", "forward"] / ms["triton", "forward"], 5)
    if ("torch-compile", "forward") in ms:
        report.target(f"{case} forward: speed-up over torch.compile",
                      ms["torch-compile", "forward"] / ms["triton", "forward"], 2)
    report.target(f"{case} forward+backward: speed-up over torch eager",
                  ms["torch", "forward+backward"] / ms["triton", "forward+backward"], 3)


def votes_shape_text(shape: tuple[int, int, int, int]) -> str:
    """The throughput table's shape column: "votes [B, I, J, D] -> [B, J, D]"."""
    B, I, J, D = shape
    return f"votes [{B}, {I}, {J}, {D}] -> [{B}, {J}, {D}]"


def fwd_bwd(router, votes: Tensor) -> None:
    out = router(votes)
    torch.autograd.backward([out.poses, out.activations],
                            [torch.ones_like(out.poses), torch.ones_like(out.activations)])


def run(report: Report) -> None:
    """The section's entry point (main.SECTIONS["dynamic"])."""
    report.attempt("dynamic correctness", check_dynamic_correctness)
    report.attempt("dynamic torch.compile", check_dynamic_compile)
    report.attempt("dynamic throughput", bench_dynamic)
