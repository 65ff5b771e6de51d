"""Dynamic routing by agreement (Sabour, Frosst & Hinton 2017), registered as "dynamic".

Every algorithm package is laid out alike:
    reference.py       the math in PyTorch, a cache-sized chunk of samples at a time, with its autograd Function
    backward.py        the closed-form backward the Function calls (the blueprint of the kernels')
    linear.py          the fused dense-layer path: routing from poses and transforms (CPU, routing.cpu.fusion)
    router.py          the registered router (options, checks, which path runs)
    triton_backend.py  the Triton backend: an adapter to the kernels of kernels.dynamic
"""

from kernels.utils import triton_available
from routing.dynamic.router import DynamicRouting

if triton_available():
    from routing.dynamic.triton_backend import DynamicRoutingTriton  # noqa: F401  (registers backend "triton")

__all__ = ["DynamicRouting"]
