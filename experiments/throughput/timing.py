"""Timing, peak memory and copy bandwidth for the throughput comparison.

- Time: warm-up, then the median and 20% / 80% quantiles of repeated runs. On a GPU `triton.testing.do_bench`
  (its own warm-up of 25 ms, then about 100 ms of runs, caches flushed between runs); on the CPU untimed calls
  until they stop getting faster (`settle`, or a fixed number), then a `time.perf_counter` loop of `repeats` calls,
  which also records the median process CPU time per call (`time.process_time`, all threads).
- Peak memory: the most bytes allocated at once during one call, above what was allocated before it (inputs and
  weights are not counted). GPU: `torch.cuda.max_memory_allocated`. CPU: the torch profiler's memory timeline
  (every tensor allocation and free recorded by the profiler); NaN when the profiler cannot give it. What the
  profiler's C++ side prints (kineto's "USDT: ... profiler_start" lines) is discarded at the file-descriptor level.
- Copy bandwidth: 2 x bytes / time of a 1 GiB device-to-device tensor copy (read + write), timed with do_bench.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import Action, MemoryProfile

QUANTILES = (0.5, 0.2, 0.8)


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median and 20% / 80% quantiles of wall time; on the CPU also the median process CPU
    time (all threads): on a shared machine, wall time far above CPU time / threads means waiting for a core."""

    median_ms: float
    q20_ms: float
    q80_ms: float
    cpu_ms: float = float("nan")


def quantiles_ms(seconds: Sequence[float]) -> Timing:
    """Median and 20/80% quantiles (linear interpolation) of per-call times in seconds, as milliseconds."""
    if not seconds:
        raise ValueError("need at least one timed run")
    ms = sorted(1000.0 * s for s in seconds)
    if len(ms) == 1:
        return Timing(ms[0], ms[0], ms[0])
    cuts = statistics.quantiles(ms, n=10, method="inclusive")  # deciles: cuts[1] = 20%, cuts[7] = 80%
    return Timing(statistics.median(ms), cuts[1], cuts[7])


def time_cpu(fn: Callable[[], object], repeats: int, warmup: int | None = None) -> Timing:
    """Warm-up (`warmup` untimed calls, or `settle` when None), then the median and quantiles of `repeats` timed
    calls."""
    if repeats < 1 or (warmup is not None and warmup < 0):
        raise ValueError(f"repeats must be >= 1 and warmup >= 0 or None, got repeats={repeats}, warmup={warmup}")
    if warmup is None:
        settle(fn)
    for _ in range(warmup or 0):
        fn()
    seconds, cpu_seconds = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    wall = quantiles_ms(seconds)
    return Timing(wall.median_ms, wall.q20_ms, wall.q80_ms, 1000.0 * statistics.median(cpu_seconds))


def settle(fn: Callable[[], object], max_calls: int = 8, speedup: float = 0.8) -> int:
    """Call `fn` until a call is no longer 20% faster than the one before (at most `max_calls`); returns the
    number of calls. The CPU backends' first calls are slow (buffers first touched, allocator caches filled): on
    the 2-core CPU the first CapsuleLinear B=128 forward+backward calls took over 10x the settled time."""
    previous = math.inf
    for calls in range(1, max_calls + 1):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        if elapsed >= speedup * previous:
            return calls
        previous = elapsed
    return max_calls


def time_cuda(fn: Callable[[], object], grad_to_none: Sequence[Tensor] | None = None) -> Timing:
    """triton.testing.do_bench: median and 20/80% quantiles in milliseconds."""
    # triton is optional (absent off Linux) and only a GPU times with it: imported here, where it is needed
    from triton.testing import do_bench

    median, q20, q80 = do_bench(fn, grad_to_none=grad_to_none, quantiles=list(QUANTILES))
    return Timing(float(median), float(q20), float(q80))


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> float:
    """Peak bytes allocated during one call of `fn` above what was allocated before it (NaN if unknown)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    if device.type == "cpu":
        return cpu_peak_memory_bytes(fn)
    return float("nan")


def cpu_peak_memory_bytes(fn: Callable[[], object]) -> float:
    """Replay the profiler's record of CPU tensor allocations (CREATE) and frees (DESTROY) of one call in time
    order and return the highest running total; tensors that existed before the call start the total at 0.
    What the profiler prints on the way (to file descriptors 1 and 2, from C++) is discarded."""
    try:
        with silenced_output():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                         with_stack=True) as prof:
                fn()
            timeline = MemoryProfile(prof.profiler.kineto_results).timeline
    except Exception:  # a private profiler API: any failure means "unknown", not a wrong number
        return float("nan")
    live = peak = 0
    for _, action, (key, _), size in sorted(timeline, key=lambda event: event[0]):
        if key.device.type != "cpu":
            continue
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return float(peak)


@contextlib.contextmanager
def silenced_output() -> Iterator[None]:
    """Inside the block, file descriptors 1 and 2 (stdout, stderr) point at /dev/null: the torch profiler's C++ side
    (kineto) writes lines such as "USDT: ... SyncActivityProfilerHandler.cpp:52] profiler_start" straight to fd 2,
    past sys.stderr. Where the descriptors cannot be duplicated the block runs unsilenced."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    saved: list[int] = []
    try:
        for fd in (1, 2):
            saved.append(os.dup(fd))
    except OSError:  # a closed descriptor (a daemon): nothing to silence
        for fd in saved:
            os.close(fd)
        saved = []
    if not saved:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                for stream in (sys.stdout, sys.stderr):
                    if stream is not None:
                        stream.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


@cache
def copy_bandwidth_gbps(device: torch.device) -> float:
    """Measured device copy bandwidth in GB/s: 2 * bytes / time of copying a 1 GiB tensor (NaN on CPU)."""
    if device.type != "cuda":
        return float("nan")
    source = torch.empty(2**28, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    ms = time_cuda(functools.partial(target.copy_, source)).median_ms
    nbytes = 2 * source.numel() * source.element_size()
    del source, target
    torch.cuda.empty_cache()
    return nbytes / (ms * 1e-3) / 1e9


REFERENCE_GEMM = 1024  # n of the n x n x n float32 matrix product timed as the machine's speed of the moment


def reference_gemm_ms(device: torch.device, repeats: int = 7) -> float:
    """Median ms of a fixed float32 1024 x 1024 x 1024 matrix product (2.1 GFLOP) on `device`: recorded with
    every row, so that rows timed while a shared machine (or its host) was busy can be told apart and compared."""
    a = torch.randn(REFERENCE_GEMM, REFERENCE_GEMM, device=device)
    b = torch.randn_like(a)
    if device.type == "cuda":
        return time_cuda(lambda: a @ b).median_ms
    return time_cpu(lambda: a @ b, repeats=repeats, warmup=2).median_ms
