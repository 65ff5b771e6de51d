"""The Triton backend of EM routing: ``routing.create("em", backend="triton")`` (and "auto" on CUDA tensors).

Same options, parameters and results as the PyTorch backend (routing.em.router), computed by the fused kernels
of kernels.em: one pass over the votes per iteration (two with ``child_index``), an exact backward.
``router(poses, activations, transforms=W)`` (a dense layer, no child_index) runs the partials kernel that forms
the votes inside (kernels/em/votes_op.py), so they never go to memory in the forward. Inputs the
kernels cannot take (CPU tensors outside the interpreter, other dtypes, J * D beyond the kernels' tile) fall
back to the PyTorch backend under backend="auto" and raise a ValueError saying why under backend="triton".
"""

from __future__ import annotations

from torch import Tensor

from kernels.em.op import em_routing, unsupported_reason
from kernels.em.votes_op import em_routing_linear, unsupported_linear_reason
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

    def route_linear(
        self, poses: Tensor, transforms: Tensor, activations: Tensor | None = None,
        child_index: Tensor | None = None,
    ) -> RoutingResult:
        """The votes transforms[i, j] @ poses[n, i] formed inside the kernels; formed first, then routed by the
        unfused kernels, with child_index, poses and W of different dtypes or parents beyond the fused kernels' tile;
        the PyTorch backend's route_linear where the kernels cannot run and fallback is allowed."""
        extra = () if activations is None else (activations,)
        reason = kernel_unavailable_reason(poses, transforms, *extra, self.beta_u, self.beta_a,
                                           interpreter_ok=not self.fallback)
        if (self.falls_back(reason) or child_index is not None
                or unsupported_linear_reason(poses, transforms, activations) is not None):
            return super().route_linear(poses, transforms, activations, child_index=child_index)
        self.check_parents(transforms.shape[1])
        return RoutingResult(*em_routing_linear(
            poses, transforms, activations, self.beta_u, self.beta_a, iterations=self.iterations,
            final_lambda=self.final_lambda, min_var=self.min_var, eps=self.eps))
