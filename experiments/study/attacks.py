"""White-box, untargeted adversarial examples with gradients through the whole model, routing iterations included.

`fgsm` (Goodfellow et al. 2015): one step of size epsilon along the sign of the loss gradient. `bim` (Kurakin et al.
2017, the basic iterative method): `steps` steps of size `step_size` (default epsilon / 4), each followed by a
projection onto the L-infinity ball of radius epsilon around the clean image. Both keep pixels in [0, 1].

The study attacks every model through one loss, `class_score_cross_entropy`, not the loss each was trained with:
the margin and spread losses are exactly 0 (with a zero gradient) once a prediction is confident enough, so an
attack on them leaves confidently classified images untouched and the model looks robust when it is not
(gradient masking).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LossFn = Callable[[object, Tensor], Tensor]
EPS = 1e-12  # keeps the log finite for an activation of exactly 0


def class_score_cross_entropy(output, labels: Tensor) -> Tensor:
    """Cross-entropy of the class activations [B, K] normalised over the classes (logits log a_k): never flat
    while the true class is not certain, for capsule lengths, EM's sigmoid activations and a CNN's softmax (for which
    it is the usual cross-entropy) alike."""
    return F.cross_entropy(torch.log(output.activations.float().clamp_min(EPS)), labels)


def _gradient_sign(model: nn.Module, loss: LossFn, images: Tensor, labels: Tensor) -> Tensor:
    images = images.detach().requires_grad_(True)
    value = loss(model(images, None), labels)
    (grad,) = torch.autograd.grad(value, images)
    return grad.sign()


def fgsm(model: nn.Module, loss: LossFn, images: Tensor, labels: Tensor, epsilon: float) -> Tensor:
    """images [B, C, H, W] in [0, 1] -> adversarial images x + epsilon sign(grad_x loss), clipped to [0, 1]."""
    if epsilon == 0:
        return images
    return (images + epsilon * _gradient_sign(model, loss, images, labels)).clamp(0, 1).detach()


def bim(model: nn.Module, loss: LossFn, images: Tensor, labels: Tensor, epsilon: float, steps: int = 10,
        step_size: float | None = None) -> Tensor:
    """images [B, C, H, W] in [0, 1] -> `steps` FGSM steps of `step_size` (epsilon / 4 by default), each projected
    back into [x - epsilon, x + epsilon] and [0, 1]."""
    if epsilon == 0:
        return images
    step = epsilon / 4 if step_size is None else step_size
    adversarial = images.clone()
    for _ in range(steps):
        adversarial = adversarial + step * _gradient_sign(model, loss, adversarial, labels)
        adversarial = torch.min(torch.max(adversarial, images - epsilon), images + epsilon).clamp(0, 1).detach()
    return adversarial
