"""The closed-form backward of self-attention routing (routing.self_attention.reference), a chunk of samples at
a time.

Per sample, parent-major (u [J, I, D], weights a [I] (ones when None), prior P = B^T [J, I] with column i the row
i % in_caps of B, scale = 1 / sqrt(D)):
    t_j = sum_k a_k u_kj;  A_ji = scale <u_ji, t_j>;  c = softmax_j(A);  w_ji = a_i (c_ji + P_ji);
    s_j = sum_i w_ji u_ji;  v_j = squash(s_j).
Given gs = dL/ds (routing.self_attention.squash.squash_backward) and gc = dL/dc (None when unused):
    gw_ji = <gs_j, u_ji>                                   (dL/dw)
    dL/dP_ji = a_i gw_ji   (summed over the samples and over the children that share a row of B)
    G_ji = a_i gw_ji + gc_ji;  gA = scale c (G - sum_j c G)   (softmax backward over parents, scale folded in)
    gt_j = sum_i gA_ji u_ji                                (dL/dt)
    dL/du_ji = w_ji gs_j + gA_ji t_j + a_i gt_j             (one batched rank-3 product, written once)
    dL/da_i = sum_j (<gt_j, u_ji> + (c_ji + P_ji) gw_ji)
Only the couplings c [B, J, I] and the sums t, s [B, J, D] are saved by the forward; the votes are read again.
"""

from __future__ import annotations

import torch
from torch import Tensor

from routing.batched import agreement, parent_major_chunks, votes_gradient_chunk, weighted_sum


def backward_chunk(
    u: Tensor,
    a: Tensor | None,
    prior_t: Tensor,
    c: Tensor,
    t: Tensor,
    gs: Tensor,
    gc: Tensor | None,
    need_votes: bool,
    need_activations: bool,
    out: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor]:
    """Gradients of u [b, J, I, D] (written to `out` when given; None unless need_votes), of a [b, 1, I] as
    [b, I] (None unless need_activations and a is given) and of the parent-major prior [J, I] (summed over the
    chunk's samples). c [b, J, I], t and gs [b, J, D], gc [b, J, I] or None."""
    b, J, I, D = u.shape
    gw = agreement(u, gs)  # <gs_j, u_ji>  [b, J, I]
    gw_a = gw if a is None else gw * a
    grad_prior = gw_a.sum(0)
    if not (need_votes or (need_activations and a is not None)):
        return None, None, grad_prior
    g = gw_a if gc is None else gw_a + gc
    gA = c * (g - (g * c).sum(1, keepdim=True)) * D ** -0.5
    gt = weighted_sum(gA, u)  # [b, J, D]
    grad_a = None
    if need_activations and a is not None:
        grad_a = agreement(u, gt).sum(1) + ((c + prior_t) * gw).sum(1)
    grad_u = None
    if need_votes:
        left, right = u.new_empty(b, J, 3, I), u.new_empty(b, J, 3, D)
        torch.add(c, prior_t, out=left[:, :, 0])
        if a is not None:
            left[:, :, 0] *= a
        left[:, :, 1] = gA
        left[:, :, 2] = 1 if a is None else a
        right[:, :, 0], right[:, :, 1], right[:, :, 2] = gs, t, gt
        # [b*J, I, 3] @ [b*J, 3, D]: the transposed left factor is read in place by the BLAS
        grad_u = torch.bmm(left.view(b * J, 3, I).transpose(1, 2), right.view(b * J, 3, D),
                           out=None if out is None else out.view(b * J, I, D)).view(b, J, I, D)
    return grad_u, grad_a, grad_prior


def backward_chunks(
    votes: Tensor,
    activations: Tensor | None,
    prior_t: Tensor,
    couplings: Tensor,
    totals: Tensor,
    gs: Tensor,
    gc: Tensor | None,
    grad_votes: Tensor | None,
    grad_act: Tensor | None,
) -> Tensor:
    """The routing backward, a chunk of samples at a time: writes the votes' gradient [B, I, J, D] into
    grad_votes (any strides; it may share memory with the votes, since each chunk is read before it is written)
    and the activations' [B, I] into grad_act (either may be None). Returns the gradient of the parent-major
    prior [J, I]. couplings [B, J, I], totals t and gs [B, J, D] in the accumulation dtype; gc [B, J, I] or None."""
    dtype = couplings.dtype
    grad_prior = torch.zeros_like(prior_t)
    for rows, u, a in parent_major_chunks(votes, activations, dtype):
        out, copy_to = votes_gradient_chunk(grad_votes, rows, dtype)
        grad_u, grad_a, chunk_prior = backward_chunk(
            u, a, prior_t, couplings[rows], totals[rows], gs[rows], None if gc is None else gc[rows],
            need_votes=grad_votes is not None, need_activations=grad_act is not None, out=out)
        if copy_to is not None:
            copy_to.copy_(grad_u)
        if grad_act is not None:
            grad_act[rows] = grad_a
        grad_prior += chunk_prior
    return grad_prior
