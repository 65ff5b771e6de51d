"""Votes of a dense capsule layer, u_hat[b, i, j] = W[i, j] @ u[b, i], as one batched matrix product.

The product over children, [I, B, K] @ [I, K, J*D], writes the votes as [I, B, J, D]; routers read them through
a [B, I, J, D] view, a cache-sized chunk of samples at a time (routing.chunking), so no pass reorders them. On
the CPU the product is written to memory advised onto huge pages (routing.memory), saving a page fault per
4 KiB of a tensor written once. The capsule layers (capsules.layers.votes) build on this; the routers use it to
route from poses and transforms (``router(poses, activations, transforms=W)``).

Measured on the shared 2-core CPU (dense 1152 x 8D -> 10 x 16D, batch 128, dynamic routing, forward + backward,
interleaved runs): the product's own layout 598 ms against 691 ms for votes first copied to a contiguous
[B, J, I, D] (1 thread, loaded machine); the product on huge pages 191 ms against 222 ms (2 threads, median of 7).
"""

from __future__ import annotations

import torch
from torch import Tensor

from routing.memory import new_empty_on_huge_pages


class _ProductOnHugePages(torch.autograd.Function):
    """x [N, M, K] @ w [N, K, P] -> [N, M, P], the output on huge pages; backward as torch.bmm's."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        out = new_empty_on_huge_pages(x, (x.shape[0], x.shape[1], w.shape[2]), x.dtype)
        torch.bmm(x, w, out=out)
        ctx.save_for_backward(x, w)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, w = ctx.saved_tensors
        grad_x = torch.bmm(grad, w.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(x.transpose(1, 2), grad) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w


def batched_product(x: Tensor, w: Tensor) -> Tensor:
    """torch.bmm(x, w) for x [N, M, K], w [N, K, P]; on the CPU (outside autocast) written to huge pages."""
    if x.device.type == "cpu" and x.dtype == w.dtype and not torch.is_autocast_enabled("cpu"):
        return _ProductOnHugePages.apply(x, w)
    return torch.bmm(x, w)


def vector_votes(poses: Tensor, weight: Tensor) -> Tensor:
    """u_hat[b, i, j] = W[i, j] @ u[b, i] for poses u [B, I, K] and weight W [I, J, D, K] -> votes [B, I, J, D].

    One batched product over children, [I, B, K] @ [I, K, J*D]; the votes are a view of its [I, B, J, D] output.
    """
    I, J, D, K = weight.shape
    B = poses.shape[0]
    product = batched_product(poses.transpose(0, 1), weight.view(I, J * D, K).transpose(1, 2))  # [I, B, J*D]
    return product.view(I, B, J, D).transpose(0, 1)
