"""Dynamic routing by agreement (Sabour, Frosst & Hinton 2017, Procedure 1): the reference PyTorch backend.

Per sample, with logits b [I, J] starting at 0 and iterations r = 1..T:
    c = softmax_j(b);  s_j = sum_i c_ij a_i u_ij;  v_j = squash(s_j);  b_ij += <u_ij, v_j>  (not after the last)
The children's activations a_i (ones when not given) weight each vote in the sum.

Speed: the votes are used as [B, J, I, D] (a free view when the caller produced them in that layout, else a
copy of a few samples at a time), so every sum over children and every agreement is a batched matrix-vector
product. Samples are routed in cache-sized chunks (routing.chunking), so the repeated reads of one chunk's votes
come from the cache and no temporary is votes-sized. The backward is written out (`_DynamicRoutingFunction`): it
recomputes per-iteration matrix-vector products from the saved couplings [T, B, J, I] and pre-squash sums
[T, B, J, D] (both 1/D the size of the votes), and writes the votes' gradient once, in the votes' own layout, as
a batched rank-(2T-1) product. A dense layer's router call with poses and transforms (``route_linear``) is
fused with the votes' product on the CPU (routing.dynamic_linear), so its votes need no fresh memory either.
"""

from __future__ import annotations

import torch
from torch import Tensor

from routing.linear_fusion import fusable
from routing.registry import register
from routing.chunking import row_chunks, votes_row_bytes
from routing.memory import empty_like_on_huge_pages, new_empty_on_huge_pages
from routing.result import RoutingResult
from routing.router import Router
from routing.squash import SQUASH_EPS, squash, squash_backward


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are routed in float32; float32 and float64 as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def parent_major(votes: Tensor, dtype: torch.dtype) -> Tensor:
    """votes [B, I, J, D] -> contiguous [B, J, I, D] in `dtype` (no copy when already laid out that way)."""
    return votes.transpose(1, 2).to(dtype).contiguous()


def agreement(u: Tensor, v: Tensor) -> Tensor:
    """<u_ij, v_j> for u [B, J, I, D], v [B, J, D] -> [B, J, I] (as v @ u^T: measured 3-4x faster than u @ v
    on a 2-core CPU at B=128, I=1152, J=10, D=16)."""
    return (v.unsqueeze(2) @ u.transpose(-1, -2)).squeeze(2)


def weighted_sum(w: Tensor, u: Tensor) -> Tensor:
    """sum_i w_ji u_jid for w [B, J, I], u [B, J, I, D] -> [B, J, D]."""
    return (w.unsqueeze(2) @ u).squeeze(2)


def _route_forward(u: Tensor, a: Tensor | None, iterations: int, eps: float, couplings: Tensor, sums: Tensor) -> None:
    """u [B, J, I, D], a [B, 1, I] or None; writes couplings [T, B, J, I] and pre-squash sums s [T, B, J, D]."""
    B, J, I, _ = u.shape
    logits = u.new_zeros(B, J, I)
    for r in range(iterations):
        c = logits.softmax(dim=1)  # over parents
        s = weighted_sum(c if a is None else c * a, u)  # [B, J, D]
        couplings[r] = c
        sums[r] = s
        if r < iterations - 1:
            logits += agreement(u, squash(s, eps=eps))


def _route_backward(
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
    its couplings. The votes' gradient is sum_r w_r (x) grad_s_r + sum_{r<T-1} grad_b_{r+1} (x) v_r, assembled
    as one batched matrix product of [B, J, I, K] by [B, J, K, D] (K = 2T - 1, or 1 with detach_inner).
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


def route_chunks(
    votes: Tensor, activations: Tensor | None, iterations: int, eps: float, keep: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Route votes [B, I, J, D] (any strides) a cache-sized chunk of samples at a time.

    Returns the couplings [T, B, J, I] and pre-squash sums [T, B, J, D] of every iteration (in float32 for
    half-precision votes). `keep` (a contiguous [B, J, I, D] in the compute dtype, or None) receives the
    parent-major votes, which the backward can then read without reordering them again."""
    dtype = compute_dtype(votes.dtype)
    B, I, J, D = votes.shape
    couplings = new_empty_on_huge_pages(votes, (iterations, B, J, I), dtype)
    sums = votes.new_empty((iterations, B, J, D), dtype=dtype)
    for rows in row_chunks(B, votes_row_bytes(votes, dtype), device=votes.device):
        u = parent_major(votes[rows], dtype) if keep is None else keep[rows].copy_(votes[rows].transpose(1, 2))
        a = None if activations is None else activations[rows].to(dtype).unsqueeze(1)
        _route_forward(u, a, iterations, eps, couplings[:, rows], sums[:, rows])
    return couplings, sums


def output_gradient(v: Tensor, length: Tensor, grad_v: Tensor | None, grad_length: Tensor | None) -> Tensor:
    """Total gradient [B, J, D] of the squashed poses v, given those of v and of |v| (either may be None)."""
    gv = torch.zeros_like(v) if grad_v is None else grad_v.to(v.dtype)
    if grad_length is not None:
        safe = torch.where(length > 0, length, torch.ones_like(length))
        gv = gv + (grad_length.to(v.dtype) / safe).unsqueeze(-1) * v
    return gv


def route_backward_chunks(
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
    for rows in row_chunks(votes.shape[0], votes_row_bytes(votes, dtype), device=votes.device):
        u = parent_major(votes[rows], dtype)
        a = None if activations is None else activations[rows].to(dtype).unsqueeze(1)
        target = None if grad_votes is None else grad_votes[rows].transpose(1, 2)  # [b, J, I, D]
        direct = target is not None and target.is_contiguous() and target.dtype == dtype
        grad_u, grad_a = _route_backward(u, a, couplings[:, rows], sums[:, rows], gv[rows],
                                         None if gc is None else gc[rows], detach_inner, eps,
                                         out=target if direct else None)
        if target is not None and not direct:
            target.copy_(grad_u)
        if grad_act is not None:
            grad_act[rows] = grad_a.squeeze(1)


class _DynamicRoutingFunction(torch.autograd.Function):
    """(votes [B, I, J, D], activations [B, I] or None) -> (v [B, J, D], |v| [B, J], c [B, I, J]).

    Samples are routed a cache-sized chunk at a time (routing.chunking), forward and backward; only the
    couplings and pre-squash sums are saved, the votes are read again from the caller's tensor.
    """

    @staticmethod
    def forward(ctx, votes: Tensor, activations: Tensor | None, iterations: int, detach_inner: bool, eps: float):
        couplings, sums = route_chunks(votes, activations, iterations, eps)
        v = squash(sums[-1], eps=eps)
        length = torch.linalg.vector_norm(v, dim=-1)
        ctx.save_for_backward(votes, activations, couplings, sums, v, length)
        ctx.settings = (detach_inner, eps)
        out_dtype = votes.dtype
        return v.to(out_dtype), length.to(out_dtype), couplings[-1].transpose(1, 2).to(out_dtype)

    @staticmethod
    def backward(ctx, grad_v: Tensor | None, grad_length: Tensor | None, grad_c: Tensor | None):
        votes, activations, couplings, sums, v, length = ctx.saved_tensors
        detach_inner, eps = ctx.settings
        gv = output_gradient(v, length, grad_v, grad_length)
        gc = None if grad_c is None else grad_c.to(v.dtype).transpose(1, 2)
        # empty_like keeps the votes' strides: a parent-major caller gets a parent-major gradient, written in place
        grad_votes = empty_like_on_huge_pages(votes) if ctx.needs_input_grad[0] else None
        grad_act = None
        if activations is not None and ctx.needs_input_grad[1]:
            grad_act = torch.empty_like(activations)
        route_backward_chunks(votes, activations, couplings, sums, gv, gc, detach_inner, eps, grad_votes, grad_act)
        return grad_votes, grad_act, None, None, None


def check_iterations(iterations: int) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    return iterations


@register("dynamic")
class DynamicRouting(Router):
    """Sabour et al. 2017 routing by agreement.

    Options: iterations (default 3); detach_inner (default False: gradients flow through every iteration, as
    in the authors' code; True: the iterations that only update the logits see detached votes and activations,
    so gradients flow through the last weighted sum only); eps (squash epsilon).
    Result: poses v [B, J, D] (squashed), activations |v| [B, J], assignments c [B, I, J] of the last iteration.
    """

    def __init__(self, *, iterations: int = 3, detach_inner: bool = False, eps: float = SQUASH_EPS):
        super().__init__()
        self.iterations = check_iterations(iterations)
        self.detach_inner = bool(detach_inner)
        self.eps = float(eps)

    def route(self, votes: Tensor, activations: Tensor | None = None) -> RoutingResult:
        v, length, c = _DynamicRoutingFunction.apply(votes, activations, self.iterations, self.detach_inner, self.eps)
        return RoutingResult(v, length, c)

    def route_linear(self, poses: Tensor, transforms: Tensor, activations: Tensor | None = None) -> RoutingResult:
        """On the CPU the votes are fused into the routing (routing.dynamic_linear); elsewhere formed, then routed."""
        from routing.dynamic_linear import route_linear  # (it builds on this module)

        if self.routes_in_torch(poses) and fusable(poses, transforms, activations):
            return RoutingResult(*route_linear(poses, transforms, activations, self.iterations, self.detach_inner,
                                               self.eps))
        return super().route_linear(poses, transforms, activations)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, iterations={self.iterations}, detach_inner={self.detach_inner}"
