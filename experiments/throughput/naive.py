"""The same-run baselines: the CPU targets' layers written the way most public PyTorch implementations write them.

Our code, not theirs, timed beside our layers on the same machine at the same moment (the public implementations'
own times, REFERENCE.md, come from another machine). Both build the whole votes tensor from weights broadcast
over the batch and let autograd differentiate every op of the routing loop.

- NaiveCapsuleLinear (dynamic routing, as XifengGuo's and gram-ai's CapsNets): W [1, I, J, D, D_in], votes
  u_hat [B, I, J, D] from one matmul, logits b [B, I, J]; per iteration c = softmax over parents,
  s = sum_i c u_hat, v = squash(s), b += <u_hat, v> (not after the last).
- NaiveEMConvCaps (EM routing, as yl-1993's matrix capsules): K x K windows of the pose grid unfolded, votes
  M W for W [1, K*K*T_in, T_out, 4, 4], then EM routing per window with R normalised over the window's parents.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kernels.em.schedule import inverse_temperatures


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


class NaiveEMConvCaps(nn.Module):
    """Convolutional capsules with EM routing, public-pattern: poses [B, H, W, T_in, 16], activations
    [B, H, W, T_in] -> (poses [B, Ho, Wo, T_out, 16], activations [B, Ho, Wo, T_out]), stride 1."""

    def __init__(self, in_types: int, out_types: int, kernel_size: int, iterations: int = 3,
                 final_lambda: float = 0.01, min_var: float = 1e-4):
        super().__init__()
        self.kernel_size, self.iterations = kernel_size, iterations
        self.final_lambda, self.min_var = final_lambda, min_var
        self.weight = nn.Parameter(torch.randn(1, kernel_size * kernel_size * in_types, out_types, 4, 4) * 0.5)
        self.beta_u = nn.Parameter(torch.zeros(out_types))
        self.beta_a = nn.Parameter(torch.zeros(out_types))

    def forward(self, poses: Tensor, activations: Tensor) -> tuple[Tensor, Tensor]:
        B, H, W, T, _ = poses.shape
        K = self.kernel_size
        Ho, Wo = H - K + 1, W - K + 1
        windows = poses.unfold(1, K, 1).unfold(2, K, 1)  # [B, Ho, Wo, T, 16, K, K]
        windows = windows.permute(0, 1, 2, 5, 6, 3, 4).reshape(B * Ho * Wo, K * K * T, 1, 4, 4)
        acts = activations.unfold(1, K, 1).unfold(2, K, 1).permute(0, 1, 2, 4, 5, 3).reshape(B * Ho * Wo, K * K * T)
        votes = (windows @ self.weight).flatten(-2)  # [N, I, J, 16], the weights broadcast over windows
        mu, a_out = self.em_routing(votes, acts)
        J = votes.shape[2]
        return mu.view(B, Ho, Wo, J, 16), a_out.view(B, Ho, Wo, J)

    def em_routing(self, votes: Tensor, acts: Tensor) -> tuple[Tensor, Tensor]:
        N, I, J, _ = votes.shape
        R = votes.new_full((N, I, J), 1.0 / J)
        a = acts.unsqueeze(-1)  # [N, I, 1]
        for t, lam in enumerate(inverse_temperatures(self.iterations, self.final_lambda)):
            Rp = (R * a).unsqueeze(-1)  # [N, I, J, 1]
            mass = Rp.sum(1, keepdim=True) + 1e-8  # [N, 1, J, 1]
            mu = (Rp * votes).sum(1, keepdim=True) / mass
            var = (Rp * (votes - mu) ** 2).sum(1, keepdim=True) / mass + self.min_var
            cost = ((self.beta_u.view(1, 1, J, 1) + 0.5 * torch.log(var)) * mass).sum(-1)  # [N, 1, J]
            a_out = torch.sigmoid(lam * (self.beta_a.view(1, 1, J) - cost))
            if t < self.iterations - 1:
                log_p = -((votes - mu) ** 2 / (2 * var) + 0.5 * torch.log(2 * math.pi * var)).sum(-1)  # [N, I, J]
                R = torch.softmax(torch.log(a_out) + log_p, dim=2)
        return mu.squeeze(1), a_out.squeeze(1)
