"""Accuracy comparison: one row per routing, the results table's columns, upserts by key, the markdown copy."""

from pathlib import Path

import pandas as pd
import pytest

import routing
from experiments.common.tables import read_csv
from experiments.train.compare_accuracy import PAPER_PAIRS, main, planned_runs, results_markdown

NARROW = ["--model-option", "channels=[16,32,32]", "--model-option", "types=4"]  # the compact model, narrower
RESULT_COLUMNS = {"routing", "model", "dataset", "params", "epochs", "test_accuracy", "best_test_accuracy",
                  "wall_time_s", "train_time_s", "samples_per_s", "device", "git_commit", "budget"}


@pytest.fixture(scope="module")
def compared(tmp_path_factory, small_mnist_root, small_mnist_md5) -> Path:
    root = tmp_path_factory.mktemp("compare")
    argv = ["--model", "compact", "--data-root", str(small_mnist_root / "mnist"), "--train-subset", "128",
            "--test-subset", "100", "--batch-size", "64", "--epochs", "1", "--no-progress",
            "--out-dir", str(root / "runs"), "--results", str(root / "accuracy.csv"), *NARROW]
    with pytest.MonkeyPatch.context() as patch:  # conftest's small files: checked against their own MD5s
        patch.setattr("capsules.datasets.mnist.MNIST_MD5", small_mnist_md5)
        assert main(argv) == 0
    return root


def test_one_row_per_routing_with_the_results_columns(compared):
    comparison = pd.read_csv(compared / "runs" / "comparison.csv")
    assert sorted(comparison["routing"]) == routing.available()
    results = read_csv(compared / "accuracy.csv")
    assert RESULT_COLUMNS <= set(results.columns)
    assert len(results) == len(routing.available())
    assert results["test_accuracy"].between(0, 1).all()  # a fraction, not a percentage
    assert (results["epochs"] == 1.0).all() and (results["params"] > 0).all()
    assert (results["best_test_accuracy"] >= results["test_accuracy"]).all()


def test_rerunning_replaces_rows_and_regenerates_the_markdown(compared, capsys, small_mnist):
    argv = ["--model", "compact", "--routings", "dynamic", "--data-root", str(small_mnist), "--train-subset", "128",
            "--test-subset", "100", "--batch-size", "64", "--epochs", "1", "--no-progress", "--resume",
            "--out-dir", str(compared / "runs"), "--results", str(compared / "accuracy.csv"), *NARROW]
    assert main(argv) == 0  # --resume: the finished run is read back, not trained again
    results = read_csv(compared / "accuracy.csv")
    assert len(results) == len(routing.available())
    markdown = (compared / "accuracy.md").read_text()
    assert "| compact" in markdown
    assert results_markdown(results) in markdown
    capsys.readouterr()
    assert main(["--print-results", "--results", str(compared / "accuracy.csv")]) == 0
    assert capsys.readouterr().out.strip() == results_markdown(results)


def test_papers_pairs_are_added_once():
    runs = planned_runs("capsnet", ["dynamic", "em"], "mnist", papers=True)
    assert runs == [("capsnet", "dynamic", "mnist"), ("capsnet", "em", "mnist"), PAPER_PAIRS[1]]


def test_unknown_routing_is_a_clear_error(tmp_path, capsys, small_mnist):
    argv = ["--model", "compact", "--routings", "nope", "--data-root", str(small_mnist), "--out-dir", str(tmp_path),
            "--no-results"]
    assert main(argv) == 2
    assert "unknown routing 'nope'" in capsys.readouterr().err
