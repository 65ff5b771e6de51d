"""The margin loss of Sabour et al. 2017 (eq. 4)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from capsules.layers.checks import check_labels, expect_shape


def margin_loss(
    lengths: Tensor, labels: Tensor, m_plus: float = 0.9, m_minus: float = 0.1, lambda_: float = 0.5
) -> Tensor:
    """Mean over the batch of sum_k T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2.

    lengths [B, K]: class capsule lengths (or any activations in [0, 1]); labels [B]: class indices.
    """
    expect_shape(lengths, (None, None), "[B, K]", "margin_loss lengths")
    B, K = lengths.shape
    target = F.one_hot(check_labels(labels, B, K), K).to(lengths.dtype)
    present = (m_plus - lengths).clamp_min(0).square()
    absent = (lengths - m_minus).clamp_min(0).square()
    return (target * present + lambda_ * (1 - target) * absent).sum(dim=1).mean()
