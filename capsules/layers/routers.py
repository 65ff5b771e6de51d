"""Building a layer's router by name through the routing registry."""

from __future__ import annotations

import inspect
from typing import Any

import routing


def build_router(name: str, out_caps: int, options: dict[str, Any]) -> routing.Router:
    """`routing.create(name, **options)`, plus ``out_caps=out_caps`` where the algorithm takes that option.

    EM routing learns beta_u and beta_a per parent type, so it is told the layer's number of parent types; an
    algorithm without an ``out_caps`` option is built as given. An unknown name raises the registry's KeyError
    (which lists the available algorithms); an unknown option its ValueError.
    """
    router = routing.create(name, **options)
    if "out_caps" not in options and "out_caps" in inspect.signature(type(router).__init__).parameters:
        router = routing.create(name, out_caps=out_caps, **options)
    return router


def accepts_child_index(router: routing.Router) -> bool:
    """Whether the router normalises shared children over windows (its route takes ``child_index``, as EM's does)."""
    return "child_index" in inspect.signature(router.route).parameters
