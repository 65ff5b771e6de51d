"""Scoring a trained model: accuracy on a set of images, under attack, and how fast it evaluates."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from experiments.study.attacks import LossFn, bim, fgsm

ATTACKS: dict[str, Callable[..., Tensor]] = {"fgsm": fgsm, "bim": bim}


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500,
             device: torch.device | str = "cpu") -> tuple[float, float]:
    """(share of images [N, C, H, W] classified as labels [N], evaluation samples per second) in eval mode."""
    if len(labels) == 0:
        raise ValueError("accuracy needs at least one image")
    model.eval()
    correct, start = 0, time.perf_counter()
    for chunk, chunk_labels in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        scores = model(chunk.to(device), None).activations
        correct += (scores.argmax(dim=1).cpu() == chunk_labels).sum().item()
    seconds = time.perf_counter() - start
    return correct / len(labels), len(labels) / seconds


def attacked_accuracy(model: nn.Module, loss: LossFn, images: Tensor, labels: Tensor, attack: str, epsilon: float,
                      batch_size: int = 250, device: torch.device | str = "cpu", steps: int = 10) -> float:
    """Accuracy on adversarial versions of images [N, C, H, W] in [0, 1] made by `attack` ("fgsm" or "bim") at
    `epsilon` against the model in eval mode (BIM with `steps` steps)."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; expected one of {', '.join(ATTACKS)}")
    model.eval()
    options = {"steps": steps} if attack == "bim" else {}
    correct = 0
    for chunk, chunk_labels in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        chunk, chunk_labels = chunk.to(device), chunk_labels.to(device)
        adversarial = ATTACKS[attack](model, loss, chunk, chunk_labels, epsilon, **options)
        with torch.no_grad():
            correct += (model(adversarial, None).activations.argmax(dim=1) == chunk_labels).sum().item()
    return correct / len(labels)
