"""What the GPU check's sections record: correctness checks, timings and speed targets (`Report`), and timing.

Timings: triton.testing.do_bench on the GPU (median and 20/80% quantiles, L2 flushed between runs); one call after
a warm-up on the CPU under --smoke. Timing rows have the throughput table's columns (experiments/throughput: case,
routing, provider, mode, dtype, iterations, x_name, x_value, shape, status, note, median, q20, q80, unit,
samples_per_s, peak_mem_mb, gb_per_s); main.py adds the device and provenance columns.
"""

from __future__ import annotations

import math
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

    def time(self, fn: Callable[[], object], *, case: str, routing: str, provider: str, mode: str, dtype: str,
             iterations: int, batch: int, shape: str, bytes_moved: int | None = None,
             grad_to_none: list[Tensor] | None = None) -> float:
        """Median milliseconds of fn(); records the row (gb_per_s when bytes_moved is given, peak memory on a
        GPU)."""
        median, low, high = bench_ms(fn, self.device, grad_to_none)
        row = self._row(case, routing, provider, mode, dtype, iterations, batch, shape)
        row.update(status="ok", median=median, q20=low, q80=high, samples_per_s=batch / median * 1e3,
                   peak_mem_mb=peak_memory_mb(fn, self.device),
                   gb_per_s=math.nan if bytes_moved is None else bytes_moved / median / 1e6)
        self.timings.append(row)
        print(f"  {case} {routing} | {provider} | {mode}: {median:.4f} ms", flush=True)
        return median

    def skip(self, note: str, *, case: str, routing: str, provider: str, mode: str, dtype: str, iterations: int,
             batch: int, shape: str) -> None:
        """A timing row that was not measured, and why (status "skipped", as the throughput table has them)."""
        row = self._row(case, routing, provider, mode, dtype, iterations, batch, shape)
        row.update(status="skipped", note=note)
        self.timings.append(row)
        print(f"  {case} {routing} | {provider} | {mode}: skipped ({note})", flush=True)

    @staticmethod
    def _row(case: str, routing: str, provider: str, mode: str, dtype: str, iterations: int, batch: int,
             shape: str) -> dict:
        return {"case": case, "routing": routing, "provider": provider, "mode": mode, "dtype": dtype,
                "iterations": iterations, "x_name": "batch", "x_value": batch, "shape": shape, "status": "",
                "note": "", "median": math.nan, "q20": math.nan, "q80": math.nan, "unit": "ms",
                "samples_per_s": math.nan, "peak_mem_mb": math.nan, "gb_per_s": math.nan}

    def target(self, what: str, measured: float, goal: float) -> None:
        """A speed goal (measured >= goal), reported in the summary and never asserted."""
        self.targets.append({"target": what, "measured": measured, "goal": goal,
                             "met": "yes" if measured >= goal else "NO"})


def bench_ms(fn: Callable[[], object], device: torch.device,
             grad_to_none: list[Tensor] | None = None) -> tuple[float, float, float]:
    """(median, 20% quantile, 80% quantile) milliseconds: do_bench on CUDA; on the CPU (--smoke, under the
    interpreter, where the times only show that the timing runs) one call after a warm-up, for all three."""
    if device.type == "cuda":
        # triton is optional (absent off Linux) and only a GPU times with it: imported here, where it is needed
        import triton.testing

        median, low, high = triton.testing.do_bench(fn, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
        return median, low, high
    fn()  # warm-up: under the interpreter, one more timed call than this says nothing about speed either
    for x in grad_to_none or []:
        x.grad = None
    start = time.perf_counter()
    fn()
    ms = 1000 * (time.perf_counter() - start)
    return ms, ms, ms


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """MiB allocated at the peak of one fn() call above what was allocated before it (CUDA; NaN elsewhere)."""
    if device.type != "cuda":
        return math.nan
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def peak_bandwidth_gbs(device: torch.device) -> float | None:
    """The GPU's HBM bandwidth from its memory clock and bus width (2 transfers a clock), None when unknown."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None
