"""The Triton backend of dynamic routing: ``routing.create("dynamic", backend="triton")``, or "auto" on CUDA.

Same options and the same RoutingResult as the PyTorch backend (routing.dynamic.router); the math runs in the
fused kernels of kernels.dynamic. Inputs the kernels cannot take (CPU tensors outside the interpreter,
unsupported dtypes, parent tiles too large for a program) fall back to the PyTorch backend under
backend="auto" and raise a ValueError saying why under backend="triton".
"""

from __future__ import annotations

from torch import Tensor

from kernels.dynamic.op import dynamic_routing, unsupported_reason
from kernels.utils import kernel_unavailable_reason
from routing.dynamic.router import DynamicRouting
from routing.registry import register
from routing.result import RoutingResult


@register("dynamic", backend="triton")
class DynamicRoutingTriton(DynamicRouting):
    """Sabour et al. 2017 routing by agreement in fused Triton kernels (options as DynamicRouting)."""

    accelerated = True

    def route(self, votes: Tensor, activations: Tensor | None = None) -> RoutingResult:
        inputs = (votes,) if activations is None else (votes, activations)
        reason = kernel_unavailable_reason(*inputs, interpreter_ok=not self.fallback) or unsupported_reason(
            votes, activations)
        if self.falls_back(reason):
            return super().route(votes, activations)
        return RoutingResult(*dynamic_routing(votes, activations, self.iterations, self.detach_inner, self.eps))
