"""DistributedDataParallel on the CPU: two gloo processes under torchrun train like one process on the same data.

Each rank takes its half of every global batch and DDP averages the gradients, so with a batch-mean loss and no
per-rank batch statistics the two runs differ only by float summation order.
"""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from experiments.train import CHECKPOINT, METRICS

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared/data/mnist"


def run(out_dir: Path, processes: int) -> str:
    """Train 2 epochs of the compact model in `processes` processes; returns what they printed."""
    args = ["--model", "compact", "--routing", "dynamic", "--data-root", str(MNIST_DIR), "--train-subset", "256",
            "--test-subset", "100", "--batch-size", "32", "--epochs", "2", "--no-progress", "--threads", "1",
            "--out-dir", str(out_dir)]
    launcher = [sys.executable, "-m", "experiments.train"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                    "-m", "experiments.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launcher + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("ddp")
    return {processes: (root / str(processes), run(root / str(processes), processes)) for processes in (1, 2)}


def test_two_gloo_processes_match_one_process(runs):
    one = torch.load(runs[1][0] / CHECKPOINT, weights_only=False)
    two = torch.load(runs[2][0] / CHECKPOINT, weights_only=False)
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    a, b = pd.read_csv(runs[1][0] / METRICS), pd.read_csv(runs[2][0] / METRICS)
    assert a["step"].tolist() == b["step"].tolist() == [8, 16]
    pd.testing.assert_series_equal(a["train_loss"], b["train_loss"], rtol=1e-4)
    # evaluation gathered across ranks: the whole test set is scored once
    pd.testing.assert_series_equal(a["test_accuracy"], b["test_accuracy"], atol=0.011)
    assert b["world_size"].tolist() == [2, 2]


def test_only_rank_zero_prints_and_writes(runs):
    folder, printed = runs[2]
    assert printed.count("epoch 1: train loss") == 1 and printed.count("epoch 2: train loss") == 1
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "config.json", "metrics.csv"]
