"""Compile every Triton kernel variant for the A100 (sm_80) and the H100 (sm_90) without a GPU, and check that none
spills registers or asks for more shared memory than the target has.

    python -m experiments.kernel_resources            # writes experiments/results/kernel_resources.csv
    python -m experiments.kernel_resources --check    # the CI step: the same compile and checks, writes nothing

The variants come from running each op's launchers with their kernels recorded (kernels/variants.py): every
combination of constexpr values (block sizes, flags), pointer dtypes and warps that the launchers choose for the
declared launches. Triton also specialises ordinary integer arguments at launch (a value of 1 becomes a constant,
so iteration 1 of a loop over launches gets its own binary); such specialisations of one constexpr combination are
compiled once, in their most general form (the fewest constants), unless --every-specialisation is given.
Each variant is lowered by Triton 3.9 and its bundled ptxas; ptxas -v gives the registers per thread, the spill
stores and loads and the stack frame, Triton the shared memory; occupancy.py turns them into resident programs and
warps per SM. Triton's cache is pointed at a fresh temporary folder, so nothing is reused between runs.

Exit status 1 when a variant spills, needs more shared memory per program than the target allows, cannot be
resident at all, or does not compile, or when a kernel (a @triton.jit function named *_kernel under kernels/) has
no captured variant for some target and dtype; the offending rows are printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ARCHS = (80, 90)
DEFAULT_CSV = Path(__file__).resolve().parents[1] / "results" / "kernel_resources.csv"


def _prepare_environment(cache_dir: str) -> None:
    """Before any kernel module is imported: compiled kernels (not the interpreter), a fresh cache, and Triton
    3.9's current floating-point fusion default stated (it warns while the default is about to change)."""
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _group_key(variant) -> tuple:
    return (variant.kernel, variant.arch, variant.pointer_types(), tuple(variant.declared_values().items()),
            variant.options.get("num_warps"))


def select(variants: list, every_specialisation: bool) -> list[tuple[object, int]]:
    """(variant to compile, how many captured specialisations it stands for): all of them, or per constexpr
    combination the one with the fewest launch-time constants."""
    if every_specialisation:
        return [(variant, 1) for variant in variants]
    groups: dict[tuple, list] = {}
    for variant in variants:
        groups.setdefault(_group_key(variant), []).append(variant)
    return [(min(group, key=lambda v: len(v.specialised_values())), len(group)) for group in groups.values()]


def _compile(variant):
    from experiments.kernel_resources.compile import compile_variant

    try:
        return compile_variant(variant)
    except Exception as error:  # reported as a failed row, with the compiler's message
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


def compile_all(chosen: list[tuple[object, int]], jobs: int) -> list:
    """Resources (or an error message) per chosen variant, compiled in `jobs` processes."""
    if jobs == 1:
        return [_compile(variant) for variant, _ in chosen]
    # fork: the workers inherit the environment and the imported (compiled-mode) kernel modules
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("fork")) as pool:
        return list(pool.map(_compile, [variant for variant, _ in chosen], chunksize=4))


def rows(chosen: list[tuple[object, int]], results: list) -> list[dict]:
    """One CSV row per compiled variant, with its occupancy and whether it fails the check."""
    from experiments.kernel_resources.occupancy import TARGETS, occupancy

    table = []
    for (variant, count), result in zip(chosen, results, strict=True):
        target = TARGETS[variant.arch]
        warps = int(variant.options.get("num_warps", 4))
        row = {
            "kernel": variant.kernel.split(":")[1],
            "variant": variant.describe(),
            "dtype": variant.dtype,
            "target": f"sm_{variant.arch}",
            "num_warps": warps,
            "registers": None, "spill_bytes": None, "stack_bytes": None, "shared_bytes": None,
            "programs_per_sm": None, "warps_per_sm": None, "occupancy": None, "limited_by": None,
            "specialisations": count,
            "launch": variant.launches[0],
            "problem": "",
        }
        if isinstance(result, str):
            row["problem"] = f"compile error: {result}"
        else:
            fit = occupancy(target, result.registers, result.shared_bytes, warps)
            row.update(registers=result.registers, spill_bytes=result.spill_bytes, stack_bytes=result.stack_bytes,
                       shared_bytes=result.shared_bytes, programs_per_sm=fit.programs, warps_per_sm=fit.warps,
                       occupancy=round(fit.fraction(target), 4), limited_by=fit.limited_by)
            problems = []
            if result.spill_bytes:
                problems.append(f"spills {result.spill_store_bytes} B stored, {result.spill_load_bytes} B loaded")
            if result.shared_bytes > target.max_shared_per_program:
                problems.append(f"shared memory {result.shared_bytes} B > {target.max_shared_per_program} B "
                                f"per program on {target.name}")
            if fit.programs == 0:
                problems.append(f"cannot be resident on {target.name} ({fit.limited_by})")
            row["problem"] = "; ".join(problems)
        table.append(row)
    return table


def summary(table: list[dict]) -> str:
    """Per kernel and target: variants, the most registers, spills and shared memory, the lowest occupancy."""
    import pandas as pd

    from experiments.common.tables import to_markdown

    frame = pd.DataFrame(table)
    grouped = frame.groupby(["kernel", "target"], sort=False).agg(
        variants=("variant", "size"), max_registers=("registers", "max"), max_spill_bytes=("spill_bytes", "max"),
        max_shared_bytes=("shared_bytes", "max"), min_warps_per_sm=("warps_per_sm", "min"),
        min_occupancy=("occupancy", "min"))
    return to_markdown(grouped.reset_index())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compile and check only; write no CSV")
    parser.add_argument("--out", type=Path, default=None,
                        help="the CSV to write (default experiments/results/kernel_resources.csv; none with --check)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes (default: CPUs)")
    parser.add_argument("--every-specialisation", action="store_true",
                        help="compile every launch-time specialisation, not one per constexpr combination")
    parser.add_argument("--kernel", action="append", default=None,
                        help="only kernels whose name contains this (repeatable)")
    parser.add_argument("--launch", action="append", default=None,
                        help="only the launches whose name contains this (repeatable), e.g. a shape class")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be an integer >= 1, got {args.jobs}")
    out = args.out if args.out is not None else (None if args.check else DEFAULT_CSV)
    if out is not None:
        from experiments.common.outputs import check_output_file

        check_output_file(out, "--out")

    cache_dir = tempfile.mkdtemp(prefix="kernel-resources-triton-cache-")
    try:
        _prepare_environment(cache_dir)
        from kernels.variants import all_launches, capture, uncovered

        start = time.perf_counter()
        launches = all_launches()
        if args.launch:
            launches = [launch for launch in launches if any(part in launch.name for part in args.launch)]
            if not launches:
                parser.error(f"--launch {args.launch}: no launch name contains it")
        variants = capture(launches, ARCHS)
        if args.kernel:
            variants = [v for v in variants if any(part in v.kernel for part in args.kernel)]
            if not variants:
                parser.error(f"--kernel {args.kernel}: no kernel name contains it")
        missing = [] if args.kernel or args.launch else uncovered(variants, ARCHS)
        chosen = select(variants, args.every_specialisation)
        captured = time.perf_counter() - start
        print(f"{len(variants)} variants captured ({captured:.1f} s); compiling {len(chosen)} with {args.jobs} "
              f"process(es)", flush=True)
        results = compile_all(chosen, args.jobs)
        table = rows(chosen, results)
        unreached = "no declared launch reaches it (add one to kernels/<op>/variants.py)"
        for kernel, arch, dtype in missing:
            table.append({"kernel": kernel.split(":")[1], "variant": "", "dtype": dtype, "target": f"sm_{arch}",
                          "launch": "", "problem": unreached})
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    elapsed = time.perf_counter() - start
    print(summary(table))
    if out is not None:
        import pandas as pd

        from experiments.common.tables import write_csv_atomic

        write_csv_atomic(pd.DataFrame(table), out)
        print(f"wrote {out}")
    failures = [row for row in table if row["problem"]]
    print(f"{len(table)} variants compiled for {', '.join(f'sm_{a}' for a in ARCHS)} in {elapsed:.0f} s; "
          f"{len(failures)} fail the check")
    for row in failures:
        print(f"FAIL {row['kernel']} {row['dtype']} {row['target']} {row['variant']}: {row['problem']} "
              f"(from launch: {row['launch']})", file=sys.stderr)
    return 1 if failures else 0
