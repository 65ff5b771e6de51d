"""Votes of child capsules for parent capsules, as batched matrix products laid out parent-major.

Every function returns votes [B, I, J, D] (child i's vote for parent j) whose memory is a contiguous
[B, J, I, D] tensor: the routing backends work on parent-major votes, and a `.transpose(1, 2)` view of that
layout reaches them without a copy. The weights are never repeated over the batch or over positions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def vector_votes(poses: Tensor, weight: Tensor) -> Tensor:
    """u_hat[b, i, j] = W[i, j] @ u[b, i] for poses u [B, I, K] and weight W [I, J, D, K] -> votes [B, I, J, D]."""
    return torch.einsum("ijdk,bik->bjid", weight, poses).contiguous().transpose(1, 2)


def matrix_votes(poses: Tensor, weight: Tensor) -> Tensor:
    """V[b, i, j] = M[b, i] @ W[i, j] for 4x4 poses M [B, I, 16] and weight W [I, J, 4, 4] -> votes [B, I, J, 16]."""
    B, I, _ = poses.shape
    J = weight.shape[1]
    votes = torch.einsum("birc,ijce->bjire", poses.reshape(B, I, 4, 4), weight)
    return votes.reshape(B, J, I, 16).transpose(1, 2)


def shared_vector_votes(poses: Tensor, weight: Tensor) -> Tensor:
    """Transforms shared over positions: u [B, P, T, K], W [T, J, D, K] -> votes [B, P*T, J, D] (child = (p, t))."""
    B, P, T, _ = poses.shape
    J, D = weight.shape[1:3]
    votes = torch.einsum("tjdk,bptk->bjptd", weight, poses)
    return votes.reshape(B, J, P * T, D).transpose(1, 2)


def shared_matrix_votes(poses: Tensor, weight: Tensor) -> Tensor:
    """Transforms shared over positions: M [B, P, T, 16], W [T, J, 4, 4] -> votes [B, P*T, J, 16] (child = (p, t))."""
    B, P, T, _ = poses.shape
    J = weight.shape[1]
    votes = torch.einsum("bptrc,tjce->bjptre", poses.reshape(B, P, T, 4, 4), weight)
    return votes.reshape(B, J, P * T, 16).transpose(1, 2)
