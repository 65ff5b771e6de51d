"""The spread loss of Hinton et al. 2018 and the schedule of its margin."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from capsules.layers.checks import check_labels, expect_shape
from capsules.losses.options import expect_real
from capsules.losses.reduction import batch_mean


def spread_loss(activations: Tensor, labels: Tensor, margin: float | Tensor) -> Tensor:
    """Mean over the batch of sum_{i != t} max(0, m - (a_t - a_i))^2, t the target class.

    activations [B, K]; labels [B]; margin m >= 0, a number or a one-element tensor (Hinton et al. grow it from
    0.2 to 0.9: `SpreadMarginSchedule`; a negative margin would make every term 0). An empty batch gives 0.
    """
    expect_shape(activations, (None, None), "[B, K]", "spread_loss activations")
    expect_real("spread_loss margin", margin, 0.0)
    B, K = activations.shape
    labels = check_labels(labels, B, K)
    target = activations.gather(1, labels.view(-1, 1))  # [B, 1]
    gaps = (margin - (target - activations)).clamp_min(0).square()
    others = torch.ones_like(gaps).scatter_(1, labels.view(-1, 1), 0.0)
    return batch_mean((gaps * others).sum(dim=1))


class SpreadMarginSchedule:
    """The spread loss margin, growing linearly from `start` to `stop` over `steps` calls of `step()`, then held.

    schedule = SpreadMarginSchedule(steps=total_steps); loss = spread_loss(a, y, schedule.margin); schedule.step()
    `state_dict()` / `load_state_dict()` save and restore the position, so a resumed run continues the schedule.
    """

    def __init__(self, start: float = 0.2, stop: float = 0.9, steps: int = 1):
        self.configure(start, stop, steps)
        self.taken = 0

    def configure(self, start: float, stop: float, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        start, stop = expect_real("start", start, 0.0), expect_real("stop", stop, 0.0)
        if start > stop:
            raise ValueError(f"expected 0 <= start <= stop, got start={start!r}, stop={stop!r}")
        self.start, self.stop, self.steps = float(start), float(stop), steps

    @property
    def margin(self) -> float:
        """start + (stop - start) * min(taken / steps, 1)."""
        return self.start + (self.stop - self.start) * min(self.taken / self.steps, 1.0)

    def step(self) -> None:
        self.taken += 1

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "stop": self.stop, "steps": self.steps, "taken": self.taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"start", "stop", "steps", "taken"} - set(state)
        if missing:
            raise ValueError(f"SpreadMarginSchedule state is missing {sorted(missing)}")
        self.configure(state["start"], state["stop"], state["steps"])
        self.taken = int(state["taken"])

    def __repr__(self) -> str:
        return f"SpreadMarginSchedule(start={self.start}, stop={self.stop}, steps={self.steps}, taken={self.taken})"
