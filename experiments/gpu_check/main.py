"""The GPU check of the Triton kernels, in one go: correctness at real sizes, torch.compile, throughput.

    python -m experiments.gpu_check                      # on a CUDA machine: every section
    python -m experiments.gpu_check --only dynamic
    python -m experiments.gpu_check --only fused         # the dense layer's votes formed inside the kernels
    TRITON_INTERPRET=1 python -m experiments.gpu_check --smoke   # CPU, tiny shapes: checks this script itself

Each section takes a `Report` (report.py) and records correctness checks (compared with the PyTorch backends; a
failure makes the exit status 1) and timings (triton.testing.do_bench on the GPU, median and 20/80% quantiles, L2
flushed between runs; one call after a warm-up under --smoke). Timings are upserted into
experiments/results/gpu_check.csv in the throughput table's format (experiments/throughput: its columns and key,
the GPU's name in `device`) and printed pivoted as that table is, with the speed targets (reported, never
asserted). Sections are listed in `SECTIONS`: another op adds its
module (which imports report.py, never this one) and one entry there. On --smoke nothing is written to the CSV.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import pandas as pd
import torch

from experiments.common.cli import usage_error
from experiments.common.outputs import check_output_file
from experiments.common.provenance import device_name, git_commit, timestamp, versions
from experiments.common.tables import RESULTS_DIR, to_markdown, upsert_csv
from experiments.gpu_check import dynamic, em, fused
from experiments.gpu_check.report import Report
from experiments.throughput.report import pivot_markdown
from kernels.utils import interpreter_enabled

RESULTS_CSV = RESULTS_DIR / "gpu_check.csv"
# Section name -> run(report), in the order they run.
SECTIONS: dict[str, Callable[[Report], None]] = {"dynamic": dynamic.run, "em": em.run, "fused": fused.run}
# The throughput table's upsert key (experiments/throughput/sweep.py).
KEY = ["case", "routing", "provider", "mode", "dtype", "iterations", "x_name", "x_value", "device"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    args = parser.parse_args(argv)
    if args.smoke and not interpreter_enabled():
        usage_error(parser.prog, "--smoke runs the kernels on the CPU: set TRITON_INTERPRET=1")
    if not args.smoke and not torch.cuda.is_available():
        usage_error(parser.prog, "no CUDA device: run this on a GPU machine (or --smoke under TRITON_INTERPRET=1)")
    if not args.smoke:
        try:  # before the checks, which take minutes: their timings go into the results CSV
            check_output_file(RESULTS_CSV, "the results CSV")
        except ValueError as error:
            usage_error(parser.prog, error)
    device = torch.device("cpu" if args.smoke else "cuda")
    report = Report(device, args.smoke)
    print(f"device: {device_name(device)}, commit {git_commit()}, {versions()}", flush=True)
    for name in args.only or list(SECTIONS):
        SECTIONS[name](report)

    if report.timings:
        provenance = {"device": device_name(device), "device_type": device.type, **versions(),
                      "commit": git_commit(), "timestamp": timestamp()}
        rows = pd.DataFrame([{**row, **provenance} for row in report.timings])
        if not args.smoke:
            upsert_csv(RESULTS_CSV, rows, key=KEY)
        print("\n" + pivot_markdown(rows))
    if report.targets:
        print("\n" + to_markdown(pd.DataFrame(report.targets), floatfmt=".3g"))
    failed = [c["check"] for c in report.checks if not c["ok"]]
    print(f"\n{len(report.checks) - len(failed)} of {len(report.checks)} checks passed on {device_name(device)}")
    for what in failed:
        print(f"FAILED: {what}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
