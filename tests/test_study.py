"""capsule-study end to end on small written MNIST files: two routings and both baselines, every evaluation, the
table's columns, the leaderboard and the plots; --resume skips what is done and redoes only what is missing; bad
arguments and a missing dataset stop before any work with one line."""

import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
from helpers_datasets import write_small_cifar
from helpers_smallnorb import write_split

import capsules.datasets.cifar10 as cifar10_module
from capsules.datasets.affnist import write_affnist_file
from experiments.study.attacks import bim, fgsm
from experiments.study.run import KEY, main
from experiments.train.run import CHECKPOINT

ROUTINGS = ["dynamic", "self-routing"]
LABELS = {"dynamic", "self-routing", "uniform", "cnn"}
EPSILONS, ANGLES = [0.0, 0.1], [0.0, 30.0]
COLUMNS = set(KEY) | {"value", "unit", "routing", "routing_iterations", "device", "git_commit", "timestamp", "config"}


def tiny_study(data_root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--datasets", "mnist", "--routings", ",".join(ROUTINGS), "--data-dir", str(data_root),
            "--train-subset", "128", "--test-subset", "48", "--epochs", "1", "--batch-size", "32",
            "--attack-subset", "16", "--epsilons", ",".join(map(str, EPSILONS)), "--angles",
            ",".join(map(str, ANGLES)), "--bim-steps", "2", "--model-option", "channels=[8,16,16]", "--threads", "1",
            "--out-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), *extra]


@pytest.fixture(scope="module")
def study(tmp_path_factory, small_mnist_root, small_mnist_md5):
    """One tiny study, shared by the tests of this module: (arguments, results folder, table)."""
    tmp_path = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("capsules.datasets.mnist.MNIST_MD5", small_mnist_md5)
        args = tiny_study(small_mnist_root, tmp_path)
        assert main(args) == 0
    return args, tmp_path, pd.read_csv(tmp_path / "results" / "study.csv")


def test_table_has_every_evaluation_of_every_model(study):
    _, _, table = study
    assert COLUMNS <= set(table.columns)
    assert set(table["label"]) == LABELS
    assert not table.duplicated(KEY).any()
    for label, rows in table.groupby("label"):
        evaluations = rows.groupby("evaluation").size().to_dict()
        assert evaluations == {"clean": 1, "affnist-style": 1, "rotation": len(ANGLES), "fgsm": len(EPSILONS),
                               "bim": len(EPSILONS), "cost": 6}, label
        accuracies = rows[rows["metric"] == "accuracy"]["value"]
        assert accuracies.between(0, 1).all()
        cost = rows[rows["evaluation"] == "cost"].set_index("metric")["value"]
        assert cost["params"] > 0 and cost["train_samples_per_s"] > 0 and cost["eval_samples_per_s"] > 0
        assert cost["peak_memory_mib"] > 0
    uniform = table[table["label"] == "uniform"]
    assert (uniform["routing"] == "dynamic").all() and (uniform["routing_iterations"] == 1).all()
    assert (table[table["label"] == "dynamic"]["routing_iterations"] == 3).all()
    # The CNN is sized to the dynamic capsule model (within one unit of its width).
    params = table[(table["metric"] == "params")].set_index("label")["value"]
    assert abs(params["cnn"] - params["dynamic"]) / params["dynamic"] < 0.05
    # Both attacks at epsilon 0 score the clean attacked subset.
    for _, rows in table.groupby("label"):
        fgsm_rows = rows[rows["evaluation"] == "fgsm"].set_index("x_value")["value"]
        bim_rows = rows[rows["evaluation"] == "bim"].set_index("x_value")["value"]
        assert fgsm_rows[0.0] == bim_rows[0.0]


def test_leaderboard_and_plots(study):
    _, tmp_path, _ = study
    results = tmp_path / "results"
    leaderboard = (results / "leaderboard.md").read_text()
    for text in ("### mnist", "uniform (dynamic, 1 iteration)", "CNN baseline", "self-routing", "clean %",
                 "affNIST-style %", "FGSM ε=0.1 %", "BIM ε=0.1 %", "train samples/s", "peak MiB"):
        assert text in leaderboard
    for name in ("accuracy_vs_throughput_mnist.png", "robustness_mnist.png"):
        image = matplotlib.image.imread(results / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_resume_skips_done_cells_and_redoes_only_missing_ones(study, small_mnist_md5, monkeypatch):
    args, tmp_path, table = study
    monkeypatch.setattr("capsules.datasets.mnist.MNIST_MD5", small_mnist_md5)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "results", copy / "results")
    shutil.copytree(tmp_path / "runs", copy / "runs")
    args = [a.replace(str(tmp_path), str(copy)) for a in args]
    checkpoints = {p: p.stat().st_mtime_ns for p in (copy / "runs").glob("*/*/" + CHECKPOINT)}
    assert len(checkpoints) == len(LABELS)
    # Without --resume the study refuses to touch an existing one.
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    # A finished cell needs no run folder (a later session's clone has the table, not the checkpoints).
    shutil.rmtree(copy / "runs" / "mnist" / "cnn-seed0")
    del checkpoints[copy / "runs" / "mnist" / "cnn-seed0" / CHECKPOINT]
    # Drop the BIM rows of one model: --resume recomputes exactly those, and leaves the rest as it was.
    csv = copy / "results" / "study.csv"
    dropped = (table["label"] == "dynamic") & (table["evaluation"] == "bim")
    table[~dropped].to_csv(csv, index=False)
    assert main([*args, "--resume"]) == 0
    after = pd.read_csv(csv)
    assert len(after) == len(table)
    merged = after.merge(table, on=KEY, suffixes=("", "_before"))
    kept = ~((merged["label"] == "dynamic") & (merged["evaluation"] == "bim"))
    assert (merged.loc[kept, "timestamp"] == merged.loc[kept, "timestamp_before"]).all()
    assert (merged.loc[~kept, "value"] == merged.loc[~kept, "value_before"]).all()  # same model, same attack
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints  # nothing retrained
    assert not (copy / "runs" / "mnist" / "cnn-seed0").exists()


def test_remeasure_cost_replaces_only_the_measured_cost_rows_without_training(study, small_mnist_md5, monkeypatch):
    args, tmp_path, table = study
    monkeypatch.setattr("capsules.datasets.mnist.MNIST_MD5", small_mnist_md5)
    copy = tmp_path / "remeasured"
    shutil.copytree(tmp_path / "results", copy / "results")
    args = [a.replace(str(tmp_path), str(copy)) for a in args]  # no run folders: nothing can be resumed or trained
    assert main([*args, "--remeasure-cost"]) == 0
    after = pd.read_csv(copy / "results" / "study.csv")
    assert len(after) == len(table) and not (copy / "runs").exists()
    merged = after.merge(table, on=KEY, suffixes=("", "_before"))
    measured = merged["metric"].isin(["params", "train_samples_per_s", "eval_samples_per_s", "peak_memory_mib"])
    assert (merged.loc[measured, "timestamp"] != merged.loc[measured, "timestamp_before"]).all()
    assert (merged.loc[~measured, "timestamp"] == merged.loc[~measured, "timestamp_before"]).all()
    assert (merged.loc[merged["metric"] == "params", "value"] == merged.loc[merged["metric"] == "params",
                                                                            "value_before"]).all()


def test_the_other_protocols_on_written_files(tmp_path, small_mnist_root, small_mnist_md5, monkeypatch):
    """Official affNIST (MNIST), CIFAR-10 (no canvas: clean, rotation, attacks) and smallNORB's novel azimuths
    (familiar and novel views) on small files written in the real formats."""
    monkeypatch.setattr("capsules.datasets.mnist.MNIST_MD5", small_mnist_md5)
    data = tmp_path / "data"
    shutil.copytree(small_mnist_root / "mnist", data / "mnist")
    cifar = write_small_cifar(data / "cifar10")
    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", cifar.md5)
    write_split(data / "smallnorb", train=True, pairs=36, seed=1)
    write_split(data / "smallnorb", train=False, pairs=20, seed=2)
    (tmp_path / "affnist" / "test_batches").mkdir(parents=True)
    digits = np.zeros((6, 40, 40), np.uint8)
    digits[:, 10:30, 15:25] = 255
    write_affnist_file(tmp_path / "affnist" / "test_batches" / "1.mat", digits, np.arange(6) % 10)
    args = tiny_study(data, tmp_path, "--no-baselines", "--no-cost", "--affnist-root", str(tmp_path / "affnist"))
    args[args.index("--datasets") + 1] = "mnist,cifar10,smallnorb-azimuth"
    args[args.index("--routings") + 1] = "dynamic"
    args[args.index("--batch-size") + 1] = "8"
    assert main(args) == 0
    table = pd.read_csv(tmp_path / "results" / "study.csv")
    evaluations = {d: set(rows["evaluation"]) for d, rows in table.groupby("dataset")}
    assert evaluations["mnist"] == {"clean", "affnist-style", "affnist", "rotation", "fgsm", "bim", "cost"}
    assert evaluations["cifar10"] == {"clean", "rotation", "fgsm", "bim", "cost"}
    assert evaluations["smallnorb-azimuth"] == {"clean", "novel", "fgsm", "bim", "cost"}
    assert table[table["metric"] == "accuracy"]["value"].between(0, 1).all()
    assert (tmp_path / "results" / "viewpoints_smallnorb-azimuth.png").exists()
    leaderboard = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "### cifar10" in leaderboard and "novel views %" in leaderboard and "affNIST %" in leaderboard


def test_missing_dataset_stops_with_one_line_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(tiny_study(tmp_path / "nothing", tmp_path))
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "dataset mnist is missing" in error and str(tmp_path / "nothing") in error
    assert not (tmp_path / "results" / "study.csv").exists()


@pytest.mark.parametrize("bad, message", [
    (["--datasets", "imagenet"], "--datasets: unknown imagenet"),
    (["--routings", "dynamic,magic"], "unknown routing(s) magic"),
    (["--epsilons", "0,2"], "--epsilons must lie in [0, 1]"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--minutes", "nan"], "--minutes must be a positive number"),
    (["--model", "cnn-baseline"], "--model must be a capsule model that routes"),
    (["--model-option", "depth=3"], "--model-option depth: not an option of model compact"),
    (["--seeds", "0,0"], "--seeds lists a seed twice"),
])
def test_bad_arguments_are_one_line_usage_errors(tmp_path, capsys, bad, message):
    with pytest.raises(SystemExit) as stop:
        main([*tiny_study(tmp_path, tmp_path), *bad])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_help_documents_the_study(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for option in ("--datasets", "--routings", "--no-baselines", "--seeds", "--epochs", "--minutes", "--epsilons",
                   "--angles", "--affnist-root", "--resume", "affNIST", "FGSM", "BIM", "viewpoints", "leaderboard",
                   "uniform routing", "cnn-baseline"):
        assert option in text, option


class _Linear(torch.nn.Module):
    """A linear classifier on 4 pixels whose output is CapsuleOutput-like (activations only)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([[1.0, -1.0, 0.5, 0.0], [-1.0, 1.0, -0.5, 0.0]]))

    def forward(self, images, labels=None):
        return type("Out", (), {"activations": images.flatten(1) @ self.weight.T})()


def _cross_entropy(output, labels):
    return torch.nn.functional.cross_entropy(output.activations, labels)


def test_fgsm_steps_along_the_gradient_sign_and_bim_stays_in_the_ball():
    model = _Linear()
    images = torch.full((3, 1, 2, 2), 0.5)
    labels = torch.tensor([0, 1, 0])
    adversarial = fgsm(model, _cross_entropy, images, labels, 0.1)
    # For label 0 the loss grows by lowering pixel 0, raising pixel 1, lowering pixel 2; pixel 3 has no gradient.
    assert torch.allclose(adversarial[0].flatten(), torch.tensor([0.4, 0.6, 0.4, 0.5]))
    assert torch.allclose(adversarial[1].flatten(), torch.tensor([0.6, 0.4, 0.6, 0.5]))
    iterated = bim(model, _cross_entropy, images, labels, 0.1, steps=5)
    assert (iterated - images).abs().max() <= 0.1 + 1e-6 and iterated.min() >= 0 and iterated.max() <= 1
    assert _cross_entropy(model(iterated), labels) >= _cross_entropy(model(adversarial), labels) - 1e-6
    assert torch.equal(fgsm(model, _cross_entropy, images, labels, 0.0), images)


def test_the_attack_loss_has_a_gradient_where_the_margin_loss_is_flat():
    """A confident capsule prediction: the margin loss is exactly 0 with no gradient (an attack through it would do
    nothing), the study's attack loss still points somewhere."""
    import capsules
    from experiments.study.attacks import class_score_cross_entropy

    activations = torch.tensor([[0.95, 0.05, 0.02]], requires_grad=True)
    labels = torch.tensor([0])
    margin = capsules.margin_loss(activations, labels)
    (flat,) = torch.autograd.grad(margin, activations)
    assert margin.item() == 0 and torch.equal(flat, torch.zeros_like(flat))
    output = type("Out", (), {"activations": activations})()
    (grad,) = torch.autograd.grad(class_score_cross_entropy(output, labels), activations)
    assert grad[0, 0] < 0 and (grad[0, 1:] > 0).all()
