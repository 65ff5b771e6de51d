"""Reports of the throughput CSV: pivoted markdown tables, the CPU targets, and a plot of time against batch size."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.common.atomic import atomic_write  # noqa: E402
from experiments.throughput.cases import BASELINE, CASES, MODES, TARGET_SPEEDUP, TARGETS, Target  # noqa: E402

PROVIDER_ORDER = ("torch", "torch-compile", "triton", BASELINE)
PROVIDER_STYLES = {"torch": ("-", "o"), "torch-compile": ("--", "s"), "triton": (":", "^"),
                   BASELINE: ("-.", "x")}  # line, marker
INDEX = ["case", "routing", "dtype", "iterations", "x_value"]


def format_ms(ms: float) -> str:
    """Three significant digits, without exponents for times of 100 ms and more."""
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def pivot_markdown(rows: pd.DataFrame) -> str:
    """Median ms per (case, routing, dtype, iterations, batch) row and (provider, mode) column; skipped cells
    point to numbered notes under the table."""
    if rows.empty:
        return "(no rows)"
    notes: dict[str, int] = {}

    def cell(row: pd.Series) -> str:
        if row["status"] == "ok":
            return format_ms(float(row["median"]))
        number = notes.setdefault(str(row["note"]), len(notes) + 1)
        return f"skipped [{number}]"

    frame = rows.assign(cell=rows.apply(cell, axis=1))
    table = frame.pivot_table(index=INDEX, columns=["provider", "mode"], values="cell", aggfunc="first")
    present = set(table.columns)
    providers = [p for p in PROVIDER_ORDER if any(c[0] == p for c in present)]
    providers += sorted({c[0] for c in present} - set(providers))
    columns = [(p, m) for p in providers for m in MODES if (p, m) in present]
    table = table[columns].fillna("")
    table.columns = [f"{p} {m}" for p, m in columns]
    case_order = {name: n for n, name in enumerate(CASES)}
    table = table.reset_index().sort_values(
        INDEX, key=lambda col: col.map(case_order).fillna(len(case_order)) if col.name == "case" else col,
        kind="stable").rename(columns={"x_value": "batch"})
    text = table.to_markdown(index=False)
    if notes:
        text += "\n\n" + "\n".join(f"[{n}] {note}" for note, n in notes.items())
    return text


def _target_rows(rows: pd.DataFrame, target: Target, provider: str) -> pd.DataFrame:
    """The timed forward + backward rows of `provider` at the target's setting."""
    return rows[(rows["case"] == target.case) & (rows["routing"] == target.routing)
                & (rows["x_value"] == target.batch) & (rows["provider"] == provider)
                & (rows["mode"] == "forward+backward") & (rows["iterations"] == target.iterations)
                & (rows["dtype"] == target.dtype) & (rows["status"] == "ok")]


def targets_markdown(rows: pd.DataFrame) -> str:
    """The CPU targets: our PyTorch backend's forward + backward against the naive baseline timed in the same run
    (the same sweep: the same timestamp), 10x faster; the public implementations' times (another machine) are
    context. A target without a same-run baseline is not judged."""
    lines = []
    for target in TARGETS:
        ours = _target_rows(rows, target, "torch")
        if ours.empty:
            continue
        row = ours.iloc[-1]
        ours_ms = float(row["median"])
        naive = _target_rows(rows, target, BASELINE)
        naive = naive[naive["timestamp"] == row["timestamp"]]
        if not naive.empty:
            naive_ms = float(naive["median"].iloc[-1])
            ratio = naive_ms / ours_ms
            # rounded down, so that a ratio just short of the target never prints as the target itself
            speedup = f"{math.floor(ratio * 10) / 10:.1f}x"
            baseline, met = format_ms(naive_ms), "yes" if ratio >= TARGET_SPEEDUP else "no"
        else:
            baseline, speedup, met = "not timed", "", "n/a"
        lines.append({
            "target": target.what,
            "ours, torch (ms)": f"{format_ms(ours_ms)} ({format_ms(float(row['q20']))}-{format_ms(float(row['q80']))})",
            f"{BASELINE}, same run (ms)": baseline, "speed-up": speedup, f"{TARGET_SPEEDUP:.0f}x met": met,
            "public, other machine (ms)": f"{target.public} {target.public_ms:.0f} "
                                          f"({target.public_ms / ours_ms:.1f}x)"})
    return pd.DataFrame(lines).to_markdown(index=False) if lines else ""


TARGETS_CAPTION = (f"Targets: forward + backward, PyTorch backend, {TARGET_SPEEDUP:.0f}x faster than the same layer "
                   f"written the public way ({BASELINE}: naive.py) timed in the same run; the public "
                   "implementations' times on another 2-core CPU (REFERENCE.md) are context.")


def results_markdown(table: pd.DataFrame) -> str:
    """The whole CSV as markdown: per device, its provenance, the pivoted medians and (on CPUs) the targets."""
    parts = ["# Throughput", "",
             "Generated by `python -m experiments.throughput` from `throughput.csv`; do not edit. Cells: median ms "
             "per call (20/80% quantiles, samples/s, peak memory and GB/s are in the CSV). The NaN/Inf scan of the "
             "routing inputs is off while timing."]
    for device, rows in table.groupby("device", sort=True):
        stamp = rows.sort_values("timestamp").iloc[-1]
        provenance = (f"torch {stamp['torch']}, triton {stamp['triton']}, commit {stamp['commit']}, "
                      f"latest row {stamp['timestamp']}")
        load = rows["cpu_load"].dropna() if "cpu_load" in rows else pd.Series(dtype=float)
        if not load.empty:
            provenance += f"; 1-minute load average while timing {load.min():.1f} to {load.max():.1f}"
        reference = rows["ref_gemm_ms"].dropna() if "ref_gemm_ms" in rows else pd.Series(dtype=float)
        if not reference.empty:
            provenance += (f"; reference 1024^3 float32 matrix product {reference.min():.3g} to "
                           f"{reference.max():.3g} ms (the machine's speed at the time)")
        parts += ["", f"## {device}", "", provenance, "", pivot_markdown(rows)]
        if "device_type" in rows and (rows["device_type"] == "cpu").all():
            targets = targets_markdown(rows)
            if targets:
                parts += ["", TARGETS_CAPTION, "", targets]
    return "\n".join(parts) + "\n"


def save_plot(rows: pd.DataFrame, path: Path) -> bool:
    """Median time (20-80% band) against batch size, log-log: one panel per case (rows) and mode (columns), one
    line per routing and provider (and dtype / iterations when several). Returns False (no file) when nothing
    was timed."""
    ok = rows[rows["status"] == "ok"]
    if ok.empty:
        return False
    cases = [c for c in CASES if c in set(ok["case"])] + sorted(set(ok["case"]) - set(CASES))
    modes = [m for m in MODES if m in set(ok["mode"])]
    several = len(ok[["dtype", "iterations"]].drop_duplicates()) > 1
    colours = {name: f"C{n}" for n, name in enumerate(dict.fromkeys(ok["routing"]))}  # one colour per routing
    fig, axes = plt.subplots(len(cases), len(modes), figsize=(4.6 * len(modes), 3.4 * len(cases)), squeeze=False)
    for r, case in enumerate(cases):
        for c, mode in enumerate(modes):
            ax = axes[r][c]
            panel = ok[(ok["case"] == case) & (ok["mode"] == mode)]
            for (name, provider, dtype, iterations), line in panel.groupby(["routing", "provider", "dtype",
                                                                             "iterations"]):
                line = line.sort_values("x_value")
                label = f"{name}, {provider}" + (f", {dtype}, T={iterations}" if several else "")
                linestyle, marker = PROVIDER_STYLES.get(provider, ("-.", "x"))
                ax.plot(line["x_value"], line["median"], color=colours[name], linestyle=linestyle, marker=marker,
                        label=label)
                ax.fill_between(line["x_value"], line["q20"], line["q80"], color=colours[name], alpha=0.15)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{case}: {mode}", fontsize=9)
            ax.set_xlabel("batch size")
            ax.set_ylabel("ms per call (median, 20-80%)")
            ax.grid(True, which="both", alpha=0.3)
            if not panel.empty:
                ax.legend(fontsize=7)
    fig.suptitle(str(ok["device"].iloc[0]), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    with atomic_write(path, binary=True) as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return True
