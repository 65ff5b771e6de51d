"""The EM section of the GPU check: the Triton EM kernels at the smallNORB model's sizes, against the PyTorch
backend.

    python -m experiments.gpu_check --only em                                  # on a CUDA machine
    TRITON_INTERPRET=1 python -m experiments.gpu_check --only em --smoke       # CPU, tiny shapes: checks this script

Shapes at batch 64 (REFERENCE.md, smallNORB with A=64, B=C=D=32, E=5 on 32x32 crops):
    class capsules  ConvCaps2's 4x4x32 capsules -> 5 classes: votes [64, 512, 5, 16]
    ConvCaps2       3x3 windows over ConvCaps1's 6x6x32 capsules -> 4x4x32: votes [64*16, 288, 32, 16] with
                    child_index [16, 288] (a child's assignments normalised over every window it feeds)
Accuracy standard: against the PyTorch backend in float64 on the same (rounded) inputs, each output and gradient
must be within 4x the error of the PyTorch backend itself at the input's precision (or 1e-6 of its largest
element), so ill-conditioned elements are judged by what the precision allows.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

import routing
from experiments.gpu_check.report import Report

ITERATIONS = 3
CLASS_SHAPE, CLASS_SMOKE = (64, 512, 5, 16), (2, 18, 5, 16)
CONV_GRID, CONV_SMOKE_GRID = (6, 32, 3), (3, 2, 2)  # (input side, capsule types, kernel size), stride 1
# The results table's case column of each routing step (rows: (sample, window) pairs for ConvCaps2)
TABLE_CASES = {"class capsules": "class-caps-routing", "ConvCaps2": "conv-caps-routing"}


def conv_child_index(side: int, types: int, kernel: int) -> Tensor:
    """[P, K*K*types]: window p = (row, col) of the (side - K + 1)^2 outputs, local child (kr, kc, type) ->
    the sample's child ((row + kr) * side + col + kc) * types + type."""
    out = side - kernel + 1
    r, c, kr, kc, ch = torch.meshgrid(*(torch.arange(n) for n in (out, out, kernel, kernel, types)), indexing="ij")
    return (((r + kr) * side + c + kc) * types + ch).reshape(out * out, -1)


def conv_shape(batch: int, grid: tuple[int, int, int]) -> tuple[tuple[int, int, int, int], Tensor]:
    side, types, kernel = grid
    child_index = conv_child_index(side, types, kernel)
    return (batch * child_index.shape[0], child_index.shape[1], types, 16), child_index


def cases(smoke: bool) -> list[tuple[str, tuple[int, int, int, int], Tensor | None]]:
    """(name, votes shape, child_index) of the two smallNORB routing steps."""
    batch = 2 if smoke else 64
    shape, child_index = conv_shape(batch, CONV_SMOKE_GRID if smoke else CONV_GRID)
    return [("class capsules", CLASS_SMOKE if smoke else CLASS_SHAPE, None), ("ConvCaps2", shape, child_index)]


def make_routers(J: int, device: torch.device, seed: int = 1) -> tuple[nn.Module, nn.Module]:
    """(torch, triton) routers with the same small random betas."""
    ref = routing.create("em", backend="torch", iterations=ITERATIONS, out_caps=J)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    tri = routing.create("em", backend="triton", iterations=ITERATIONS, out_caps=J)
    tri.load_state_dict(ref.state_dict())
    return ref.to(device), tri.to(device)


def outputs_and_grads(router, votes, acts, child_index, dtype, seed=2):
    """Outputs and gradients (votes, activations, beta_u, beta_a) of a random linear function of the outputs."""
    router.zero_grad()
    v = votes.to(dtype).clone().requires_grad_()
    a = acts.to(dtype).clone().requires_grad_()
    out = list(router(v, a, child_index=child_index))
    g = torch.Generator(device=votes.device).manual_seed(seed)
    weights = [torch.randn(o.shape, generator=g, device=o.device, dtype=torch.float64).to(o.dtype) for o in out]
    torch.autograd.backward(out, weights)
    return [o.detach() for o in out] + [v.grad, a.grad, router.beta_u.grad.clone(), router.beta_a.grad.clone()]


def random_inputs(shape, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    votes = torch.randn(shape, generator=g, device=device, dtype=torch.float64)
    acts = torch.rand(shape[:2], generator=g, device=device, dtype=torch.float64) * 0.8 + 0.1
    return votes, acts


NAMES = ("poses", "activations", "assignments", "grad votes", "grad activations", "grad beta_u", "grad beta_a")


def check_correctness(report: Report) -> None:
    """Kernel vs the PyTorch backend at real sizes (float32, bfloat16, float16) and odd float64 shapes."""
    for name, shape, child_index in cases(report.smoke):
        votes, acts = random_inputs(shape, report.device)
        ref, tri = make_routers(shape[2], report.device)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            low_votes, low_acts = votes.to(dtype).double(), acts.to(dtype).double()
            exact = outputs_and_grads(ref.double(), low_votes, low_acts, child_index, torch.float64)
            same_precision = outputs_and_grads(ref.float(), low_votes, low_acts, child_index, dtype)
            got = outputs_and_grads(tri.float(), low_votes, low_acts, child_index, dtype)
            label = f"em {name} {'x'.join(map(str, shape))} {str(dtype).removeprefix('torch.')}"
            for what, x, y, z in zip(NAMES, got, same_precision, exact, strict=True):
                torch_err = float((y.double() - z).abs().max())
                report.close(f"{label}: {what}", x, z, max(4 * torch_err, 1e-6 * float(z.abs().max())), 0.0)
            if child_index is None:  # the shared-child sums use scatter_add (atomics on CUDA)
                again = outputs_and_grads(tri.float(), low_votes, low_acts, child_index, dtype)
                report.check(f"{label}: deterministic", all(torch.equal(x, y) for x, y in zip(got, again, strict=True)))
    for shape in [(3, 33, 7, 5), (1, 1, 1, 1), (2, 300, 3, 9)]:
        votes, acts = random_inputs(shape, report.device)
        ref, tri = make_routers(shape[2], report.device)
        want = outputs_and_grads(ref.double(), votes, acts, None, torch.float64)
        got = outputs_and_grads(tri.double(), votes, acts, None, torch.float64)
        for what, x, y in zip(NAMES, got, want, strict=True):
            report.close(f"em {'x'.join(map(str, shape))} float64: {what}", x, y, 1e-10, 1e-8)


class EMLayer(nn.Module):
    """Votes from poses by per-(child, parent) 4x4 transforms, routed by EM: [B, I, 4, 4] -> a scalar loss."""

    def __init__(self, I: int, J: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(I, J, 4, 4) * 0.3)
        self.router = routing.create("em", backend="triton", iterations=ITERATIONS, out_caps=J)

    def forward(self, poses: Tensor, acts: Tensor, child_index: Tensor | None = None) -> Tensor:
        votes = torch.einsum("bixy,ijyz->bijxz", poses, self.weight).flatten(-2)
        out = self.router(votes, acts, child_index=child_index)
        return out.poses.square().sum() + out.activations.sum() + out.assignments.amax(-1).sum()


def check_compile(report: Report) -> None:
    """torch.compile of a layer calling the kernels: same loss and gradients as eager. fullgraph=True for the
    class capsules; ConvCaps2 (child_index is checked on the host, a graph break) with fullgraph=False."""
    if report.smoke:
        print("[skip] em torch.compile: the interpreter's kernels cannot be compiled", flush=True)
        return
    for (name, shape, child_index), fullgraph in zip(cases(False), (True, False), strict=True):
        N, I, J, _ = shape
        torch.manual_seed(0)
        layer = EMLayer(I, J).to(report.device)
        poses = torch.randn(N, I, 4, 4, device=report.device)
        acts = torch.rand(N, I, device=report.device)
        ci = None if child_index is None else child_index.to(report.device)
        want = layer(poses, acts, ci)
        want_grads = torch.autograd.grad(want, [layer.weight, layer.router.beta_u, layer.router.beta_a])
        compiled = torch.compile(layer, fullgraph=fullgraph)
        got = compiled(poses, acts, ci)
        got_grads = torch.autograd.grad(got, [layer.weight, layer.router.beta_u, layer.router.beta_a])
        label = f"em {name} torch.compile(fullgraph={fullgraph})"
        report.close(f"{label}: loss", got, want, 1e-4, 1e-4)
        for what, x, y in zip(("weight", "beta_u", "beta_a"), got_grads, want_grads, strict=True):
            report.close(f"{label}: {what} gradient", x, y, 1e-5, 1e-3)


def benchmark(report: Report) -> None:
    """Forward and forward + backward: Triton vs PyTorch eager vs PyTorch compiled, float32, at both shapes."""
    for name, shape, child_index in cases(report.smoke):
        case = f"em {name} {'x'.join(map(str, shape))} T={ITERATIONS} float32"
        votes, acts = (x.float() for x in random_inputs(shape, report.device))
        ci = None if child_index is None else child_index.to(report.device)
        leaf = votes.clone().requires_grad_()
        ref, tri = make_routers(shape[2], report.device)
        # the votes read once per iteration (a second time per iteration after the first with child_index)
        reads = ITERATIONS if ci is None else 2 * ITERATIONS - 1
        bytes_read = reads * votes.numel() * votes.element_size()
        providers = {"triton": tri, "torch": ref}
        if not report.smoke:
            providers["torch-compile"] = torch.compile(ref)
        ms: dict[tuple[str, str], float] = {}
        with routing.finite_checks(False):
            for provider, router in providers.items():
                label = dict(case=TABLE_CASES[name], routing="em", provider=provider, dtype="float32",
                             iterations=ITERATIONS, shape=votes_shape_text(shape),
                             batch=shape[0] if ci is None else shape[0] // ci.shape[0])  # samples
                timed = functools.partial(time_provider, ms=ms, label=label, router=router, votes=votes, leaf=leaf,
                                          acts=acts, child_index=ci, bytes_read=bytes_read)
                report.attempt(f"{case}: timing {provider}", timed)
        if ("triton", "forward") not in ms or ("torch", "forward") not in ms:
            continue
        report.target(f"{case} forward: speed-up over torch eager", ms["torch", "forward"] / ms["triton", "forward"], 5)
        if ("torch-compile", "forward") in ms:
            report.target(f"{case} forward: speed-up over torch.compile",
                          ms["torch-compile", "forward"] / ms["triton", "forward"], 2)
        if ("triton", "forward+backward") in ms and ("torch", "forward+backward") in ms:
            report.target(f"{case} forward+backward: speed-up over torch eager",
                          ms["torch", "forward+backward"] / ms["triton", "forward+backward"], 3)


def time_provider(report: Report, *, ms: dict[tuple[str, str], float], label: dict, router: nn.Module,
                  votes: Tensor, leaf: Tensor, acts: Tensor, child_index: Tensor | None, bytes_read: int) -> None:
    """Time one provider's forward (on `votes`) and forward + backward (into `leaf`), into ms[provider, mode];
    `label` holds the row's table columns (Report.time)."""
    provider = label["provider"]
    ms[provider, "forward"] = report.time(lambda: router(votes, acts, child_index=child_index), mode="forward",
                                          bytes_moved=bytes_read, **label)
    ms[provider, "forward+backward"] = report.time(lambda: fwd_bwd(router, leaf, acts, child_index),
                                                   mode="forward+backward", grad_to_none=[leaf], **label)


def votes_shape_text(shape: tuple[int, int, int, int]) -> str:
    """The throughput table's shape column: "votes [N, I, J, D] -> [N, J, D]"."""
    N, I, J, D = shape
    return f"votes [{N}, {I}, {J}, {D}] -> [{N}, {J}, {D}]"


def fwd_bwd(router, votes: Tensor, acts: Tensor, child_index: Tensor | None) -> None:
    out = router(votes, acts, child_index=child_index)
    torch.autograd.backward([out.poses, out.activations],
                            [torch.ones_like(out.poses), torch.ones_like(out.activations)])


def run(report: Report) -> None:
    """The section's entry point (main.SECTIONS["em"])."""
    report.attempt("em correctness", check_correctness)
    report.attempt("em torch.compile", check_compile)
    report.attempt("em throughput", benchmark)
