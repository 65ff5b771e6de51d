"""Checkpoints that survive interruption and resume a run exactly.

A checkpoint holds everything the next epoch depends on: model and optimiser state, the step and epoch counters,
the training time spent so far, the loss's state (the spread-loss margin), the data-order generator, torch's,
numpy's and Python's global random states, and the rows of the run's table. It is written to a temporary file in
the same folder, flushed to disk and renamed over the old one, so a kill at any moment leaves the last complete
checkpoint.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.common.atomic import atomic_write


def rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python global random states."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and Python's random module."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """torch.save `state` to `path` through a temporary file and a rename (atomic on POSIX)."""
    with atomic_write(path, binary=True) as handle:
        torch.save(state, handle)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: unreadable, not written by training, or another run's."""


CHECKPOINT_KEYS = ("model", "optimizer", "data_generator", "rng", "run")  # what `save_run` writes


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state saved at `path` (tensors on the CPU). FileNotFoundError when there is none; CheckpointError
    naming the file when it is empty, truncated, corrupt or not a training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume at {path}")
    advice = ("it may have been cut short or replaced; restore a good copy, or start the run again without "
              "--resume in a new --out-dir")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty: {advice}")
    try:
        # Our own files: random states hold numpy arrays and Python tuples, which the weights-only loader refuses.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch, zipfile and pickle each fail their own way on a damaged file
        text = str(error).strip().splitlines()
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__}: "
                              f"{text[0] if text else 'no detail'}): {advice}") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint (it lacks {', '.join(missing)}): {advice}")
    return state
