"""TensorBoard scalars of a training run (`capsule-train --tensorboard`), in <out_dir>/tensorboard.

tensorboard is an optional extra (``pip install -e ".[tensorboard]"``): `require_tensorboard` turns its absence into
one clear error before any data is read. Every scalar is logged against the optimiser step, the epoch's too, so
that a resumed run can drop what an interrupted one wrote after its last checkpoint (``purge_step``): the
curves then match an uninterrupted run's.

    tensorboard --logdir runs/<run>/tensorboard
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"
INSTALL_HINT = 'pip install -e ".[tensorboard]"'
# Per-epoch row columns that become scalars, under the tag on the right.
EPOCH_SCALARS = {"train_loss": "epoch/train_loss", "train_accuracy": "epoch/train_accuracy",
                 "test_loss": "epoch/test_loss", "test_accuracy": "epoch/test_accuracy",
                 "samples_per_s": "epoch/samples_per_s", "lr": "epoch/lr"}


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def require_tensorboard() -> None:
    """ValueError with the install command when the tensorboard package is missing."""
    if not tensorboard_available():
        raise ValueError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL_HINT}")


class ScalarLog:
    """Writes the run's scalars when `enabled` (the main process of a --tensorboard run); otherwise does nothing.
    `steps_done`: the optimiser steps of the checkpoint the run starts from (0 for a new run).

    ``step(step, loss, accuracy, lr)`` after every optimiser step (the epoch's running mean training loss and
    accuracy so far, as the progress bar shows them, and the step's lr);
    ``epoch(row)`` after every epoch with the run table's row (EPOCH_SCALARS), which also flushes the file.
    """

    def __init__(self, out_dir: str | Path, enabled: bool, steps_done: int = 0):
        self.writer = None
        if enabled:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when asked for

            # Events after the checkpoint's last step came from the interrupted run after its checkpoint: purged.
            self.writer = SummaryWriter(str(Path(out_dir) / TENSORBOARD_DIR), purge_step=steps_done + 1)

    def step(self, step: int, loss: float, accuracy: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("step/train_loss", loss, step)
            self.writer.add_scalar("step/train_accuracy", accuracy, step)
            self.writer.add_scalar("step/lr", lr, step)

    def epoch(self, row: dict[str, Any]) -> None:
        if self.writer is not None:
            for column, tag in EPOCH_SCALARS.items():
                if column in row:
                    self.writer.add_scalar(tag, row[column], row["step"])
            self.writer.add_scalar("epoch/epoch", row["epoch"], row["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
