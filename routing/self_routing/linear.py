"""Self-routing of a dense capsule layer from poses and transforms, without forming the votes.

With votes u_ij = W_ij x_i (poses x [B, I, K], transforms W [I, J, D, K]) both sums of self-routing are linear in
the votes, so neither needs them:
    b_ij = <w_ij, W_ij x_i> + beta_ij = <W_ij^T w_ij, x_i> + beta_ij   (the paper's pose-based logits, with
           W_route[i, j] = W_ij^T w_ij [I, J, K] formed once per call: one small product over children)
    sum_i c_ij a_i u_ij = sum_(i, k) W_ijdk (c_ij a_i x_ik)            (one product over (i, k) per parent:
           X [J, b, I*K] @ W [J, I*K, D])
X holds B*I*J*K numbers where the votes hold B*I*J*D, with the same number of multiply-adds as forming the votes,
so this path is taken when K <= D (the dense layer 8 -> 16, ConvCaps' 16 -> 16) and outside autocast; otherwise
the router forms the votes and routes them (routing.self_routing.reference). Samples go a cache-sized chunk at a
time (routing.cpu.chunking); gradients come from autograd. Works on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.utils import accumulation_dtype
from routing.self_routing.reference import child_rows, chunk_sizes, parents, split_rows


def votes_free(poses: Tensor, transforms: Tensor) -> bool:
    """Whether route_poses applies: K <= D (X no larger than the votes) and no autocast (which would cast the
    products and gives the transforms another dtype than the poses)."""
    D, K = transforms.shape[2:]
    return K <= D and not torch.is_autocast_enabled(poses.device.type)


def route_chunk(x: Tensor, a: Tensor | None, route_weight: Tensor, bias: Tensor, transforms: Tensor, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Poses x [b, I, K], a [b, I] or None, route_weight [I, K, J] (W_ij^T w_ij), bias [I, J], transforms
    arranged [J, I*K, D] -> (v [b, J, D], a_j [b, J], c [b, I, J])."""
    b, I, K = x.shape
    J = transforms.shape[0]
    logits = torch.baddbmm(bias.unsqueeze(1), x.transpose(0, 1), route_weight).transpose(0, 1)  # [b, I, J]
    c = logits.softmax(dim=-1)  # over parents
    weights, mass, a_out = parents(c, a, eps)
    # X[j, b, (i, k)] = c_ij a_i x_ik; the small weights are made contiguous first, so that X is written contiguous
    X = (weights.permute(2, 0, 1).contiguous().unsqueeze(-1) * x).view(J, b, I * K)
    v = torch.bmm(X, transforms).transpose(0, 1) / mass
    return v, a_out, c


def route_poses(poses: Tensor, transforms: Tensor, activations: Tensor | None, weight: Tensor, bias: Tensor,
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Self-routing of the votes transforms[i, j] @ poses[b, i] (poses [B, I, K], transforms [I, J, D, K], same
    dtype) with the routing weight [in_caps, J, D] and bias [in_caps, J]: (v [B, J, D], a_j [B, J],
    c [B, I, J]) in the poses' dtype (computed in float32 for half precision), differentiable in everything."""
    dtype = accumulation_dtype(poses.dtype)
    I, J, D, K = transforms.shape
    B = poses.shape[0]
    W = transforms.to(dtype)
    w, beta = child_rows(weight, I, dtype), child_rows(bias, I, dtype)
    route_weight = (w.reshape(I * J, 1, D) @ W.reshape(I * J, D, K)).view(I, J, K).transpose(1, 2)  # [I, K, J]
    arranged = W.permute(1, 0, 3, 2).reshape(J, I * K, D)  # [j, (i, k), d] = W[i, j, d, k]
    a = None if activations is None else activations.to(dtype)
    row_bytes = I * J * K * torch.empty((), dtype=dtype).element_size()  # X's bytes per sample
    sizes = chunk_sizes(B, row_bytes, poses.device)
    results = [route_chunk(x.to(dtype), a_rows, route_weight, beta, arranged, eps)
               for x, a_rows in zip(poses.split(sizes), split_rows(a, sizes), strict=True)]
    return tuple(torch.cat(parts).to(poses.dtype) for parts in zip(*results, strict=True))
