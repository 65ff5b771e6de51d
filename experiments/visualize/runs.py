"""A trained model rebuilt from the run folder capsule-train wrote, and the test images it was evaluated on."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from experiments.train.config import TrainConfig
from experiments.train.data import TrainingData, load_data
from experiments.train.run import CHECKPOINT, CONFIG, build_model


@dataclass
class Run:
    """A trained model in eval mode on `device`, with the configuration it was trained with and the checkpoint's
    path; `label` names it in figures (its routing, unless that is ambiguous)."""

    checkpoint: Path
    config: TrainConfig
    model: nn.Module
    label: str


def checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """The checkpoint at `path`: a checkpoint file, or a run folder holding checkpoint.pt. FileNotFoundError
    naming what was looked for otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected a run folder of capsule-train, or the "
                                f"{CHECKPOINT} in one)")
    return path


def read_config(checkpoint: Path) -> TrainConfig:
    """The TrainConfig saved as config.json beside `checkpoint`; fields it lacks (older runs) keep their defaults
    and keys this version does not know are ignored."""
    path = checkpoint.parent / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG} beside {checkpoint}: the model is rebuilt from the configuration "
                                f"capsule-train saves in the run folder")
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable JSON configuration: {error}") from error
    if not isinstance(saved, dict):
        raise ValueError(f"{path} must hold a JSON object of training options, got {type(saved).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{key: value for key, value in saved.items() if key in known})


def read_model_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model's state dict from a checkpoint of capsule-train; ValueError for a file that is not one."""
    try:
        # Our own format: its random states hold numpy arrays and Python tuples, which the weights-only loader refuses.
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file fails in the zip reader, the unpickler or torch
        raise ValueError(f"{checkpoint} is not a readable checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'no details'})") from error
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f"{checkpoint} is not a capsule-train checkpoint: it has no 'model' state dict")
    return state["model"]


def load_run(path: str | os.PathLike[str], data: TrainingData, device: torch.device) -> Run:
    """The model of the run at `path` (checkpoint file or run folder), sized for `data`, weights loaded, in eval
    mode on `device`."""
    checkpoint = checkpoint_file(path)
    config = read_config(checkpoint)
    state = read_model_state(checkpoint)
    model = build_model(config, data)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{checkpoint} does not fit the model its {CONFIG} describes ({config.model}, "
                         f"{config.routing}): {str(error).splitlines()[0]}") from error
    return Run(checkpoint, config, model.to(device).eval(), config.routing)


def load_test_images(config: TrainConfig, root: str | os.PathLike[str] | None, count: int) -> TrainingData:
    """The run's dataset with its first `count` test images, preprocessed as training evaluated them. `root`
    overrides the folder the run was trained from (None: the run's own data_root, else $CAPSULES_DATA)."""
    root = root if root is not None else config.data_root
    return load_data(config.dataset, root, train_subset=1, test_subset=count, max_shift=config.max_shift,
                     smallnorb_view=config.smallnorb_view, canvas=config.canvas)


def device_from(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; any other name as torch.device takes it (ValueError if unknown)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def unique_labels(runs: list[Run]) -> None:
    """Make the runs' labels distinct: the routing alone where that is unique, else with its iterations (dynamic
    routing with 1 iteration is the uniform-routing baseline), else the model too, else the run folder's name."""
    def clashes(labels: list[str]) -> bool:
        return len(set(labels)) < len(labels)

    def iterations(config: TrainConfig) -> str:
        count = config.routing_iterations
        return "" if count is None else f", {count} iteration{'s' if count != 1 else ''}"

    labels = [run.config.routing for run in runs]
    if clashes(labels):
        labels = [f"{run.config.routing}{iterations(run.config)}" for run in runs]
    if clashes(labels):
        labels = [f"{label} ({run.config.model})" for label, run in zip(labels, runs, strict=True)]
    if clashes(labels):
        labels = [f"{label}, {run.checkpoint.parent.name}" for label, run in zip(labels, runs, strict=True)]
    if clashes(labels):
        labels = [f"{label} #{i + 1}" for i, label in enumerate(labels)]
    for run, label in zip(runs, labels, strict=True):
        run.label = label
