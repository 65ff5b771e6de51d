"""Capsule routing algorithms behind one interface, chosen by name.

    import routing
    routing.available()                                   # ['dynamic', 'em', ...]
    router = routing.create("dynamic", iterations=3)      # an nn.Module
    poses, activations, assignments = router(votes, activations)   # votes [B, I, J, D], activations [B, I]

Every algorithm has a pure-PyTorch backend ("torch", runs anywhere, the reference for the kernels) and may have
an accelerated one ("triton"); ``backend="auto"`` picks the fastest one that can run on the inputs.
"""

from routing import cpu
from routing.dynamic import DynamicRouting  # registers "dynamic" (and its Triton backend where triton is installed)
from routing.em import EMRouting  # registers "em" (likewise)
from routing.inverted_dot_product import InvertedDotProductRouting  # registers "inverted-dot-product"
from routing.registry import (
    ENTRY_POINT_GROUP,
    SIZE_OPTIONS,
    PluginLoadError,
    UnknownRoutingError,
    available,
    backends,
    create,
    option_defaults,
    options,
    register,
    size_options,
    sized_options,
    unregister,
)
from routing.result import RoutingResult
from routing.router import Router
from routing.self_attention import SelfAttentionRouting  # registers "self-attention"
from routing.self_routing import SelfRouting  # registers "self-routing"
from routing.squash import squash
from routing.validation import finite_checks
from routing.variational_bayes import VariationalBayesRouting  # registers "variational-bayes"

__all__ = [
    "ENTRY_POINT_GROUP",
    "SIZE_OPTIONS",
    "DynamicRouting",
    "EMRouting",
    "InvertedDotProductRouting",
    "SelfAttentionRouting",
    "SelfRouting",
    "VariationalBayesRouting",
    "PluginLoadError",
    "Router",
    "RoutingResult",
    "UnknownRoutingError",
    "available",
    "backends",
    "cpu",
    "create",
    "finite_checks",
    "option_defaults",
    "options",
    "register",
    "size_options",
    "sized_options",
    "squash",
    "unregister",
]
