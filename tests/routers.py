"""Building any registered router for test inputs: the size options from the votes' shape, `iterations` only
where the algorithm iterates."""

from __future__ import annotations

from typing import Any

import routing


def iteration_options(name: str, iterations: int) -> dict[str, int]:
    """{"iterations": iterations} for an iterative algorithm, {} for one without the option."""
    return {"iterations": iterations} if "iterations" in routing.options(name) else {}


def create_for(name: str, votes_shape: tuple[int, ...], iterations: int | None = None, backend: str = "torch",
               **options: Any) -> routing.Router:
    """routing.create(name) sized for votes of `votes_shape` (B, I, J, D), with `iterations` where it applies."""
    extra = {} if iterations is None else iteration_options(name, iterations)
    return routing.create(name, backend=backend, **routing.sized_options(name, votes_shape, **extra, **options))
