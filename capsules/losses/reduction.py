"""The batch mean every loss here reports, defined for an empty batch too."""

from __future__ import annotations

from torch import Tensor


def batch_mean(per_sample: Tensor) -> Tensor:
    """sum / B of per-sample losses [B]: their mean, and 0 (not NaN, as Tensor.mean gives) for an empty batch, so
    that sums of loss x batch size over uneven shards (an evaluation rank with no test images) stay finite."""
    return per_sample.sum() / max(per_sample.shape[0], 1)
