"""The GPU check of the Triton kernels, in one go: correctness at real sizes, torch.compile, throughput.

    python -m experiments.gpu_check                      # on a CUDA machine: every section
    python -m experiments.gpu_check --only dynamic
    TRITON_INTERPRET=1 python -m experiments.gpu_check --smoke   # CPU, tiny shapes: checks this script itself

Each section takes a `Report` and records correctness checks (compared with the PyTorch backends; a failure
makes the exit status 1) and timings (triton.testing.do_bench on the GPU, median and 20/80% quantiles, L2
flushed between runs; a warmed-up median under --smoke). Timings are upserted into
experiments/results/gpu_check.csv with the device name, commit and versions, and printed as a markdown table
with the issue's speed targets (reported, never asserted). Sections live in `sections()`: another op adds one
line there, pointing at its module's `run(report)` (that module may import this one: sections are imported when
the script runs, not when this module loads). On --smoke nothing is written to the CSV.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor, nn

import routing
import routing.dynamic_triton  # noqa: F401  (registers backend "triton")
from experiments.provenance import device_name, git_commit, timestamp, versions
from experiments.tables import RESULTS_DIR, to_markdown, upsert_csv
from kernels.dynamic_routing import dynamic_routing
from kernels.utils import interpreter_enabled
from routing.squash import SQUASH_EPS

RESULTS_CSV = RESULTS_DIR / "gpu_check.csv"
# MNIST CapsNet DigitCaps (Sabour et al. 2017): 1152 primary capsules routed to 10 x 16D, batch 128, 3 iterations
DYNAMIC_SHAPE = (128, 1152, 10, 16)
DYNAMIC_SMOKE_SHAPE = (2, 40, 10, 16)
ITERATIONS = 3


# ---------------------------------------------------------------------------------------------- the report


@dataclass
class Report:
    """What the sections record. `close`/`check` for correctness, `time` for speed, `target` for speed goals."""

    device: torch.device
    smoke: bool
    checks: list[dict] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": what, "ok": bool(ok), "detail": detail})
        print(f"[{'ok' if ok else 'FAIL'}] {what} {detail}", flush=True)
        return bool(ok)

    def close(self, what: str, actual: Tensor, expected: Tensor, atol: float, rtol: float) -> bool:
        """|actual - expected| <= atol + rtol |expected| everywhere (and finite), with the worst errors."""
        a, e = actual.detach().double(), expected.detach().double()
        if a.shape != e.shape:
            return self.check(what, False, f"shape {tuple(a.shape)} != {tuple(e.shape)}")
        err = (a - e).abs()
        ok = bool(torch.isfinite(a).all()) and bool((err <= atol + rtol * e.abs()).all())
        rel = (err / e.abs().clamp_min(1e-30)).where(e.abs() > atol, torch.zeros_like(err))
        return self.check(what, ok, f"max abs err {err.max().item():.2e}, max rel err {rel.max().item():.2e} "
                                    f"(atol {atol:g}, rtol {rtol:g})")

    def attempt(self, what: str, fn: Callable[[Report], None]) -> None:
        """Run one part of a section; an exception is recorded as a failed check and the next part still runs."""
        try:
            fn(self)
        except Exception as exc:  # a GPU-only failure must not cost the rest of the report
            self.check(what, False, f"raised {type(exc).__name__}: {exc}"[:2000])
            traceback.print_exc()

    def time(self, case: str, provider: str, mode: str, fn: Callable[[], object], *,
             bytes_moved: int | None = None, grad_to_none: list[Tensor] | None = None) -> float:
        """Median milliseconds of fn(); records the row (with GB/s when bytes_moved is given)."""
        median, low, high = bench_ms(fn, self.device, grad_to_none)
        row = {"case": case, "provider": provider, "mode": mode, "median_ms": median, "p20_ms": low,
               "p80_ms": high, "GB/s": None if bytes_moved is None else bytes_moved / median / 1e6}
        self.timings.append(row)
        print(f"  {case} | {provider} | {mode}: {median:.4f} ms", flush=True)
        return median

    def target(self, what: str, measured: float, goal: float) -> None:
        """A speed goal (measured >= goal), reported in the summary and never asserted."""
        self.targets.append({"target": what, "measured": measured, "goal": goal,
                             "met": "yes" if measured >= goal else "NO"})


def bench_ms(fn: Callable[[], object], device: torch.device,
             grad_to_none: list[Tensor] | None = None) -> tuple[float, float, float]:
    """(median, 20% quantile, 80% quantile) milliseconds: do_bench on CUDA, a warmed-up median of 5 on the CPU."""
    if device.type == "cuda":
        import triton.testing

        median, low, high = triton.testing.do_bench(fn, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
        return median, low, high
    fn()
    times = []
    for _ in range(5):
        for x in grad_to_none or []:
            x.grad = None
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    return times[2], times[1], times[3]


def peak_bandwidth_gbs(device: torch.device) -> float | None:
    """The GPU's HBM bandwidth from its memory clock and bus width (2 transfers a clock), None when unknown."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None


# ---------------------------------------------------------------------------------------------- dynamic routing


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
        kernel_fn = lambda v, a: dynamic_routing(v, a, ITERATIONS, detach, SQUASH_EPS)  # noqa: E731
        got, got_grads = outputs_and_grads(kernel_fn, votes, acts)
        label = (f"dynamic {'x'.join(map(str, shape_))} {str(dtype).removeprefix('torch.')} detach_inner={detach} "
                 f"{'parent-major' if parent_major else 'child-major'} activations={use_acts}")
        for name, g, w in zip(("v", "|v|", "c", "grad votes", "grad activations"), got + got_grads, want + want_grads):
            report.close(f"{label}: {name}", g, w, atol, rtol)
        again, again_grads = outputs_and_grads(kernel_fn, votes, acts)
        same = all(torch.equal(x, y) for x, y in zip(got + got_grads, again + again_grads))
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
                ms[name, "forward"] = report.time(case, name, "forward", lambda: router(votes), bytes_moved=bytes_read)
                ms[name, "forward+backward"] = report.time(
                    case, name, "forward+backward", lambda: fwd_bwd(router, leaf), grad_to_none=[leaf])

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


def fwd_bwd(router, votes: Tensor) -> None:
    out = router(votes)
    torch.autograd.backward([out.poses, out.activations],
                            [torch.ones_like(out.poses), torch.ones_like(out.activations)])


def run_dynamic(report: Report) -> None:
    report.attempt("dynamic correctness", check_dynamic_correctness)
    report.attempt("dynamic torch.compile", check_dynamic_compile)
    report.attempt("dynamic throughput", bench_dynamic)


# ---------------------------------------------------------------------------------------------- main


def sections() -> dict[str, Callable[[Report], None]]:
    """Section name -> run(report). Another op's check plugs in with one entry, for example
    `"em": importlib.import_module("experiments.gpu_check_em").run`: imported here, when the script runs, so
    that module may import this one (for Report) without an import cycle."""
    return {"dynamic": run_dynamic, "em": importlib.import_module("experiments.gpu_check_em").run}


def main(argv: list[str] | None = None) -> int:
    available = sections()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(available), action="append", help="run only these sections")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    args = parser.parse_args(argv)
    if args.smoke and not interpreter_enabled():
        parser.error("--smoke runs the kernels on the CPU: set TRITON_INTERPRET=1")
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run this on a GPU machine (or --smoke under TRITON_INTERPRET=1)")
    device = torch.device("cpu" if args.smoke else "cuda")
    report = Report(device, args.smoke)
    print(f"device: {device_name(device)}, commit {git_commit()}, {versions()}", flush=True)
    for name in args.only or list(available):
        available[name](report)

    if report.timings:
        provenance = {"device": device_name(device), "commit": git_commit(), **versions(), "timestamp": timestamp()}
        rows = [{**row, **provenance} for row in report.timings]
        if not args.smoke:
            upsert_csv(RESULTS_CSV, rows, key=["case", "provider", "mode", "device"])
        print("\n" + to_markdown(pd.DataFrame(report.timings)))
    if report.targets:
        print("\n" + to_markdown(pd.DataFrame(report.targets), floatfmt=".3g"))
    failed = [c["check"] for c in report.checks if not c["ok"]]
    print(f"\n{len(report.checks) - len(failed)} of {len(report.checks)} checks passed on {device_name(device)}")
    for what in failed:
        print(f"FAILED: {what}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
