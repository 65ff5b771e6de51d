"""Resuming a run safely: the new settings must be the run's own, and the checkpoint must be one this run wrote.

`check_resume` runs before any data is read: the checkpoint must exist, and the settings must equal those in the
run's config.json except the ones that only extend the run or say where and how it runs (`MAY_CHANGE`: more epochs
or a longer time budget continue it; device, threads, data folder, progress bar and logging do not change what is
computed). A difference is refused with a message listing each one, unless --allow-config-change is given; then
the run continues with the new settings and `save_config` keeps the old config.json as config.until-epoch<E>.json,
so the record of how the first epochs were made survives. `restore` loads the checkpoint into the model, optimiser
and generators, turning an unreadable file or one from another model, routing or width into a `CheckpointError`
that names the file and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments.common.atomic import write_text_atomic
from experiments.train.checkpoint import CheckpointError, load_checkpoint, set_rng_state
from experiments.train.config import TrainConfig

MAY_CHANGE = frozenset({"epochs", "time_budget_min", "resume", "allow_config_change", "device", "threads",
                        "data_root", "out_dir", "progress", "tensorboard", "eval_batch_size"})


def saved_config(path: Path) -> dict[str, Any] | None:
    """The settings in a run's config.json (None when the run has none); ValueError naming a file that is not one."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable run configuration ({error}); restore it, or resume with "
                         f"--allow-config-change to replace it") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is not a run configuration (a JSON object of settings); restore it, or resume "
                         f"with --allow-config-change to replace it")
    return saved


def config_differences(saved: Mapping[str, Any], config: TrainConfig) -> list[str]:
    """'name: saved -> new' for every setting outside MAY_CHANGE that differs (a setting the saved file lacks,
    written before it existed, counts as its default)."""
    current = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as the saved file holds them
    defaults = json.loads(json.dumps(TrainConfig().to_dict()))
    changes = []
    for f in fields(TrainConfig):
        if f.name in MAY_CHANGE:
            continue
        before = saved.get(f.name, defaults[f.name])
        if before != current[f.name]:
            changes.append(f"{f.name}: {before!r} -> {current[f.name]!r}")
    changes += [f"{name}: {saved[name]!r} -> (no such setting)" for name in sorted(set(saved) - set(current))]
    return changes


def check_resume(config: TrainConfig, checkpoint: Path, config_path: Path) -> list[str]:
    """Before any data is read: FileNotFoundError when there is no checkpoint; ValueError listing the differences
    from config.json unless config.allow_config_change (then they are returned, for the log)."""
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint to resume at {checkpoint}; start the run without --resume")
    saved = saved_config(config_path) if not config.allow_config_change else _readable_or_none(config_path)
    changes = [] if saved is None else config_differences(saved, config)
    if changes and not config.allow_config_change:
        raise ValueError(f"--resume with settings that differ from the run's {config_path}: {'; '.join(changes)}. "
                         f"Resume with the run's settings, or pass --allow-config-change to continue with the new "
                         f"ones (the old config.json is kept)")
    return changes


def _readable_or_none(path: Path) -> dict[str, Any] | None:
    try:
        return saved_config(path)
    except ValueError:
        return None


def save_config(config: TrainConfig, path: Path, epoch: int) -> None:
    """Write config.json; when it held other settings (a resume with --allow-config-change), keep the old file as
    config.until-epoch<epoch>.json beside it first."""
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    if config.resume and path.is_file():
        old = path.read_text()
        if old != text:
            saved = _readable_or_none(path)
            if saved is None or config_differences(saved, config):
                write_text_atomic(path.with_name(f"{path.stem}.until-epoch{epoch}{path.suffix}"), old)
    write_text_atomic(path, text)


def restore(path: Path, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
            data_generator: torch.Generator) -> dict[str, Any]:
    """Load the checkpoint at `path` into the model, the optimiser, the data generator and the global random
    states; returns its run counters. CheckpointError (naming the file and what to do) when it does not fit."""
    checkpoint = load_checkpoint(path)
    what = f"{config.model} + {config.routing}" + (f" with {config.model_options}" if config.model_options else "")
    if not isinstance(checkpoint["model"], Mapping):
        raise CheckpointError(f"{path} is not a training checkpoint (its model state is a "
                              f"{type(checkpoint['model']).__name__}, not a state dict): start the run again "
                              f"without --resume in a new --out-dir")
    mismatch = state_dict_mismatch(checkpoint["model"], model.state_dict())
    if mismatch:
        raise CheckpointError(f"{path} holds another model's weights ({mismatch}): it does not fit {what}. Resume "
                              f"with the settings the run was made with (its config.json), or start a new run in "
                              f"another --out-dir")
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        data_generator.set_state(checkpoint["data_generator"])
        set_rng_state(checkpoint["rng"])
        run = dict(checkpoint["run"])
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} does not fit this run ({what}, --optimizer {config.optimizer}): {first}. "
                              f"Resume with the settings the run was made with (its config.json), or start a new "
                              f"run in another --out-dir") from None
    return run


def state_dict_mismatch(saved: Mapping[str, Any], wanted: Mapping[str, torch.Tensor], shown: int = 3) -> str:
    """A short account of how two state dicts differ (missing, unexpected and resized entries), '' if they fit."""
    missing = [k for k in wanted if k not in saved]
    unexpected = [k for k in saved if k not in wanted]
    resized = [f"{k} {list(saved[k].shape)} vs {list(v.shape)}" for k, v in wanted.items()
               if k in saved and isinstance(saved[k], torch.Tensor) and saved[k].shape != v.shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("other shapes", resized)):
        if items:
            more = f" and {len(items) - shown} more" if len(items) > shown else ""
            parts.append(f"{label}: {', '.join(items[:shown])}{more}")
    return "; ".join(parts)
