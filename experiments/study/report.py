"""The study's leaderboard (markdown) and plots, drawn from its long-format table.

Rows of the table: one measured value each, keyed by dataset, model, label (the routing, or a baseline), seed,
budget, evaluation ("clean", "affnist-style", "affnist", "rotation", "fgsm", "bim", "novel", "cost"; on smallNORB's
viewpoint splits "clean" is the familiar views),
x_name / x_value ("epsilon", "angle_deg", or "none" / 0) and metric ("accuracy", "params", ...).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import pandas as pd  # noqa: E402

from experiments.common.atomic import atomic_write  # noqa: E402
from experiments.study.plan import CNN, UNIFORM  # noqa: E402

# Leaderboard columns: (header, evaluation, x_name, x_value or None for the reference epsilon, metric, format)
ACCURACY = "accuracy"


def _values(table: pd.DataFrame, evaluation: str, metric: str, x_name: str = "none",
            x_value: float | None = 0.0) -> pd.DataFrame:
    rows = table[(table["evaluation"] == evaluation) & (table["metric"] == metric) & (table["x_name"] == x_name)]
    if x_value is not None:
        rows = rows[(rows["x_value"].astype(float) - float(x_value)).abs() < 1e-9]
    return rows.groupby("label")["value"].agg(["mean", "std", "count"])


def _cell(stats: pd.DataFrame, label: str, percent: bool, digits: int) -> str:
    if label not in stats.index:
        return ""
    mean, std, count = stats.loc[label, "mean"], stats.loc[label, "std"], stats.loc[label, "count"]
    scale = 100 if percent else 1
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if count > 1 and pd.notna(std) else "")


def leaderboard(table: pd.DataFrame, dataset: str, epsilon: float, angle: float) -> pd.DataFrame:
    """One row per label on `dataset`: accuracies (percent, mean ± std over seeds), attack accuracies at `epsilon`,
    rotation accuracy at `angle` degrees, and cost; sorted by clean accuracy, best first."""
    rows = table[table["dataset"] == dataset]
    if rows.empty:
        return pd.DataFrame()
    columns: list[tuple[str, pd.DataFrame, bool, int]] = [
        ("clean %", _values(rows, "clean", ACCURACY), True, 2),
        ("affNIST-style %", _values(rows, "affnist-style", ACCURACY), True, 2),
        ("affNIST %", _values(rows, "affnist", ACCURACY), True, 2),
        (f"rotated {angle:g}° %", _values(rows, "rotation", ACCURACY, "angle_deg", angle), True, 2),
        (f"FGSM ε={epsilon:g} %", _values(rows, "fgsm", ACCURACY, "epsilon", epsilon), True, 2),
        (f"BIM ε={epsilon:g} %", _values(rows, "bim", ACCURACY, "epsilon", epsilon), True, 2),
        ("novel views %", _values(rows, "novel", ACCURACY), True, 2),
        ("params", _values(rows, "cost", "params"), False, 0),
        ("train samples/s", _values(rows, "cost", "train_samples_per_s"), False, 0),
        ("eval samples/s", _values(rows, "cost", "eval_samples_per_s"), False, 0),
        ("peak MiB", _values(rows, "cost", "peak_memory_mib"), False, 0),
    ]
    columns = [c for c in columns if not c[1].empty]
    labels = list(dict.fromkeys(rows["label"]))
    clean = _values(rows, "clean", ACCURACY)["mean"]
    labels.sort(key=lambda label: -clean.get(label, -1.0))
    out = pd.DataFrame({"routing": [_display(label) for label in labels]})
    for header, stats, percent, digits in columns:
        out[header] = [_cell(stats, label, percent, digits) for label in labels]
    return out


def _display(label: str) -> str:
    return {UNIFORM: "uniform (dynamic, 1 iteration)", CNN: "CNN baseline (no capsules)"}.get(label, label)


def leaderboard_markdown(table: pd.DataFrame, epsilon: float, angle: float, machine: str) -> str:
    """Every dataset's leaderboard under a heading, with the budget and the machine."""
    parts = []
    for dataset in dict.fromkeys(table["dataset"]):
        rows = table[table["dataset"] == dataset]
        budget = ", ".join(sorted(set(rows["budget"].astype(str))))
        seeds = sorted(set(rows["seed"].astype(int)))
        views = " Clean accuracy is on the familiar test views." if (rows["evaluation"] == "novel").any() else ""
        parts.append(f"### {dataset}\n\nModel {', '.join(sorted(set(rows['model'])))}; budget {budget}; "
                     f"seeds {', '.join(map(str, seeds))}; {machine}.{views}\n\n"
                     + leaderboard(table, dataset, epsilon, angle).to_markdown(index=False, disable_numparse=True)
                     + "\n")
    return "\n".join(parts)


def _save(figure: plt.Figure, path: Path) -> None:
    with atomic_write(path, binary=True) as handle:
        figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def plot_accuracy_vs_throughput(table: pd.DataFrame, dataset: str, path: Path) -> bool:
    """Clean accuracy against training samples per second, one labelled point per routing; False if no data."""
    rows = table[table["dataset"] == dataset]
    accuracy = _values(rows, "clean", ACCURACY)["mean"]
    speed = _values(rows, "cost", "train_samples_per_s")["mean"]
    labels = [label for label in accuracy.index if label in speed.index]
    if not labels:
        return False
    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    for rank, label in enumerate(sorted(labels, key=lambda name: speed[name])):
        marker = "s" if label in (UNIFORM, CNN) else "o"
        axes.scatter(speed[label], 100 * accuracy[label], marker=marker, s=40)
        # Neighbours in speed often have nearly the same accuracy: alternate their labels above and below.
        axes.annotate(_display(label), (speed[label], 100 * accuracy[label]), textcoords="offset points",
                      xytext=(5, 4 if rank % 2 == 0 else -12), fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("training samples / s (log)")
    axes.set_ylabel("clean test accuracy %")
    axes.set_title(f"{dataset}: accuracy against training throughput")
    axes.grid(alpha=0.3)
    _save(figure, path)
    return True


def plot_robustness(table: pd.DataFrame, dataset: str, path: Path) -> bool:
    """Accuracy against epsilon (FGSM, BIM) and against rotation angle, one line per routing; False if no data."""
    rows = table[table["dataset"] == dataset]
    panels = [(evaluation, x_name) for evaluation, x_name in (("fgsm", "epsilon"), ("bim", "epsilon"),
                                                             ("rotation", "angle_deg"))
              if ((rows["evaluation"] == evaluation) & (rows["x_name"] == x_name)).any()]
    if not panels:
        return False
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (evaluation, x_name) in zip(axes[0], panels, strict=True):
        part = rows[(rows["evaluation"] == evaluation) & (rows["x_name"] == x_name) & (rows["metric"] == ACCURACY)]
        curves = part.groupby(["label", "x_value"])["value"].mean().reset_index()
        for label, curve in curves.groupby("label", sort=False):
            curve = curve.sort_values("x_value")
            style = "--" if label in (UNIFORM, CNN) else "-"
            ax.plot(curve["x_value"].astype(float), 100 * curve["value"], style, marker="o", markersize=3,
                    label=_display(label))
        ax.set_xlabel("epsilon" if x_name == "epsilon" else "rotation (degrees)")
        ax.set_ylabel("accuracy %")
        ax.set_title(f"{dataset}: {evaluation.upper() if x_name == 'epsilon' else 'rotation'}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    _save(figure, path)
    return True


def plot_viewpoints(table: pd.DataFrame, dataset: str, path: Path) -> bool:
    """Novel- against familiar-view accuracy, one point per routing (smallNORB splits); False if no data."""
    rows = table[table["dataset"] == dataset]
    familiar = _values(rows, "clean", ACCURACY)["mean"]
    novel = _values(rows, "novel", ACCURACY)["mean"]
    labels = [label for label in familiar.index if label in novel.index]
    if not labels:
        return False
    figure, axes = plt.subplots(figsize=(5.5, 5))
    for label in labels:
        axes.scatter(100 * familiar[label], 100 * novel[label], s=40)
        axes.annotate(_display(label), (100 * familiar[label], 100 * novel[label]), textcoords="offset points",
                      xytext=(5, 4), fontsize=8)
    low = 100 * min(min(familiar[labels]), min(novel[labels])) - 2
    axes.plot([low, 100], [low, 100], color="grey", lw=0.8, ls=":")
    axes.set_xlabel("familiar viewpoints: accuracy %")
    axes.set_ylabel("novel viewpoints: accuracy %")
    axes.set_title(f"{dataset}: familiar against novel viewpoints")
    axes.grid(alpha=0.3)
    _save(figure, path)
    return True


def write_report(table: pd.DataFrame, results_dir: Path, epsilon: float, angle: float, machine: str) -> list[Path]:
    """leaderboard.md and every plot the table has data for; returns the files written."""
    results_dir.mkdir(parents=True, exist_ok=True)
    written = []
    markdown = leaderboard_markdown(table, epsilon, angle, machine)
    with atomic_write(results_dir / "leaderboard.md") as handle:
        handle.write(markdown)
    written.append(results_dir / "leaderboard.md")
    for dataset in dict.fromkeys(table["dataset"]):
        for name, draw in (("accuracy_vs_throughput", plot_accuracy_vs_throughput), ("robustness", plot_robustness),
                           ("viewpoints", plot_viewpoints)):
            path = results_dir / f"{name}_{dataset}.png"
            if draw(table, dataset, path):
                written.append(path)
    return written
