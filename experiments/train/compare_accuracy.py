"""Accuracy of each routing algorithm in the same architecture, under one training budget.

    capsule-compare-accuracy --model compact --time-budget-min 20              # dynamic, then EM, 20 min each
    capsule-compare-accuracy --model capsnet --routings dynamic --epochs 30   # one pair, 30 epochs
    capsule-compare-accuracy --papers --epochs 50                              # + the papers' own pairs

Trains `--model` with each routing of `--routings` (default: every registered one) in turn on `--dataset`, and with
`--papers` also the papers' pairs (CapsNet + dynamic routing on MNIST, matrix capsules + EM routing on smallNORB),
each with its model family's defaults plus the options given (any `capsule-train` option). Writes the comparison
table (routing, model, dataset, parameters, best and final test accuracy, epochs, times, samples/s, device) to
<out-dir>/comparison.csv, prints it as markdown, and upserts its rows into experiments/results/accuracy.csv (key:
model, model_options, routing, dataset, device, budget, seed), from which experiments/results/accuracy.md is
regenerated.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

import routing
from experiments.common import provenance
from experiments.common.atomic import write_text_atomic
from experiments.common.cli import one_line
from experiments.common.folder_lock import FolderInUseError, locked_folder
from experiments.common.outputs import check_output_dir, check_output_file
from experiments.common.tables import RESULTS_DIR, read_csv, to_markdown, upsert_csv, write_csv_atomic
from experiments.train.config import TrainConfig, add_arguments, build_config, overrides_from_args
from experiments.train.resume import check_resume
from experiments.train.run import (
    CHECKPOINT,
    CONFIG,
    check_before_work,
    output_dir,
    raise_keyboard_interrupt,
    train,
)

# (model, routing, dataset) the papers trained.
PAPER_PAIRS = (("capsnet", "dynamic", "mnist"), ("matrix-capsnet", "em", "smallnorb"))
RESULTS_CSV = RESULTS_DIR / "accuracy.csv"
# A rerun of the same experiment replaces its row; a different budget, width or seed adds one.
RESULTS_KEY = ("model", "model_options", "routing", "dataset", "device", "budget", "seed")
# Columns of the README's and accuracy.md's table, in order.
SUMMARY_COLUMNS = ["model", "model_options", "routing", "dataset", "params", "budget", "epochs", "test_accuracy",
                   "best_test_accuracy",
                   "train_time_s", "wall_time_s", "samples_per_s", "device", "load_avg_1m", "git_commit"]
_SKIP = ("model", "routing", "dataset", "out_dir", "resume")


def budget(config: TrainConfig) -> str:
    """The run's training budget in words: '20 min (<= 15 epochs)' or '15 epochs'."""
    if config.time_budget_min is not None:
        return f"{config.time_budget_min:g} min (<= {config.epochs} epochs)"
    return f"{config.epochs} epochs"


def summarize(config: TrainConfig, table: pd.DataFrame, load_before: float, load_after: float) -> dict:
    """One comparison row from a run's per-epoch table."""
    last = table.iloc[-1]
    samples = float((table["samples_per_s"] * table["epoch_time_s"]).sum())
    return {
        "model": config.model, "routing": config.routing, "dataset": config.dataset, "params": int(last["params"]),
        "budget": budget(config), "epochs": round(float(last["epochs_trained"]), 3),
        "test_accuracy": float(last["test_accuracy"]), "best_test_accuracy": float(table["test_accuracy"].max()),
        "best_epoch": int(table.loc[table["test_accuracy"].idxmax(), "epoch"]),
        "train_time_s": round(float(last["train_time_s"]), 1), "wall_time_s": round(float(last["wall_time_s"]), 1),
        "samples_per_s": round(samples / float(last["train_time_s"]), 1), "device": last["device"],
        "world_size": int(last["world_size"]), "load_avg_1m": f"{load_before:.1f} -> {load_after:.1f}",
        "optimizer": config.optimizer, "lr": config.lr, "schedule": config.schedule, "batch_size": config.batch_size,
        "loss": config.loss, "reconstruction_weight": config.reconstruction_weight,
        "routing_iterations": config.routing_iterations, "seed": config.seed,
        "model_options": config.flat()["model_options"], "git_commit": last["git_commit"],
        "torch": provenance.versions()["torch"], "timestamp": provenance.timestamp(),
    }


def planned_runs(model: str, routings: list[str], dataset: str, papers: bool) -> list[tuple[str, str, str]]:
    runs = [(model, name, dataset) for name in routings]
    if papers:
        runs += [pair for pair in PAPER_PAIRS if pair not in runs]
    return runs


def compare(runs: list[tuple[str, str, str]], overrides: dict, out_dir: Path, results: Path | None,
            resume: bool = False) -> pd.DataFrame:
    """Train every (model, routing, dataset) of `runs` in turn; returns the comparison table.

    Each finished run's row is written to <out_dir>/comparison.csv and upserted into `results` (skipped when
    None) at once, so an interruption keeps the rows of the runs already done. With `resume`, a run whose folder
    holds a checkpoint continues from it (a finished run is not trained again); without it, such a folder is an
    error before any run starts (a new run would overwrite it). Every configuration, output path and resumed run's
    settings are checked before the first run; <out_dir> is locked while the comparison runs.
    """
    configs = [build_config(model=m, routing=r, dataset=d, out_dir=str(out_dir / f"{m}-{r}-{d}"), **overrides)
               for m, r, d in runs]
    check_output_dir(out_dir, "--out-dir")
    if results is not None:
        check_output_file(results, "--results")
        if results.is_file() and results.stat().st_size:
            read_results(results, key=RESULTS_KEY)  # rows are upserted into it: it must be a results table
    for config in configs:  # every configuration is checked before the first run starts
        config.resume = resume and (output_dir(config) / CHECKPOINT).exists()
        check_before_work(config)
        if config.resume:
            check_resume(config, output_dir(config) / CHECKPOINT, output_dir(config) / CONFIG)
    with locked_folder(out_dir):  # comparison.csv is this comparison's alone
        return _compare(configs, out_dir, results)


def _compare(configs: list[TrainConfig], out_dir: Path, results: Path | None) -> pd.DataFrame:
    rows = []
    for config in configs:
        load_before = os.getloadavg()[0]
        table = train(config)
        rows.append(summarize(config, table, load_before, os.getloadavg()[0]))
        write_csv_atomic(pd.DataFrame(rows), out_dir / "comparison.csv")
        if results is not None:
            with locked(results):
                upsert_csv(results, rows[-1:], key=RESULTS_KEY)
                write_results_markdown(results)
    return pd.DataFrame(rows)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder of `path` (no lock file left behind): comparisons running side by side
    upsert one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # closing releases the lock


def results_markdown(table: pd.DataFrame) -> str:
    """The committed results as a markdown table (accuracies in percent)."""
    shown = table[[c for c in SUMMARY_COLUMNS if c in table.columns]].copy()
    for column in ("test_accuracy", "best_test_accuracy"):
        shown[column] = (100 * shown[column]).map("{:.2f}%".format)
    return to_markdown(shown)


def write_results_markdown(results: Path) -> None:
    """Regenerate accuracy.md beside `results` from the CSV."""
    text = ("# Test accuracy by routing\n\nGenerated by `capsule-compare-accuracy` from `accuracy.csv` (test_accuracy: "
            "last epoch; best_test_accuracy: best epoch; times in seconds; load_avg_1m: the machine's 1-minute "
            "load average before -> after the run).\n\n" + results_markdown(read_csv(results)) + "\n")
    write_text_atomic(results.with_suffix(".md"), text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="compact", help="architecture trained with every routing (compact)")
    parser.add_argument("--routings", nargs="+", default=None, help="default: every registered routing")
    parser.add_argument("--dataset", default="mnist", help="dataset of --model's runs (mnist)")
    parser.add_argument("--papers", action="store_true", help="also train the papers' own model/routing pairs")
    parser.add_argument("--out-dir", default="runs/compare", help="one run folder per pair under it (runs/compare)")
    parser.add_argument("--results", default=str(RESULTS_CSV),
                        help="CSV to upsert the rows into (experiments/results/accuracy.csv)")
    parser.add_argument("--no-results", action="store_true", help="do not touch the results CSV")
    parser.add_argument("--resume", action="store_true", help="continue runs that have a checkpoint")
    parser.add_argument("--print-results", action="store_true",
                        help="print the results CSV as the README's markdown table and exit (trains nothing)")
    add_arguments(parser, skip=_SKIP)
    return parser.parse_args(argv)


def read_results(path: Path, key: tuple[str, ...] = ()) -> pd.DataFrame:
    """The results CSV at `path`; ValueError naming it when it is missing, unreadable or another kind of table
    (one without the accuracy columns, or the `key` columns rows are upserted by)."""
    if not path.is_file():
        raise ValueError(f"no results table at {path}: run a comparison first, or point --results at the CSV one "
                         f"wrote")
    try:
        table = read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ValueError(f"{path} is not a readable CSV ({one_line(error)})") from None
    needed = list(dict.fromkeys(["model", "routing", "test_accuracy", "best_test_accuracy", *key]))
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"{path} is not a results table written by capsule-compare-accuracy (it lacks the "
                         f"column(s) {', '.join(missing)})")
    for column in ("test_accuracy", "best_test_accuracy"):
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise ValueError(f"{path}: column {column} must hold accuracies (numbers), got {table[column].dtype}")
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_results:
        try:
            print(results_markdown(read_results(Path(args.results))))
        except ValueError as error:
            print(f"capsule-compare-accuracy: error: {one_line(error)}", file=sys.stderr)
            return 2
        return 0
    routings = args.routings or routing.available()
    runs = planned_runs(args.model, routings, args.dataset, args.papers)
    results = None if args.no_results else Path(args.results)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        table = compare(runs, overrides_from_args(args, skip=_SKIP), Path(args.out_dir), results, args.resume)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished runs are in {args.out_dir}/comparison.csv; rerun with --resume to continue",
              file=sys.stderr)
        return 130
    except (TypeError, ValueError, KeyError, FileNotFoundError, FolderInUseError) as error:
        print(f"capsule-compare-accuracy: error: {one_line(error)}", file=sys.stderr)
        return 2
    print(to_markdown(table[[c for c in SUMMARY_COLUMNS if c in table.columns]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
