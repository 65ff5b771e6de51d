"""What the study trains and how each dataset is evaluated.

An `Entry` is one row of the leaderboard: a registered routing in the compact capsule model, or one of the two
baselines (uniform routing: dynamic routing with 1 iteration, whose couplings stay uniform; a plain CNN of the
capsule model's size). A `Protocol` says how a dataset is trained and which evaluations apply to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import routing

UNIFORM = "uniform"  # dynamic routing with 1 iteration: every coupling 1/J, no routing
CNN = "cnn"  # the plain CNN baseline, no capsules


@dataclass(frozen=True)
class Entry:
    """One trained configuration: `label` names it in tables and plots; `routing` and `iterations` build it
    (routing "none" and model "cnn-baseline" for the CNN)."""

    label: str
    model: str
    routing: str
    iterations: int | None = None

    @property
    def is_baseline(self) -> bool:
        return self.label in (UNIFORM, CNN)


def entries(routings: list[str], model: str, baselines: bool = True) -> list[Entry]:
    """The registered routings asked for (each with its own default iterations), then the two baselines."""
    chosen = [Entry(name, model, name) for name in routings]
    if baselines:
        chosen += [Entry(UNIFORM, model, "dynamic", iterations=1), Entry(CNN, "cnn-baseline", "none")]
    return chosen


@dataclass(frozen=True)
class Protocol:
    """How one dataset is studied.

    canvas: train on images placed at random on a canvas this wide and test on the translated test set (Sabour
    et al.'s affNIST protocol), or None; affine: evaluate on the affNIST-style set built from the test images;
    rotation: accuracy against rotation angle; viewpoints: a smallNORB viewpoint split (trained on the familiar
    views; its clean test set is the familiar test views, and the novel test views are scored too).
    """

    dataset: str
    canvas: int | None = None
    affine: bool = False
    rotation: bool = True
    viewpoints: str | None = None  # "azimuth" or "elevation"


PROTOCOLS = {
    "mnist": Protocol("mnist", canvas=40, affine=True),
    "fashion-mnist": Protocol("fashion-mnist", canvas=40, affine=True),
    "cifar10": Protocol("cifar10"),
    "svhn": Protocol("svhn"),
    "smallnorb-azimuth": Protocol("smallnorb-azimuth", rotation=False, viewpoints="azimuth"),
    "smallnorb-elevation": Protocol("smallnorb-elevation", rotation=False, viewpoints="elevation"),
}


def check_routings(names: list[str]) -> list[str]:
    """The names, each checked against routing.available() (ValueError listing what exists)."""
    unknown = [n for n in names if n not in routing.available()]
    if unknown:
        raise ValueError(f"unknown routing(s) {', '.join(unknown)}; available: {', '.join(routing.available())}")
    return names
