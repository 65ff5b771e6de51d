"""EM routing between matrix capsules (Hinton, Sabour & Frosst 2018), registered as "em".

Laid out like every algorithm package (see routing.dynamic):
    reference.py       the math in PyTorch, a cache-sized chunk of rows at a time, with its autograd Function
    backward.py        the closed-form backward the Function calls, with its derivation
    linear.py          the fused dense-layer path: routing from poses and transforms (CPU, routing.cpu.fusion)
    router.py          the registered router (options, beta_u and beta_a, checks, which path runs)
    triton_backend.py  the Triton backend: an adapter to the kernels of kernels.em
"""

from kernels.utils import triton_available
from routing.em.router import EMRouting

if triton_available():
    from routing.em.triton_backend import EMRoutingTriton  # noqa: F401  (registers backend "triton")

__all__ = ["EMRouting"]
