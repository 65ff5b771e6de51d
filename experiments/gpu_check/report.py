"""What the GPU check's sections record: correctness checks, timings and speed targets (`Report`), and timing.

Timings: triton.testing.do_bench on the GPU (median and 20/80% quantiles, L2 flushed between runs); a warmed-up
median of 5 on the CPU under --smoke.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


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
        # triton is optional (absent off Linux) and only a GPU times with it: imported here, where it is needed
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
