"""Building a layer's router by name through the routing registry."""

from __future__ import annotations

import inspect
from typing import Any

import routing


def build_router(name: str, options: dict[str, Any], *, in_caps: int, out_caps: int, pose_dim: int
                 ) -> routing.Router:
    """`routing.create(name, **options)`, plus the layer's sizes for the size options the algorithm takes.

    in_caps: the number of distinct children a router with per-child parameters learns them for (a layer that
    shares its transforms over positions passes its child types: votes with I = m * in_caps children then use
    child i's parameters at i % in_caps); out_caps: the number of parent types (EM's beta_u and beta_a);
    pose_dim: the size D of a vote. The layer sets these itself: a size among `options` is a ValueError (a router
    sized otherwise would fail only at the first forward). An unknown name raises the registry's KeyError (which
    lists the available algorithms); an unknown option its ValueError.
    """
    sizes = {"in_caps": in_caps, "out_caps": out_caps, "pose_dim": pose_dim}
    clash = sorted(set(sizes) & set(options))
    if clash:
        given = ", ".join(f"{k}={options[k]!r}" for k in clash)
        raise ValueError(f"routing option(s) {given}: the layer sets {', '.join(clash)} from its own sizes "
                         f"({', '.join(f'{k}={sizes[k]}' for k in clash)}); leave them out")
    accepted = routing.size_options(name)
    return routing.create(name, **{k: v for k, v in sizes.items() if k in accepted}, **options)


def accepts_child_index(router: routing.Router) -> bool:
    """Whether the router normalises shared children over windows (its route takes ``child_index``, as EM's does)."""
    return "child_index" in inspect.signature(router.route).parameters
