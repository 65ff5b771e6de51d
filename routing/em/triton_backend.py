"""The Triton backend of EM routing: ``routing.create("em", backend="triton")`` (and "auto" on CUDA tensors).

Same options, parameters and results as the PyTorch backend (routing.em.router), computed by the fused kernels
of kernels.em: one pass over the votes per iteration (two with ``child_index``), an exact backward. Inputs the
kernels cannot take (CPU tensors outside the interpreter, other dtypes, J * D beyond the kernels' tile) fall
back to the PyTorch backend under backend="auto" and raise a ValueError saying why under backend="triton".
"""

from __future__ import annotations

from torch import Tensor

from kernels.em.op import em_routing, unsupported_reason
from kernels.utils import kernel_unavailable_reason
from routing.em.router import EMRouting
from routing.registry import register
from routing.result import RoutingResult


@register("em", backend="triton")
class EMRoutingTriton(EMRouting):
    """EM routing on the Triton kernels (options and parameters as EMRouting)."""

    accelerated = True

    def route(
        self, votes: Tensor, activations: Tensor | None = None, child_index: Tensor | None = None
    ) -> RoutingResult:
        extra = () if activations is None else (activations,)
        reason = kernel_unavailable_reason(votes, *extra, self.beta_u, self.beta_a, interpreter_ok=not self.fallback)
        if self.falls_back(reason or unsupported_reason(votes, activations)):
            return super().route(votes, activations, child_index)
        N, I, J, _ = votes.shape
        child_index, _ = self.call_settings(N, I, J, child_index, votes.device)  # the kernels derive the lambdas
        return RoutingResult(*em_routing(
            votes, activations, self.beta_u, self.beta_a, iterations=self.iterations,
            final_lambda=self.final_lambda, min_var=self.min_var, eps=self.eps, child_index=child_index))
