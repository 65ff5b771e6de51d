"""The closed-form backward of dynamic routing (routing.dynamic.reference), a chunk of samples at a time.

With gs_r the gradient of the pre-squash sums s_r of iteration r, the votes' gradient is
    sum_r w_r (x) gs_r + sum_{r < T-1} G_{r+1} (x) v_r,
where w_r = c_r a are the weights of iteration r's sum and G_r [B, J, I] is the total gradient of the logits
entering iteration r (a sum over the later iterations of softmax-backward terms). It is recomputed from the
saved couplings [T, B, J, I] and pre-squash sums [T, B, J, D] (both 1/D the size of the votes) and written once,
in the votes' own layout, as one batched rank-(2T-1) product. The Triton kernels (kernels.dynamic) do the same.
"""

from __future__ import annotations

import torch
from torch import Tensor

from routing.batched import agreement, parent_major_chunks, votes_gradient_chunk, weighted_sum
from routing.squash import squash, squash_backward


def backward_chunk(
    u: Tensor,
    a: Tensor | None,
    couplings: Tensor,
    sums: Tensor,
    grad_v: Tensor,
    grad_c: Tensor | None,
    detach_inner: bool,
    eps: float,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Gradients of the routing loop into u [B, J, I, D] (written to `out` when given) and a [B, 1, I] (None
    when a is None).

    grad_v [B, J, D] is the gradient of the last iteration's squashed poses, grad_c [B, J, I] (or None) that of
    its couplings. The votes' gradient is assembled as one batched matrix product of [B, J, I, K] by
    [B, J, K, D] (K = 2T - 1, or 1 with detach_inner).
    """
    T = couplings.shape[0]
    B, J, I, D = u.shape
    first = T - 1 if detach_inner else 0
    K = 2 * (T - first) - 1
    left, right = u.new_empty(B, J, K, I), u.new_empty(B, J, K, D)  # factors of the votes' gradient
    grad_a = None if a is None else torch.zeros_like(a)
    grad_logits_next = None  # total gradient of the logits entering iteration r + 1
    k = 0
    for r in range(T - 1, first - 1, -1):
        c, s = couplings[r], sums[r]
        if r == T - 1:
            gv = grad_v
        else:
            gv = weighted_sum(grad_logits_next, u)
            left[:, :, k] = grad_logits_next
            right[:, :, k] = squash(s, eps=eps)
            k += 1
        gs = squash_backward(s, gv, eps)
        left[:, :, k] = c if a is None else c * a
        right[:, :, k] = gs
        k += 1
        if r == first and a is None:
            break  # b_0 = 0 is a constant; in detach_inner mode the couplings carry no gradient
        gw = agreement(u, gs)  # <grad_s_j, u_ij>  [B, J, I]
        if a is not None:
            grad_a += (gw * c).sum(1, keepdim=True)
        if r == first:
            break
        gc = gw if a is None else gw * a
        if r == T - 1 and grad_c is not None:
            gc = gc + grad_c
        gb = c * (gc - (gc * c).sum(1, keepdim=True))  # softmax backward over parents
        grad_logits_next = gb if grad_logits_next is None else gb + grad_logits_next
    # [B*J, I, K] @ [B*J, K, D]: the transposed left factor is read in place by the BLAS
    product = torch.bmm(left.view(B * J, K, I).transpose(1, 2), right.view(B * J, K, D),
                        out=None if out is None else out.view(B * J, I, D))
    return product.view(B, J, I, D), grad_a


def output_gradient(v: Tensor, length: Tensor, grad_v: Tensor | None, grad_length: Tensor | None) -> Tensor:
    """Total gradient [B, J, D] of the squashed poses v, given those of v and of |v| (either may be None)."""
    gv = torch.zeros_like(v) if grad_v is None else grad_v.to(v.dtype)
    if grad_length is not None:
        safe = torch.where(length > 0, length, torch.ones_like(length))
        gv = gv + grad_length.to(v.dtype).unsqueeze(-1) * (v / safe.unsqueeze(-1))  # v / |v| first: |v| may be tiny
    return gv


def backward_chunks(
    votes: Tensor,
    activations: Tensor | None,
    couplings: Tensor,
    sums: Tensor,
    gv: Tensor,
    gc: Tensor | None,
    detach_inner: bool,
    eps: float,
    grad_votes: Tensor | None,
    grad_act: Tensor | None,
) -> None:
    """The routing backward, a chunk of samples at a time: writes the gradient of the votes [B, I, J, D] into
    grad_votes (any strides; it may be the votes' own memory, since each chunk is read before it is written)
    and that of the activations [B, I] into grad_act (either may be None). gv [B, J, D] and gc [B, J, I] (or
    None) are the gradients of the last iteration's squashed poses and couplings."""
    dtype = sums.dtype
    for rows, u, a in parent_major_chunks(votes, activations, dtype):
        out, copy_to = votes_gradient_chunk(grad_votes, rows, dtype)
        grad_u, grad_a = backward_chunk(u, a, couplings[:, rows], sums[:, rows], gv[rows],
                                        None if gc is None else gc[rows], detach_inner, eps,
                                        out=out)
        if copy_to is not None:
            copy_to.copy_(grad_u)
        if grad_act is not None:
            grad_act[rows] = grad_a.squeeze(1)
