"""The dense layer's votes product with its output on huge pages (routing.cpu.memory), for the CPU.

A votes tensor written once by the product page-faults once per 4 KiB page when fresh; written to memory
advised onto huge pages it faults once per 2 MiB. Used by routing.linear_votes.vector_votes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from routing.cpu.memory import new_empty_on_huge_pages
from routing.cpu.switch import tuning_enabled


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
    """torch.bmm(x, w) for x [N, M, K], w [N, K, P]; on the CPU (outside autocast, CPU machinery on) written to
    huge pages."""
    if (x.device.type == "cpu" and x.dtype == w.dtype and not torch.is_autocast_enabled("cpu")
            and tuning_enabled()):
        return _ProductOnHugePages.apply(x, w)
    return torch.bmm(x, w)
