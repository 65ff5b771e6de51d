"""The margin loss of Sabour et al. 2017 (eq. 4)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from capsules.layers.checks import check_labels, expect_shape
from capsules.losses.options import expect_real
from capsules.losses.reduction import batch_mean


def margin_loss(
    lengths: Tensor, labels: Tensor, m_plus: float = 0.9, m_minus: float = 0.1, lambda_: float = 0.5
) -> Tensor:
    """Mean over the batch of sum_k T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2.

    lengths [B, K]: class capsule lengths (or any activations in [0, 1]); labels [B]: class indices. Margins
    0 <= m- <= m+ <= 1, lambda >= 0. An empty batch gives 0.
    """
    expect_shape(lengths, (None, None), "[B, K]", "margin_loss lengths")
    m_plus, m_minus = expect_real("m_plus", m_plus, 0.0, 1.0), expect_real("m_minus", m_minus, 0.0, 1.0)
    if m_minus > m_plus:
        raise ValueError(f"expected m_minus <= m_plus, got m_minus={m_minus!r}, m_plus={m_plus!r}")
    lambda_ = expect_real("lambda_", lambda_, 0.0)
    B, K = lengths.shape
    target = F.one_hot(check_labels(labels, B, K), K).to(lengths.dtype)
    present = (m_plus - lengths).clamp_min(0).square()
    absent = (lengths - m_minus).clamp_min(0).square()
    return batch_mean((target * present + lambda_ * (1 - target) * absent).sum(dim=1))
