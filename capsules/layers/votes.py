"""Votes of child capsules for parent capsules, as batched matrix products without repeated weights.

Every function returns votes [B, I, J, D] (child i's vote for parent j) in the layout its batched product
writes, with no extra pass to reorder them: the routing backends read the votes a cache-sized chunk of samples at
a time and lay each chunk out parent-major themselves (routing.cpu.chunking), and write the votes' gradient in
the votes' own layout, which the product's backward then reads without a copy. On the CPU the product is
written to memory advised onto huge pages (routing.cpu.product), saving a page fault per 4 KiB of a tensor
written once.

The dense layer's product (vector_votes) lives in routing.linear_votes, where the routers that fuse it with
routing use it too; 4x4 pose matrices reuse it through matrix_transforms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from routing.linear_votes import vector_votes


def matrix_votes(poses: Tensor, weight: Tensor) -> Tensor:
    """V[b, i, j] = M[b, i] @ W[i, j] for 4x4 poses M [B, I, 16] and weight W [I, J, 4, 4] -> votes [B, I, J, 16].

    Row r of M W is row r of M times W, so the flattened vote is the flattened M times kron(I_4, W): the vector
    votes of matrix_transforms(weight), one batched product over children, [I, B, 16] @ [I, 16, J*16], whose
    [I, B, J, 16] output needs no reordering, forward or backward. On the project's 2-core CPU this took about
    half the time of the plain [I, B*4, 4] @ [I, 4, J*4] product plus the copy that puts each vote's 16 entries
    together at the ConvCaps shape, and about the same at the class-capsule shape.
    """
    return vector_votes(poses, matrix_transforms(weight))


def matrix_transforms(weight: Tensor) -> Tensor:
    """The 4x4 transforms W [I, J, 4, 4] as the transforms [I, J, 16, 16] of flattened poses: the vote
    M W flattened is T (M flattened) with T = kron(I_4, W^T), so ``router(poses, acts, transforms=T)`` routes
    the votes of matrix_votes(poses, weight)."""
    I, J = weight.shape[:2]
    eye = torch.eye(4, dtype=weight.dtype, device=weight.device)
    return torch.einsum("rs,ijce->ijresc", eye, weight).reshape(I, J, 16, 16)  # [i, j, (r, e), (s, c)]


def shared_vector_votes(poses: Tensor, weight: Tensor) -> Tensor:
    """Transforms shared over positions: u [B, P, T, K], W [T, J, D, K] -> votes [B, P*T, J, D] (child = (p, t))."""
    B, P, T, _ = poses.shape
    J, D = weight.shape[1:3]
    return torch.einsum("bptk,tjdk->bptjd", poses, weight).reshape(B, P * T, J, D)


def shared_matrix_votes(poses: Tensor, weight: Tensor) -> Tensor:
    """Transforms shared over positions: M [B, P, T, 16], W [T, J, 4, 4] -> votes [B, P*T, J, 16] (child = (p, t))."""
    B, P, T, _ = poses.shape
    J = weight.shape[1]
    votes = torch.einsum("bptrc,tjce->bptjre", poses.reshape(B, P, T, 4, 4), weight)
    return votes.reshape(B, P * T, J, 16)
