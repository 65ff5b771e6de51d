"""The routing study: does routing earn its cost? Every routing, uniform routing and a plain CNN, side by side.

    capsule-study --datasets mnist --epochs 3                      # every registered routing + both baselines
    capsule-study --datasets mnist --routings dynamic,em --seeds 0,1,2 --minutes 10
    capsule-study --datasets smallnorb-azimuth,smallnorb-elevation --model compact --epochs 10
    capsule-study --resume                                         # continue a stopped study where it stopped

For each dataset and seed, the command trains the same architecture (`--model`, default the compact capsule
network) with every routing asked for (default: all of `routing.available()`, each with its paper's iterations) and
two baselines - uniform routing (dynamic routing with 1 iteration: the couplings never leave 1/J) and
`cnn-baseline` (the same stem without capsules or routing, sized to the capsule model's parameter count) - under the
same budget (`--epochs`, or `--minutes` of training each), then evaluates every trained model:

- clean test accuracy. MNIST and Fashion-MNIST follow Sabour et al.'s affNIST protocol: training digits are placed
  at random on a 40x40 black canvas, and the clean test set is the test digits placed at fixed random positions;
- affine generalisation (MNIST-like datasets): accuracy on an affNIST-style set built deterministically from the
  test digits (random rotation +-20 degrees, shear +-0.2, scale 0.8-1.2, translation inside the canvas), on the
  first official affNIST test batch with `--affnist-root`, and against rotation angle (`--angles`, test digits centred);
- adversarial robustness: white-box, untargeted FGSM and BIM (`--bim-steps` steps of epsilon/4, projected) against
  epsilon (`--epsilons`, pixels in [0, 1]) on the first `--attack-subset` test images, with gradients through the
  routing iterations, on one loss for every model (`attacks.class_score_cross_entropy`);
- novel viewpoints (smallnorb-azimuth, smallnorb-elevation): trained on the familiar views, scored on the familiar
  test views (the clean accuracy, also the attacked set) and on the novel ones;
- cost: parameters, training and evaluation samples per second and a training step's peak memory, measured on
  synthetic batches with a fresh copy of each model (`experiments.study.cost`).

Every value is one row of a long-format CSV (`--results-dir`/study.csv, upserted; each row carries the full training
configuration, device, commit and time), from which the command writes leaderboard.md (also printed) and PNG plots:
accuracy against training throughput, robustness against epsilon and rotation, familiar against novel viewpoints.
Training runs live in `--out-dir`/<dataset>/<label>-seed<seed> (checkpoint, metrics, config). The study stops and
resumes: with `--resume`, runs continue from their checkpoints and evaluations already in the CSV are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import capsules
import routing
from capsules.datasets import AffNIST, SmallNORB
from capsules.datasets.affine import affnist_style, centre_on_canvas, rotate
from experiments.common import provenance
from experiments.common.tables import read_csv, upsert_csv
from experiments.study.attacks import class_score_cross_entropy
from experiments.study.cost import measure
from experiments.study.evaluate import accuracy, attacked_accuracy
from experiments.study.plan import CNN, PROTOCOLS, Entry, Protocol, check_routings, entries
from experiments.study.report import write_report
from experiments.train.checkpoint import load_checkpoint
from experiments.train.config import TrainConfig, build_config, parse_model_options
from experiments.train.data import TrainingData, load_data
from experiments.train.distributed import resolve_device
from experiments.train.run import CHECKPOINT, build_model, count_parameters, train

KEY = ["dataset", "model", "label", "seed", "budget", "train_subset", "evaluation", "x_name", "x_value", "metric"]
AFFNIST_SEED = 0  # the affNIST-style test set is the same for every model and every machine
DEFAULT_EPSILONS = (0.0, 0.05, 0.1, 0.2, 0.3)
DEFAULT_ANGLES = (0, 10, 20, 30, 40, 50, 60)


# ---------------------------------------------------------------------------------------------- command line
def _comma_list(kind: Callable[[str], Any], what: str) -> Callable[[str], list]:
    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
        try:
            return [kind(item) for item in items]
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}") from error

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capsule-study", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what to train")
    what.add_argument("--datasets", type=_comma_list(str, "dataset names"), default=["mnist"],
                      help=f"comma-separated, from {', '.join(PROTOCOLS)} (default: mnist)")
    what.add_argument("--routings", type=_comma_list(str, "routing names"), default=None,
                      help="comma-separated names from routing.available() (default: all registered)")
    what.add_argument("--no-baselines", dest="baselines", action="store_false",
                      help="leave out uniform routing and the CNN")
    what.add_argument("--model", default="compact", help="the capsule architecture (default: compact)")
    what.add_argument("--model-option", dest="model_options", action="append", default=[], metavar="KEY=VALUE",
                      help="keyword argument for every model built, capsule models and the CNN alike (VALUE parsed "
                           "as JSON if it can be; repeatable), e.g. channels=[16,32,32]")
    what.add_argument("--seeds", type=_comma_list(int, "integer seeds"), default=[0],
                      help="comma-separated seeds; several give mean ± std (default: 0)")
    budget = parser.add_argument_group("budget (the same for every model)")
    budget.add_argument("--epochs", type=int, default=3, help="epochs per model (default: 3; the most, with --minutes)")
    budget.add_argument("--minutes", type=float, default=None, help="training minutes per model (default: none)")
    budget.add_argument("--train-subset", type=int, default=None, help="train on the first N images (default: all)")
    budget.add_argument("--test-subset", type=int, default=None, help="score the first N test images (default: all)")
    budget.add_argument("--batch-size", type=int, default=None, help="training batch (default: the model's preset)")
    evaluation = parser.add_argument_group("evaluations")
    evaluation.add_argument("--epsilons", type=_comma_list(float, "epsilons"), default=list(DEFAULT_EPSILONS),
                            help="FGSM/BIM epsilons, pixels in [0, 1] (default: 0,0.05,0.1,0.2,0.3)")
    evaluation.add_argument("--bim-steps", type=int, default=10, help="BIM steps of epsilon/4 (default: 10)")
    evaluation.add_argument("--attack-subset", type=int, default=1000,
                            help="attack the first N test images (default: 1000)")
    evaluation.add_argument("--angles", type=_comma_list(float, "angles in degrees"), default=list(DEFAULT_ANGLES),
                            help="rotation angles in degrees (default: 0,10,...,60)")
    evaluation.add_argument("--affnist-root", default=None,
                            help="folder with the official affNIST test .mat files (MNIST only; optional)")
    evaluation.add_argument("--leaderboard-epsilon", type=float, default=0.1,
                            help="the epsilon shown in the leaderboard (default: 0.1)")
    evaluation.add_argument("--leaderboard-angle", type=float, default=45.0,
                            help="the rotation shown in the leaderboard (default: the nearest angle to 45)")
    where = parser.add_argument_group("where")
    where.add_argument("--data-dir", default=None,
                       help="folder holding one subfolder per dataset (default: $CAPSULES_DATA, else "
                            "~/.cache/capsule-routing)")
    where.add_argument("--out-dir", default="runs/study", help="training runs (default: runs/study)")
    where.add_argument("--results-dir", default="experiments/results/study",
                       help="study.csv, leaderboard.md and the plots (default: experiments/results/study)")
    where.add_argument("--resume", action="store_true",
                       help="continue: runs resume from their checkpoints, evaluations in the CSV are skipped")
    machine = parser.add_argument_group("machine")
    machine.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default: auto)")
    machine.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    machine.add_argument("--no-cost", dest="cost", action="store_false",
                         help="skip the cost measurement (parameters are still recorded)")
    machine.add_argument("--progress", action="store_true", help="show a progress bar per training epoch")
    machine.add_argument("--remeasure-cost", action="store_true",
                         help="measure the cost of every finished model again, back to back, and replace its cost "
                              "rows (no training; the machine's speed drifts, so a study run over hours compares "
                              "throughput best from one such pass); implies --resume")
    return parser


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """parser.error (one line, exit 2) on any argument that cannot work, before any work starts."""
    unknown = [d for d in args.datasets if d not in PROTOCOLS]
    if unknown:
        parser.error(f"--datasets: unknown {', '.join(unknown)}; expected names from {', '.join(PROTOCOLS)}")
    try:
        args.routings = check_routings(args.routings if args.routings is not None else routing.available())
    except ValueError as error:
        parser.error(f"--routings: {error}")
    if args.model not in capsules.models() or "routing" not in capsules.model_options(args.model):
        routed = [m for m in capsules.models() if "routing" in capsules.model_options(m)]
        parser.error(f"--model must be a capsule model that routes ({', '.join(routed)}), got {args.model!r}")
    for name in ("epochs", "bim_steps", "attack_subset", "train_subset", "test_subset", "batch_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.minutes is not None and not (math.isfinite(args.minutes) and args.minutes > 0):
        parser.error(f"--minutes must be a positive number, got {args.minutes}")
    bad = [e for e in args.epsilons if not (math.isfinite(e) and 0 <= e <= 1)]
    if bad:
        parser.error(f"--epsilons must lie in [0, 1] (pixels in [0, 1]), got {bad}")
    if any(not math.isfinite(a) for a in args.angles):
        parser.error(f"--angles must be finite, got {args.angles}")
    try:
        args.model_options = parse_model_options(args.model_options)
    except ValueError as error:
        parser.error(str(error))
    for model in (args.model, "cnn-baseline"):
        unknown = sorted(set(args.model_options) - set(capsules.model_options(model)))
        if unknown:
            parser.error(f"--model-option {', '.join(unknown)}: not an option of model {model} (its options: "
                         f"{', '.join(capsules.model_options(model))})")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds lists a seed twice: {args.seeds}")
    if args.affnist_root is not None and not Path(args.affnist_root).is_dir():
        parser.error(f"--affnist-root {args.affnist_root} is not a folder")
    for name in ("out_dir", "results_dir"):
        path = Path(getattr(args, name))
        if path.exists() and not path.is_dir():
            parser.error(f"--{name.replace('_', '-')} {path} is a file, expected a folder")
        existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
        if not os.access(existing, os.W_OK):
            parser.error(f"--{name.replace('_', '-')} {path}: {existing} is not writable")
    try:
        resolve_device(args.device, 0)
    except (ValueError, RuntimeError) as error:
        parser.error(f"--device: {error}")
    if args.remeasure_cost:
        if not args.cost:
            parser.error("--remeasure-cost measures the cost: it cannot go with --no-cost")
        args.resume = True
    if not args.resume and (results_csv(args).exists() or any(Path(args.out_dir).glob("*/*/" + CHECKPOINT))):
        parser.error(f"{args.results_dir} or {args.out_dir} already holds a study: pass --resume to continue it, or "
                     f"choose other folders")


def results_csv(args: argparse.Namespace) -> Path:
    return Path(args.results_dir) / "study.csv"


def dataset_root(args: argparse.Namespace, dataset: str) -> Path | None:
    """The folder of `dataset`'s files under --data-dir (None: the dataset's own default under $CAPSULES_DATA)."""
    if args.data_dir is None:
        return None
    return Path(args.data_dir) / ("smallnorb" if dataset.startswith("smallnorb") else dataset)


def load_or_stop(args: argparse.Namespace, dataset: str, canvas: int | None) -> TrainingData:
    """The dataset's training data, or SystemExit(2) with one line naming the dataset and where its files go."""
    try:
        return load_data(dataset, dataset_root(args, dataset), train_subset=args.train_subset,
                         test_subset=args.test_subset, canvas=canvas)
    except (FileNotFoundError, OSError) as error:
        where = dataset_root(args, dataset) or f"$CAPSULES_DATA/{dataset}"
        print(f"capsule-study: error: dataset {dataset} is missing: {error} (put its files in {where}, or point "
              f"--data-dir / $CAPSULES_DATA at a folder that has them; capsules.datasets downloads them)",
              file=sys.stderr)
        raise SystemExit(2) from error


# ---------------------------------------------------------------------------------------------- one cell
def budget_text(args: argparse.Namespace) -> str:
    return f"{args.epochs} epochs" + (f" or {args.minutes:g} min" if args.minutes is not None else "")


def train_config(args: argparse.Namespace, entry: Entry, protocol: Protocol, seed: int,
                 capsule_params: int | None) -> TrainConfig:
    out = Path(args.out_dir) / protocol.dataset / f"{entry.label}-seed{seed}"
    options = dict(args.model_options)
    if entry.label == CNN and capsule_params:
        options["params"] = capsule_params
    root = dataset_root(args, protocol.dataset)
    return build_config(model=entry.model, routing=entry.routing, dataset=protocol.dataset,
                        data_root=str(root) if root else None, routing_iterations=entry.iterations,
                        epochs=args.epochs, time_budget_min=args.minutes, seed=seed, train_subset=args.train_subset,
                        test_subset=args.test_subset, batch_size=args.batch_size, canvas=protocol.canvas,
                        out_dir=str(out), resume=(out / CHECKPOINT).exists(), progress=args.progress,
                        threads=args.threads, device=args.device, model_options=options)


def capsule_parameter_count(args: argparse.Namespace, protocol: Protocol, data: TrainingData) -> int:
    """Parameters of the study's capsule model with dynamic routing on this dataset: the CNN baseline's size."""
    config = build_config(model=args.model, routing="dynamic", dataset=protocol.dataset, canvas=protocol.canvas,
                          model_options=dict(args.model_options))
    return count_parameters(build_model(config, data))


class Cell:
    """One trained model of the study and the rows it adds to the table."""

    def __init__(self, args: argparse.Namespace, entry: Entry, protocol: Protocol, seed: int, config: TrainConfig,
                 table: pd.DataFrame):
        self.args, self.entry, self.protocol, self.seed, self.config = args, entry, protocol, seed, config
        self.table = table
        self.rows: list[dict[str, Any]] = []
        self.base = {"dataset": protocol.dataset, "model": entry.model, "label": entry.label, "seed": seed,
                     "budget": budget_text(args),
                     "train_subset": "all" if args.train_subset is None else str(args.train_subset),
                     "routing": entry.routing, "routing_iterations": config.routing_iterations}

    def done(self, evaluation: str, expected: int = 1) -> bool:
        """Whether the table already holds `expected` rows of this cell's `evaluation` (with --resume)."""
        if not self.args.resume or self.table.empty:
            return False
        match = self.table
        for key in ("dataset", "model", "label", "seed", "budget", "train_subset"):
            match = match[match[key].astype(str) == str(self.base[key])]
        return int((match["evaluation"] == evaluation).sum()) >= expected

    def add(self, evaluation: str, metric: str, value: float, x_name: str = "none", x_value: float = 0.0,
            unit: str = "") -> None:
        self.rows.append({**self.base, "evaluation": evaluation, "x_name": x_name, "x_value": float(x_value),
                          "metric": metric, "value": float(value), "unit": unit})


def evaluations(args: argparse.Namespace, protocol: Protocol) -> dict[str, int]:
    """Every evaluation the protocol asks for, with the number of rows each adds to the table."""
    wanted = {"clean": 1}
    if protocol.affine:
        wanted["affnist-style"] = 1
        if args.affnist_root and protocol.dataset == "mnist":
            wanted["affnist"] = 1
    if protocol.rotation:
        wanted["rotation"] = len(args.angles)
    if protocol.viewpoints:
        wanted["novel"] = 1
    wanted["fgsm"] = wanted["bim"] = len(args.epsilons)
    wanted["cost"] = COST_ROWS if args.cost else 1
    return wanted


def run_cell(args: argparse.Namespace, cell: Cell, data: TrainingData, plain: TrainingData | None,
             device: torch.device) -> list[dict[str, Any]]:
    """Train (or resume) the cell's model, then every evaluation it still lacks; returns its new rows. A cell with
    every evaluation in the table is skipped without loading or training anything."""
    todo = [name for name, rows in evaluations(args, cell.protocol).items() if not cell.done(name, rows)]
    if not todo:
        return []
    config = cell.config
    metrics = train(config)
    model = build_model(config, data).to(device)
    model.load_state_dict(load_checkpoint(Path(config.out_dir) / CHECKPOINT)["model"])
    model.eval()
    protocol = cell.protocol

    def score(images: torch.Tensor, labels: torch.Tensor) -> float:
        return accuracy(model, images, labels, config.eval_batch_size, device)[0]

    # The clean test set: for smallNORB's viewpoint splits the familiar views (the training run's test set holds
    # the novel ones).
    clean = familiar_views(args, protocol) if protocol.viewpoints else (data.test_images, data.test_labels)
    if "clean" in todo:
        cell.add("clean", "accuracy", score(*clean))
    if "affnist-style" in todo:
        images = affnist_style(plain.test_images, seed=AFFNIST_SEED, canvas=protocol.canvas)
        cell.add("affnist-style", "accuracy", score(images, plain.test_labels))
    if "affnist" in todo:
        cell.add("affnist", "accuracy", score(*official_affnist(args.affnist_root, args.test_subset)))
    if "rotation" in todo:
        source = plain if plain is not None else data
        upright = centre_on_canvas(source.test_images, protocol.canvas) if protocol.canvas else source.test_images
        for angle in args.angles:
            cell.add("rotation", "accuracy", score(rotate(upright, angle), source.test_labels), "angle_deg", angle)
    if "novel" in todo:
        cell.add("novel", "accuracy", score(data.test_images, data.test_labels))
    attacked = clean[0][:args.attack_subset], clean[1][:args.attack_subset]
    for attack in ("fgsm", "bim"):
        if attack in todo:
            for epsilon in args.epsilons:
                value = attacked_accuracy(model, class_score_cross_entropy, *attacked, attack, epsilon, device=device,
                                          steps=args.bim_steps)
                cell.add(attack, "accuracy", value, "epsilon", epsilon)
    if "cost" in todo:
        cell.add("cost", "params", count_parameters(model), unit="parameters")
        if args.cost:
            shape = tuple(data.test_images.shape[1:])
            for metric, value in measure(config, shape, data.classes).items():
                if metric != "params":
                    cell.add("cost", metric, value, unit=_UNITS[metric])
            cell.add("cost", "run_train_samples_per_s", float(metrics["samples_per_s"].mean()), unit="samples/s")
            cell.add("cost", "train_time_s", float(metrics["train_time_s"].iloc[-1]), unit="s")
    return cell.rows


COST_ROWS = 6  # params, train and eval samples/s, peak memory, the run's own samples/s, its training time
_UNITS = {"train_samples_per_s": "samples/s", "eval_samples_per_s": "samples/s", "peak_memory_mib": "MiB"}


def official_affnist(root: str, subset: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first official affNIST test batch (10,000 images: each MNIST test digit under one random affine map) as
    float [N, 1, 40, 40] in [0, 1], and labels [N]."""
    test = AffNIST(root, train=False, download=False, batches=(1,))
    images, labels = test.tensors()
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    return torch.cat([test.preprocess(chunk) for chunk in images.split(2000)]), labels


def familiar_views(args: argparse.Namespace, protocol: Protocol) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallNORB test images at the viewpoints the model trained on (preprocessed), and their labels."""
    test = SmallNORB(dataset_root(args, protocol.dataset), train=False, download=False,
                     viewpoints=f"{protocol.viewpoints}-familiar")
    images, labels = test.tensors()
    if args.test_subset is not None:
        images, labels = images[:args.test_subset], labels[:args.test_subset]
    return torch.cat([test.preprocess(chunk) for chunk in images.split(2000)]), labels


# ---------------------------------------------------------------------------------------------- the study
def run_study(args: argparse.Namespace) -> pd.DataFrame:
    """Train and evaluate every (dataset, seed, entry) cell, upserting rows and redrawing the report after each."""
    device = resolve_device(args.device, 0)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = {d: (load_or_stop(args, d, PROTOCOLS[d].canvas),
                  load_or_stop(args, d, None) if PROTOCOLS[d].canvas else None) for d in args.datasets}
    machine = provenance.device_name(device)
    csv = results_csv(args)
    table = read_csv(csv)
    for dataset in args.datasets:
        protocol = PROTOCOLS[dataset]
        data, plain = loaded[dataset]
        capsule_params = capsule_parameter_count(args, protocol, data)
        for seed in args.seeds:
            for entry in entries(args.routings, args.model, args.baselines):
                config = train_config(args, entry, protocol, seed, capsule_params)
                print(f"[study] {dataset} seed {seed}: {entry.label} ({entry.model} + {entry.routing}"
                      f"{f', {entry.iterations} iteration' if entry.iterations else ''})", flush=True)
                cell = Cell(args, entry, protocol, seed, config, table)
                rows = remeasure_cost(cell, data) if args.remeasure_cost else run_cell(args, cell, data, plain, device)
                if rows:
                    stamp = {"device": machine, "git_commit": provenance.git_commit(),
                             "timestamp": provenance.timestamp(), "config": json.dumps(config.to_dict(),
                                                                                      sort_keys=True)}
                    table = upsert_csv(csv, [{**row, **stamp} for row in rows], KEY)
                write_report(table, Path(args.results_dir), args.leaderboard_epsilon,
                             nearest(args.angles, args.leaderboard_angle), machine)
    return table


def remeasure_cost(cell: Cell, data: TrainingData) -> list[dict[str, Any]]:
    """The measured cost rows of a finished cell (one with its clean accuracy in the table), measured again on a
    fresh copy of its model; nothing for a cell not yet run. Its training run's own rows are kept."""
    if not cell.done("clean"):
        return []
    for metric, value in measure(cell.config, tuple(data.test_images.shape[1:]), data.classes).items():
        cell.add("cost", metric, value, unit=_UNITS.get(metric, "parameters"))
    return cell.rows


def nearest(values: Sequence[float], target: float) -> float:
    return min(values, key=lambda value: abs(value - target))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(args, parser)
    try:
        table = run_study(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished cells are in {results_csv(args)}, runs in {args.out_dir} "
              f"(continue with --resume)", file=sys.stderr)
        return 130
    print((Path(args.results_dir) / "leaderboard.md").read_text() if not table.empty else "no results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
