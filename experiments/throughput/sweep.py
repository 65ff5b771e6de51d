"""Routing throughput: every case x routing x provider x mode x batch size, upserted into one CSV.

    python -m experiments.throughput                      # the default comparison (minutes on a 2-core CPU)
    capsule-throughput --cases routing --routings dynamic --providers torch torch-compile --batch-sizes 8 32
    capsule-throughput --dtypes float32 bfloat16 --iterations 1 3 --repeats 20 --out /tmp/t.csv --plot /tmp/t.png

Cases (cases.py): the routing step alone on votes [B, 1152, 10, 16], the CapsuleLinear layer 1152 x 8D -> 10 x 16D,
and the ConvCaps layer 6x6 -> 4x4, K=3, 16 -> 16 types; each for every routing asked.
Providers: "torch" (the PyTorch backend, eager), "torch-compile" (the same module under torch.compile; the first
calls, which compile, are timed apart from the loop as first_call_s), "triton" (the Triton backend; CUDA only:
elsewhere a skipped row says so). Modes: forward, backward (of a retained graph), forward+backward.
The NaN/Inf scan of routing inputs is off while timing (routing.finite_checks(False)).
Baseline: where a CPU target's setting is in the sweep (cases.TARGETS: capsule-linear + dynamic at batch 128,
conv-caps + em at batch 32; forward+backward, 3 iterations, float32), the same layer written the public way
(naive.py) is timed too, in the same way, as provider "naive-torch"
(forward+backward only; --no-baseline leaves it out). The CPU targets' table compares against it.

Each row: what was measured (case, routing, provider, mode, dtype, iterations, x_name/x_value = batch size),
median and 20/80% quantiles in ms, samples/s, peak memory, GB/s against the bytes the routing must move and its
fraction of the device's copy bandwidth (GPU only), and where it came from (device, versions, commit, time).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch._functorch import config as functorch_config

import routing
from experiments.common.atomic import write_text_atomic
from experiments.common.cli import usage_error
from experiments.common.outputs import check_output_file
from experiments.common.provenance import device_name, git_commit, timestamp, versions
from experiments.common.tables import RESULTS_DIR, read_csv, upsert_csv
from experiments.throughput.cases import BASELINE, CASES, MODES, TARGETS, Case, Workload, bytes_moved, get_case
from experiments.throughput.report import TARGETS_CAPTION, pivot_markdown, results_markdown, save_plot, targets_markdown
from experiments.throughput.timing import (
    copy_bandwidth_gbps,
    peak_memory_bytes,
    reference_gemm_ms,
    time_cpu,
    time_cuda,
)

PROVIDERS = ("torch", "torch-compile", "triton")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
KEY = ["case", "routing", "provider", "mode", "dtype", "iterations", "x_name", "x_value", "device"]
COLUMNS = [*KEY[:-1], "shape", "status", "note", "median", "q20", "q80", "unit", "samples_per_s", "peak_mem_mb",
           "gb_per_s", "copy_bw_fraction", "first_call_s", "repeats", "cpu_ms", "cpu_load", "ref_gemm_ms", "device",
           "device_type", "torch", "triton", "commit", "timestamp"]
DEFAULT_CSV = RESULTS_DIR / "throughput.csv"


@dataclass
class Sweep:
    """What to measure. batch_sizes None: each case's own default list (cases.CASES)."""

    cases: Sequence[str] = tuple(CASES)
    routings: Sequence[str] = field(default_factory=lambda: tuple(routing.available()))  # every registered one
    providers: Sequence[str] | None = None  # None: default_providers(device)
    # the default leaves out "backward" (one retained graph's backward), which forward and forward+backward
    # bracket, to keep the default run within a few minutes on a 2-core CPU; --modes backward adds it
    modes: Sequence[str] = ("forward", "forward+backward")
    batch_sizes: Sequence[int] | None = None
    iterations: Sequence[int] = (3,)
    dtypes: Sequence[str] = ("float32",)
    repeats: int = 3  # timed calls per row on the CPU (on a GPU do_bench decides)
    warmup: int | None = None  # untimed calls before them; None: until a call is no longer 20% faster
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    threads: int | None = None  # torch.set_num_threads for the sweep (None: torch's default); part of the device name
    baseline: bool = True  # time the naive baseline (provider naive-torch) at the CPU targets' settings in the sweep

    def check(self) -> None:
        """Unknown names raise KeyError (listing what exists); bad numbers raise ValueError."""
        for case in self.cases:
            get_case(case)
        for name in self.routings:
            routing.backends(name)  # UnknownRoutingError (a KeyError) listing the registered ones
        for provider in self.providers or ():
            if provider not in PROVIDERS:
                raise KeyError(f"unknown provider {provider!r}; available: {', '.join(PROVIDERS)}")
        for mode in self.modes:
            if mode not in MODES:
                raise KeyError(f"unknown mode {mode!r}; available: {', '.join(MODES)}")
        for dtype in self.dtypes:
            if dtype not in DTYPES:
                raise KeyError(f"unknown dtype {dtype!r}; available: {', '.join(DTYPES)}")
        for label, values in (("batch_sizes (--batch-sizes)", self.batch_sizes or (1,)),
                              ("iterations (--iterations)", self.iterations)):
            if not values or any(not _is_int(v) or v < 1 for v in values):
                raise ValueError(f"{label} must be positive integers, got {list(values)}")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise ValueError(f"threads (--threads) must be an integer >= 1, got {self.threads!r}")
        if not _is_int(self.repeats) or self.repeats < 1:
            raise ValueError(f"repeats (--repeats) must be an integer >= 1, got {self.repeats!r}")
        if self.warmup is not None and (not _is_int(self.warmup) or self.warmup < 0):
            raise ValueError(f"warmup (--warmup) must be an integer >= 0, got {self.warmup!r}")
        if not (self.cases and self.routings and self.modes and self.dtypes):
            raise ValueError("cases, routings, modes and dtypes must each name at least one value")
        check_device(self.device)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_device(name: str) -> None:
    """ValueError unless `name` is a CPU or an available CUDA device."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device (--device) must be cpu, cuda or cuda:<index>, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"device (--device) must be cpu, cuda or cuda:<index>, got {name!r}")


def default_providers(device: torch.device) -> tuple[str, ...]:
    """Everything on a GPU. On a CPU torch and triton (which records "needs CUDA"): torch.compile is left out of
    the default because compiling each shape's forward and backward takes longer on the 2-core CPU than the rest of
    the default sweep (first_call_s in the CSV); ask for it with --providers torch torch-compile."""
    return PROVIDERS if device.type == "cuda" else ("torch", "triton")


def unavailable_reason(provider: str, routing_name: str, device: torch.device) -> str | None:
    """Why `provider` cannot run `routing_name` on `device` (the row is skipped with this note), or None."""
    if provider == "triton":
        if device.type != "cuda":
            return "needs CUDA"
        if "triton" not in routing.backends(routing_name):
            return f"no triton backend registered for routing {routing_name!r}"
    return None


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def cpu_load() -> float:
    """The 1-minute load average after a row was timed: on a shared machine, how busy it was (NaN if unknown)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_settings(provider: str) -> contextlib.AbstractContextManager:
    """torch.compile without donated buffers: they forbid retain_graph=True, which the backward mode needs to
    re-run the backward of one graph (they save memory in the backward, not time)."""
    if provider != "torch-compile":
        return contextlib.nullcontext()
    return functorch_config.patch(donated_buffer=False)


class Runner:
    """The provider's callable for a workload, with the upstream gradients and first-call times (which include
    compilation under torch.compile) measured once, before any mode is timed."""

    def __init__(self, workload: Workload, provider: str, device: torch.device):
        self.workload = workload
        self.device = device
        module = workload.module
        if provider == "torch-compile":
            torch._dynamo.reset()  # every shape compiles from scratch: first_call_s is its compile time
            module = torch.compile(module, dynamic=False)
        self.module = module
        start = time.perf_counter()
        outputs = self.forward()
        synchronize(device)
        self.first_forward_s = time.perf_counter() - start
        self.grads = tuple(torch.randn_like(o) for o in outputs)
        start = time.perf_counter()
        torch.autograd.grad(outputs, workload.leaves, self.grads)
        synchronize(device)
        self.first_backward_s = time.perf_counter() - start

    def forward(self) -> tuple[torch.Tensor, ...]:
        """(poses, activations) of one call."""
        out = self.module(*self.workload.inputs)
        return tuple(out[:2])

    def timed(self, mode: str) -> tuple[Callable[[], object], float]:
        """The callable timed for `mode` and the first-call seconds that belong to it."""
        leaves, grads = self.workload.leaves, self.grads
        if mode == "forward":
            return self.forward, self.first_forward_s
        if mode == "backward":
            outputs = self.forward()
            return (lambda: torch.autograd.grad(outputs, leaves, grads, retain_graph=True)), self.first_backward_s
        if mode == "forward+backward":
            return (lambda: torch.autograd.grad(self.forward(), leaves, grads)), (
                self.first_forward_s + self.first_backward_s)
        raise KeyError(f"unknown mode {mode!r}; available: {', '.join(MODES)}")


def measure(runner: Runner, mode: str, sweep: Sweep, iterations: int, batch: int) -> dict:
    """The timing columns of one row."""
    fn, first_call_s = runner.timed(mode)
    device = runner.device
    if device.type == "cuda":
        timing = time_cuda(fn)
    else:
        timing = time_cpu(fn, repeats=sweep.repeats, warmup=sweep.warmup)
    peak = peak_memory_bytes(fn, device)
    median_s = timing.median_ms * 1e-3
    gbps = math.nan
    if device.type == "cuda":
        gbps = bytes_moved(runner.workload.votes_bytes(), iterations, mode) / median_s / 1e9
    return {
        "median": timing.median_ms, "q20": timing.q20_ms, "q80": timing.q80_ms, "unit": "ms",
        "samples_per_s": batch / median_s, "peak_mem_mb": peak / 2**20, "gb_per_s": gbps,
        "copy_bw_fraction": gbps / copy_bandwidth_gbps(device) if device.type == "cuda" else math.nan,
        "first_call_s": first_call_s, "cpu_ms": timing.cpu_ms, "cpu_load": cpu_load(),
    }


def run_sweep(sweep: Sweep, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Measure every combination of `sweep`; one row per (case, routing, provider, mode, dtype, iterations,
    batch). Unavailable providers, cases that cannot be built and failed compilations give skipped rows."""
    sweep.check()
    with cpu_threads(sweep.threads):
        return _run(sweep, log)


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """torch.set_num_threads(threads) inside the block (nothing for None), restored after it."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run(sweep: Sweep, log: Callable[[str], None]) -> pd.DataFrame:
    device = torch.device(sweep.device)
    providers = tuple(sweep.providers or default_providers(device))
    provenance = {"device": device_name(device), "device_type": device.type, **versions(), "commit": git_commit(),
                  "timestamp": timestamp(), "ref_gemm_ms": reference_gemm_ms(device)}
    rows = []
    torch.manual_seed(0)
    with routing.finite_checks(False):
        for case_name in sweep.cases:
            case = get_case(case_name)
            for name in sweep.routings:
                for iterations in sweep.iterations:
                    for dtype in sweep.dtypes:
                        for batch in sweep.batch_sizes or case.batch_sizes:
                            for provider in providers:
                                label = dict(case=case_name, routing=name, provider=provider, dtype=dtype,
                                             iterations=iterations, x_name="batch", x_value=batch)
                                log(f"{case_name} {name} T={iterations} {dtype} B={batch} {provider}")
                                with compile_settings(provider):
                                    results = _measure_provider(case.build, sweep, device, label, sweep.modes)
                                rows += [{**label, **result, **provenance} for result in results]
                            if times_baseline(sweep, providers, case, name, iterations, dtype, batch):
                                label = dict(case=case_name, routing=name, provider=BASELINE, dtype=dtype,
                                             iterations=iterations, x_name="batch", x_value=batch)
                                log(f"{case_name} {name} T={iterations} {dtype} B={batch} {BASELINE} (baseline)")
                                results = _measure_provider(case.baselines[name], sweep, device, label,
                                                            ("forward+backward",))
                                rows += [{**label, **result, **provenance} for result in results]
    return pd.DataFrame(rows, columns=COLUMNS)


def times_baseline(sweep: Sweep, providers: Sequence[str], case: Case, name: str, iterations: int, dtype: str,
                   batch: int) -> bool:
    """Whether this setting is a CPU target's (forward+backward of our torch provider in the sweep) whose case has
    a naive form: then the naive baseline is timed beside it."""
    return (sweep.baseline and "torch" in providers and "forward+backward" in sweep.modes
            and name in case.baselines
            and any((t.case, t.routing, t.batch, t.iterations, t.dtype) == (case.name, name, batch, iterations, dtype)
                    for t in TARGETS))


def _measure_provider(build, sweep: Sweep, device: torch.device, label: dict, modes: Sequence[str]) -> list[dict]:
    """Rows (without labels) for every mode of `modes` of one provider on one workload."""

    def skipped(note: str) -> list[dict]:
        return [{"mode": mode, "status": "skipped", "note": note} for mode in modes]

    provider, name = label["provider"], label["routing"]
    reason = unavailable_reason(provider, name, device)
    if reason:
        return skipped(reason)
    backend = "triton" if provider == "triton" else "torch"
    try:
        workload = build(name, label["iterations"], backend, label["x_value"], DTYPES[label["dtype"]], device)
    except (ValueError, TypeError, NotImplementedError) as error:
        return skipped(f"cannot build: {first_line(error)}")
    try:
        runner = Runner(workload, provider, device)
    except Exception as error:
        if provider == "torch-compile":
            return skipped(f"compile failed: {first_line(error)}")
        if provider == "triton" and isinstance(error, ValueError):  # backend="triton" refuses, never falls back
            return skipped(f"kernel refused the inputs: {first_line(error)}")
        raise
    return [{"mode": mode, "shape": workload.shape, "status": "ok", "note": "",
             **measure(runner, mode, sweep, label["iterations"], label["x_value"]), "repeats": sweep.repeats}
            for mode in modes]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Sweep()
    parser.add_argument("--cases", nargs="+", default=list(defaults.cases), help=f"of {', '.join(CASES)}")
    parser.add_argument("--routings", nargs="+", default=list(defaults.routings),
                        help=f"registered routing names (default: all of {', '.join(routing.available())})")
    parser.add_argument("--providers", nargs="+", default=None,
                        help=f"of {', '.join(PROVIDERS)} (default: all on CUDA; torch and triton on CPU)")
    parser.add_argument("--modes", nargs="+", default=list(defaults.modes), help=f"of {', '.join(MODES)}")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                        help="default: per case (routing 8 32, capsule-linear 16 128, conv-caps 4 32: the CPU "
                             "targets at the largest)")
    parser.add_argument("--iterations", nargs="+", type=int, default=list(defaults.iterations))
    parser.add_argument("--dtypes", nargs="+", default=list(defaults.dtypes), help=f"of {', '.join(DTYPES)}")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timed calls per row on the CPU")
    parser.add_argument("--warmup", type=int, default=defaults.warmup,
                        help="untimed calls before them on the CPU (default: until a call is no longer 20%% faster "
                             "than the one before, at most 8)")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); recorded in the device name")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help=f"do not time the naive baseline ({BASELINE}) at the CPU targets' settings")
    parser.add_argument("--out", type=Path, default=DEFAULT_CSV, help="CSV the rows are upserted into")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="markdown table of the whole CSV (default: the CSV path with .md)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="plot of this device's rows (default: throughput_<device type>.png beside the CSV)")
    args = parser.parse_args(argv)
    args.sweep = Sweep(cases=args.cases, routings=args.routings, providers=args.providers, modes=args.modes,
                       batch_sizes=args.batch_sizes, iterations=args.iterations, dtypes=args.dtypes,
                       repeats=args.repeats, warmup=args.warmup, device=args.device, threads=args.threads,
                       baseline=args.baseline)
    try:  # every argument and output path is checked before the sweep, which takes minutes
        args.sweep.check()
        check_output_file(args.out, "--out")
        check_results_table(args.out)
        markdown = check_output_file(args.markdown or args.out.with_suffix(".md"), "--markdown")
        if markdown.absolute() == args.out.absolute():
            raise ValueError(f"--markdown {markdown} is the --out CSV itself; give --out a .csv name or another "
                             f"--markdown")
        check_output_file(args.plot or args.out.parent / "throughput.png", "--plot")
    except (KeyError, ValueError) as error:
        usage_error(parser.prog, error)
    return args


def check_results_table(path: Path) -> None:
    """ValueError unless `path` is absent, empty, or a readable CSV with the KEY columns the rows upsert by."""
    try:
        table = read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ValueError(f"--out {path} exists but is not a readable CSV ({error}); choose another --out") from None
    missing = [k for k in KEY if not table.empty and k not in table.columns]
    if missing:
        raise ValueError(f"--out {path} is not a throughput table (it lacks {', '.join(missing)}); choose another "
                         f"--out")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sweep, upsert its rows into --out, print the pivoted table, write the markdown and the plot."""
    args = parse_args(argv)
    sweep = args.sweep
    rows = run_sweep(sweep)
    table = upsert_csv(args.out, rows, key=KEY)
    print(pivot_markdown(rows))
    targets = targets_markdown(rows) if torch.device(sweep.device).type == "cpu" else ""
    if targets:
        print(f"\n{TARGETS_CAPTION}\n\n{targets}")
    markdown = args.markdown or args.out.with_suffix(".md")
    write_text_atomic(markdown, results_markdown(table))
    plot = args.plot or args.out.parent / f"throughput_{torch.device(sweep.device).type}.png"
    drawn = save_plot(table[table["device"] == rows["device"].iloc[0]], plot)
    print(f"\n{len(rows)} rows upserted into {args.out}; markdown {markdown}; "
          f"plot {plot if drawn else '(none: no row was timed)'}")


if __name__ == "__main__":
    main()
