"""Sums over children as batched matrix products on parent-major votes [B, J, I, D], shared by the PyTorch
backends: with the votes laid out parent-major, every sum over children and every agreement is one batched
matrix-vector product."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from routing.cpu.chunking import row_chunks, votes_row_bytes


def parent_major(votes: Tensor, dtype: torch.dtype) -> Tensor:
    """votes [B, I, J, D] -> contiguous [B, J, I, D] in `dtype` (no copy when already laid out that way)."""
    return votes.transpose(1, 2).to(dtype).contiguous()


def parent_major_chunks(votes: Tensor, activations: Tensor | None, dtype: torch.dtype, keep: Tensor | None = None
                        ) -> Iterator[tuple[slice, Tensor, Tensor | None]]:
    """(rows, u [b, J, I, D], a [b, 1, I] or None) for each cache-sized chunk of samples of votes [B, I, J, D]
    (routing.cpu.chunking): the chunk's votes parent-major and its activations, both in `dtype`. `keep` (a
    contiguous [B, J, I, D] in `dtype`, or None) receives the parent-major votes, and u is then its chunk."""
    for rows in row_chunks(votes.shape[0], votes_row_bytes(votes, dtype), device=votes.device):
        u = parent_major(votes[rows], dtype) if keep is None else keep[rows].copy_(votes[rows].transpose(1, 2))
        yield rows, u, None if activations is None else activations[rows].to(dtype).unsqueeze(1)


def votes_gradient_chunk(grad_votes: Tensor | None, rows: slice, dtype: torch.dtype, scratch: Tensor | None = None
                         ) -> tuple[Tensor | None, Tensor | None]:
    """Where a backward writes one chunk's votes' gradient, parent-major [n, J, I, D]: (out, copy_to).

    out is grad_votes[rows] itself, viewed parent-major, when that view is contiguous in `dtype` (copy_to None:
    nothing to copy); else `scratch` (None: the backward allocates), and copy_to is the view to copy the chunk's
    gradient into afterwards. (None, None) when no votes' gradient is wanted (grad_votes None)."""
    if grad_votes is None:
        return None, None
    target = grad_votes[rows].transpose(1, 2)
    if target.is_contiguous() and target.dtype == dtype:
        return target, None
    return scratch, target


def agreement(u: Tensor, v: Tensor) -> Tensor:
    """<u_ij, v_j> for u [B, J, I, D], v [B, J, D] -> [B, J, I], computed as v @ u^T (several times faster than
    u @ v at the dense layer's size on the project's CPU)."""
    return (v.unsqueeze(2) @ u.transpose(-1, -2)).squeeze(2)


def weighted_sum(w: Tensor, u: Tensor) -> Tensor:
    """sum_i w_ji u_jid for w [B, J, I], u [B, J, I, D] -> [B, J, D]."""
    return (w.unsqueeze(2) @ u).squeeze(2)


def low_rank_times_centred(lefts: list[Tensor], scales: list[Tensor], shifts: list[Tensor], X: Tensor,
                           out: Tensor) -> None:
    """out = sum_k left_k (x) (scale_k * X + shift_k), the votes' gradient of the EM-like routers, written into out.

    lefts: K tensors [n, J, I]; scales, shifts: K tensors [n, J, D]; X [n, J, I, D] (the votes centred on a
    parent's mean); out [n, J, I, D], contiguous. Two batched products of rank K: the scales' times X, plus the
    shifts'."""
    n, J, I, D = X.shape
    K = len(lefts)
    left = torch.stack(lefts, dim=2).view(n * J, K, I).transpose(1, 2)  # [n*J, I, K]
    flat = out.view(n * J, I, D)
    torch.bmm(left, torch.stack(scales, dim=2).view(n * J, K, D), out=flat)
    out.mul_(X)
    flat.baddbmm_(left, torch.stack(shifts, dim=2).view(n * J, K, D))
