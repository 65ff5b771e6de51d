"""Learning-rate and spread-margin schedules as pure functions of the step and of training progress.

Being functions of counters that the checkpoint saves (step, training time), they resume exactly with no state of
their own. Progress runs from 0 to 1: the share of the planned steps done, or, under a time budget, the larger of
that and the share of the budget spent (the run then ends when either is used up).
"""

from __future__ import annotations

import math

from experiments.train.config import TrainConfig

ONECYCLE_START_FRACTION = 1 / 25  # onecycle starts at lr / 25, as torch's OneCycleLR (div_factor=25)


def progress(config: TrainConfig, step: int, total_steps: int, train_seconds: float) -> float:
    """Share of training done, in [0, 1]: steps done over total_steps, or the budget spent when that is larger."""
    done = step / total_steps
    if config.time_budget_min is not None:
        done = max(done, train_seconds / (60 * config.time_budget_min))
    return min(done, 1.0)


def lr_at(config: TrainConfig, step: int, done: float) -> float:
    """The learning rate for `step` at progress `done`.

    exponential: lr * decay_rate ** (step / decay_steps) (Sabour et al.'s schedule, by step);
    onecycle: linear warm-up from lr / 25 to lr over warmup_fraction, then a cosine down to final_lr_fraction * lr;
    cosine: cosine from lr to final_lr_fraction * lr; constant: lr.
    """
    lr, low = config.lr, config.final_lr_fraction * config.lr
    if config.schedule == "exponential":
        return lr * config.decay_rate ** (step / config.decay_steps)
    if config.schedule == "constant":
        return lr
    warmup = config.warmup_fraction if config.schedule == "onecycle" else 0.0
    if done < warmup:
        start = lr * ONECYCLE_START_FRACTION
        return start + (lr - start) * done / warmup
    fraction = (done - warmup) / (1 - warmup)
    return low + (lr - low) * 0.5 * (1 + math.cos(math.pi * fraction))


def spread_margin_at(config: TrainConfig, done: float) -> float:
    """Spread-loss margin at progress `done`: linear from spread_margin_start to spread_margin_end over the first
    spread_margin_fraction of training, then held (Hinton et al. 2018 grow it from 0.2 to 0.9)."""
    ramp = min(1.0, done / config.spread_margin_fraction)
    return config.spread_margin_start + (config.spread_margin_end - config.spread_margin_start) * ramp
