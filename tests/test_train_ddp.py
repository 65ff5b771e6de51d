"""DistributedDataParallel on the CPU: two gloo processes under torchrun train like one process on the same data.

Each rank takes its half of every global batch and DDP averages the gradients, so with a batch-mean loss and no
per-rank batch statistics the two runs differ only by float summation order. BatchNorm would break that on CPUs
(SyncBatchNorm runs only on GPUs), so the runs use `StemlessCapsNet` below, made of the library's capsule layers
and registered only inside the launched processes.
"""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from capsules.layers import CapsuleLinear, PrimaryCaps
from capsules.models import CapsuleOutput
from experiments.train.run import CHECKPOINT, METRICS

REPO = Path(__file__).resolve().parents[1]
MODEL = "ddp-test-capsnet"
# Registers the test model, then runs the training command line with the arguments given.
LAUNCHER = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import capsules
from test_train_ddp import StemlessCapsNet
capsules.register_model({MODEL!r})(StemlessCapsNet)
from experiments.train.run import main
sys.exit(main(sys.argv[1:]))
"""


class StemlessCapsNet(nn.Module):
    """One strided convolution (no normalisation), matrix primary capsules, routed class capsules."""

    def __init__(self, routing="dynamic", routing_options=None, *, in_channels=1, image_size=28, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, kernel_size=4, stride=4)
        grid = image_size // 4
        self.primary = PrimaryCaps(16, 4, kernel_size=1, pose="matrix")
        self.classes_caps = CapsuleLinear(grid * grid * 4, 16, classes, 16, routing, pose="matrix",
                                          **(routing_options or {}))

    def forward(self, images, labels=None) -> CapsuleOutput:
        poses, activations = self.primary(torch.relu(self.conv(images)))
        poses, activations = self.classes_caps(poses.flatten(1, 3), activations.flatten(1))
        return CapsuleOutput(activations, poses)


def run(folder: Path, processes: int, data: Path, md5s: dict[str, str]) -> str:
    """Train the test model 2 epochs in `processes` processes on the MNIST files in `data`, which the launched
    processes check against `md5s` (conftest's small written files are not the published ones); returns what they
    printed."""
    launcher = folder.parent / "launch.py"
    launcher.write_text(f"import capsules.datasets.mnist\ncapsules.datasets.mnist.MNIST_MD5 = {md5s!r}\n{LAUNCHER}")
    args = ["--model", MODEL, "--routing", "dynamic", "--data-root", str(data), "--train-subset", "256",
            "--test-subset", "100", "--batch-size", "32", "--epochs", "2", "--no-progress", "--threads", "1",
            "--out-dir", str(folder)]
    command = [sys.executable, str(launcher)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   str(launcher)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_mnist_root, small_mnist_md5) -> dict[int, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("ddp")
    data = small_mnist_root / "mnist"
    return {processes: (root / str(processes), run(root / str(processes), processes, data, small_mnist_md5))
            for processes in (1, 2)}


def test_two_gloo_processes_match_one_process(runs):
    one = torch.load(runs[1][0] / CHECKPOINT, weights_only=False)
    two = torch.load(runs[2][0] / CHECKPOINT, weights_only=False)
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    a, b = pd.read_csv(runs[1][0] / METRICS), pd.read_csv(runs[2][0] / METRICS)
    assert a["step"].tolist() == b["step"].tolist() == [8, 16]
    pd.testing.assert_series_equal(a["train_loss"], b["train_loss"], rtol=1e-4)
    pd.testing.assert_series_equal(a["train_accuracy"], b["train_accuracy"])
    # evaluation gathered across ranks: every test image scored once, the same predictions as one process
    pd.testing.assert_series_equal(a["test_accuracy"], b["test_accuracy"])
    assert a["world_size"].tolist() == [1, 1] and b["world_size"].tolist() == [2, 2]


def test_only_rank_zero_prints_and_writes(runs):
    folder, printed = runs[2]
    assert printed.count("epoch 1: train loss") == 1 and printed.count("epoch 2: train loss") == 1
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "config.json", "metrics.csv"]
