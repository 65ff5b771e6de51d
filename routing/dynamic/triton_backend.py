"""The Triton backend of dynamic routing: ``routing.create("dynamic", backend="triton")``, or "auto" on CUDA.

Same options and the same RoutingResult as the PyTorch backend (routing.dynamic.router); the math runs in the
fused kernels of kernels.dynamic. ``router(poses, activations, transforms=W)`` (a dense layer) runs the kernel that
forms the votes inside (kernels/dynamic/votes_op.py), so they never go to memory in the forward; poses and W of
different dtypes (autocast) are formed into votes first. Inputs the kernels cannot take (CPU tensors outside the
interpreter, unsupported dtypes, parent tiles too large for a program) fall back to the PyTorch backend under
backend="auto" and raise a ValueError saying why under backend="triton".
"""

from __future__ import annotations

from torch import Tensor

from kernels.dynamic.op import dynamic_routing, unsupported_reason
from kernels.dynamic.votes_op import dynamic_routing_linear, unsupported_linear_reason
from kernels.utils import kernel_unavailable_reason
from routing.dynamic.router import DynamicRouting
from routing.registry import register
from routing.result import RoutingResult


@register("dynamic", backend="triton")
class DynamicRoutingTriton(DynamicRouting):
    """Sabour et al. 2017 routing by agreement in fused Triton kernels (options as DynamicRouting)."""

    accelerated = True

    def double_backward_reason(self) -> str | None:
        """The kernels' backward is written out and refuses second-order use: double_backward=True needs PyTorch."""
        if not self.double_backward:
            return None
        return "double_backward=True routes with plain PyTorch autograd; use backend='torch' or 'auto'"

    def route(self, votes: Tensor, activations: Tensor | None = None) -> RoutingResult:
        inputs = (votes,) if activations is None else (votes, activations)
        reason = kernel_unavailable_reason(*inputs, interpreter_ok=not self.fallback) or unsupported_reason(
            votes, activations) or self.double_backward_reason()
        if self.falls_back(reason):
            return super().route(votes, activations)
        return RoutingResult(*dynamic_routing(votes, activations, self.iterations, self.detach_inner, self.eps))

    def route_linear(self, poses: Tensor, transforms: Tensor, activations: Tensor | None = None) -> RoutingResult:
        """The votes transforms[i, j] @ poses[b, i] formed inside the kernel; formed first, then routed by the
        unfused kernels, for poses and W of different dtypes or parents beyond the fused kernel's tile; the PyTorch
        backend's route_linear where the kernels cannot run and fallback is allowed."""
        inputs = (poses, transforms) if activations is None else (poses, transforms, activations)
        reason = kernel_unavailable_reason(*inputs, interpreter_ok=not self.fallback) or self.double_backward_reason()
        if self.falls_back(reason) or unsupported_linear_reason(poses, transforms, activations) is not None:
            return super().route_linear(poses, transforms, activations)
        return RoutingResult(*dynamic_routing_linear(poses, transforms, activations, self.iterations,
                                                     self.detach_inner, self.eps))
