"""The same-run baseline: the dense capsule layer written the way most public PyTorch implementations write it.

Our code, not theirs, timed beside our layers on the same machine at the same moment (the public implementations'
own times, REFERENCE.md, come from another machine): the weights W [1, I, J, D, D_in] broadcast over the batch, the
votes u_hat [B, I, J, D] from one matmul, logits b [B, I, J], and per iteration c = softmax over parents,
s = sum_i c u_hat, v = squash(s), b += <u_hat, v> (not after the last), with autograd's backward through every op.
No naive form of the EM ConvCaps layer exists here, so the EM target has no same-run baseline.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NaiveCapsuleLinear(nn.Module):
    """Dense capsule layer with dynamic routing, public-pattern: poses [B, I, D_in] -> (v [B, J, D], |v| [B, J])."""

    def __init__(self, in_caps: int, in_dim: int, out_caps: int, out_dim: int, iterations: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, in_caps, out_caps, out_dim, in_dim) / in_dim**0.5)
        self.iterations = iterations

    def forward(self, u: Tensor, activations: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`activations` is accepted for the layers' call signature and ignored (CapsuleLinear's case has none)."""
        u_hat = (self.weight @ u[:, :, None, :, None]).squeeze(-1)  # [B, I, J, D]
        logits = u_hat.new_zeros(u_hat.shape[:3])
        for r in range(self.iterations):
            c = logits.softmax(dim=2)
            s = (c.unsqueeze(-1) * u_hat).sum(dim=1)  # [B, J, D]
            norm2 = (s * s).sum(-1, keepdim=True)
            v = norm2 / (1 + norm2) * s / torch.sqrt(norm2 + 1e-8)
            if r < self.iterations - 1:
                logits = logits + (u_hat * v.unsqueeze(1)).sum(-1)
        return v, v.norm(dim=-1)
