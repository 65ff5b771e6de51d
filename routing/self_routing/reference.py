"""Self-routing (Hahn, Pyeon & Kim 2019): the reference PyTorch math on votes.

Per sample, with votes u_ij [I, J, D], children's activations a_i (ones when not given) and the learned routing
weights w [in_caps, J, D] and biases beta [in_caps, J] (child i uses row i % in_caps):
    b_ij = <w_ij, u_ij> + beta_ij;  c_ij = softmax_j(b_ij)
    a_j = sum_i c_ij a_i / max(sum_i a_i, eps);  v_j = sum_i c_ij a_i u_ij / max(sum_i c_ij a_i, eps)
One pass, no squash. Samples are routed a cache-sized chunk at a time (routing.cpu.chunking): the chunks are
``split`` views of the votes, so autograd's backward concatenates their gradients once (SplitBackward) and the
votes-sized temporaries of the products (u * w, c a u) are chunk-sized.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.utils import accumulation_dtype
from routing.cpu.chunking import row_chunks, votes_row_bytes


def child_rows(parameter: Tensor, children: int, dtype: torch.dtype) -> Tensor:
    """A per-child parameter [in_caps, ...] in `dtype`, with one row per child: child i gets row i % in_caps
    (children = m * in_caps, as ClassCaps' position-major, type-minor children)."""
    parameter = parameter.to(dtype)
    repeats = children // parameter.shape[0]
    return parameter if repeats == 1 else parameter.repeat(repeats, *([1] * (parameter.ndim - 1)))


def chunk_sizes(batch: int, row_bytes: int, device: torch.device) -> list[int]:
    """Sizes of the cache-sized chunks of samples (one chunk on a GPU or with the CPU machinery off)."""
    return [rows.stop - rows.start for rows in row_chunks(batch, row_bytes, device=device)]


def split_rows(t: Tensor | None, sizes: list[int]) -> list[Tensor | None]:
    """`t` split into chunks of samples (views; None stays None for every chunk)."""
    return [None] * len(sizes) if t is None else list(t.split(sizes))


def parents(c: Tensor, a: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """From the assignments c [b, I, J] and children's activations a [b, I] (None: ones): (the weights
    c_ij a_i [b, I, J], their sums over children clamped below at eps [b, J, 1], the parents' activations
    a_j = sum_i c_ij a_i / max(sum_i a_i, eps) [b, J])."""
    if a is None:
        weights = c
        total = float(max(c.shape[1], eps))
    else:
        weights = c * a.unsqueeze(-1)
        total = a.sum(dim=1, keepdim=True).clamp_min(eps)
    mass = weights.sum(dim=1)
    return weights, mass.clamp_min(eps).unsqueeze(-1), mass / total


def route_chunk(u: Tensor, a: Tensor | None, weight: Tensor, bias: Tensor, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Votes u [b, I, J, D] (any strides), a [b, I] or None, weight [I, J, D], bias [I, J], all in one dtype ->
    (v [b, J, D], a_j [b, J], c [b, I, J])."""
    logits = (u * weight).sum(dim=-1) + bias
    c = logits.softmax(dim=-1)  # over parents
    weights, mass, a_out = parents(c, a, eps)
    v = (weights.unsqueeze(-1) * u).sum(dim=1) / mass
    return v, a_out, c


def route_votes(votes: Tensor, activations: Tensor | None, weight: Tensor, bias: Tensor, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Self-routing of votes [B, I, J, D] with the routing weight [in_caps, J, D] and bias [in_caps, J]:
    (v [B, J, D], a_j [B, J], c [B, I, J]) in the votes' dtype (computed in float32 for half precision),
    differentiable in votes, activations, weight and bias."""
    dtype = accumulation_dtype(votes.dtype)
    B, I = votes.shape[:2]
    w, beta = child_rows(weight, I, dtype), child_rows(bias, I, dtype)
    a = None if activations is None else activations.to(dtype)
    sizes = chunk_sizes(B, votes_row_bytes(votes, dtype), votes.device)
    results = [route_chunk(u.to(dtype), a_rows, w, beta, eps)
               for u, a_rows in zip(votes.split(sizes), split_rows(a, sizes), strict=True)]
    return tuple(torch.cat(parts).to(votes.dtype) for parts in zip(*results, strict=True))
