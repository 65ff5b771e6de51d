"""Capsule routing algorithms behind one interface, chosen by name.

    import routing
    routing.available()                                   # ['dynamic', 'em', ...]
    router = routing.create("dynamic", iterations=3)      # an nn.Module
    poses, activations, assignments = router(votes, activations)   # votes [B, I, J, D], activations [B, I]

Every algorithm has a pure-PyTorch backend ("torch", runs anywhere, the reference for the kernels) and may have
an accelerated one ("triton"); ``backend="auto"`` picks the fastest one that can run on the inputs.
"""

from kernels.utils import triton_available
from routing import dynamic as _dynamic  # noqa: F401  (registers "dynamic")
from routing import em as _em  # noqa: F401  (registers "em")

if triton_available():  # the Triton backends (they fall back to PyTorch under backend="auto" off CUDA)
    from routing import dynamic_triton as _dynamic_triton  # noqa: F401
    from routing import em_triton as _em_triton  # noqa: F401
from routing.registry import (
    ENTRY_POINT_GROUP,
    PluginLoadError,
    UnknownRoutingError,
    available,
    backends,
    create,
    register,
    unregister,
)
from routing.result import RoutingResult
from routing.router import Router
from routing.squash import squash
from routing.validation import finite_checks

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginLoadError",
    "Router",
    "RoutingResult",
    "UnknownRoutingError",
    "available",
    "backends",
    "create",
    "finite_checks",
    "register",
    "squash",
    "unregister",
]
