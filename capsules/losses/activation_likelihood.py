"""Likelihood losses on class-capsule activations, for the routings whose papers train with them.

- `nll_loss`: the negative log of the true class's activation, for activations that already sum to 1 over the
  classes (self-routing's a_j = sum_i c_ij a_i / sum_i a_i; SR-CapsNet trains with NLLLoss on their log).
- `logit_cross_entropy`: softmax cross-entropy on the activations' logits log(a / (1 - a)), i.e. on the value a
  router put through its sigmoid (inverted dot-product routing's class head, variational Bayes routing's
  activation logits; both papers train with cross-entropy on those).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from capsules.layers.checks import check_labels, expect_shape
from capsules.losses.reduction import batch_mean

EPS = 1e-12  # keeps the log finite for an activation of exactly 0


def nll_loss(activations: Tensor, labels: Tensor) -> Tensor:
    """Mean over the batch of -log a_t for activations [B, K] in [0, 1] that sum to 1 over K; labels [B]. An empty
    batch gives 0."""
    expect_shape(activations, (None, None), "[B, K]", "nll_loss activations")
    B, K = activations.shape
    return batch_mean(F.nll_loss(torch.log(activations.clamp_min(EPS)), check_labels(labels, B, K), reduction="none"))


def logit_cross_entropy(activations: Tensor, labels: Tensor) -> Tensor:
    """Mean over the batch of the softmax cross-entropy of the logits log(a / (1 - a)) of activations [B, K] in
    (0, 1); labels [B]. An empty batch gives 0."""
    expect_shape(activations, (None, None), "[B, K]", "logit_cross_entropy activations")
    B, K = activations.shape
    eps = torch.finfo(activations.dtype).eps  # 1 - eps must differ from 1 in the activations' dtype
    a = activations.clamp(eps, 1 - eps)
    return batch_mean(F.cross_entropy(torch.log(a) - torch.log1p(-a), check_labels(labels, B, K), reduction="none"))
