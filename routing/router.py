"""The interface every routing algorithm implements."""

from __future__ import annotations

from torch import Tensor, nn

from routing.result import RoutingResult
from routing.validation import check_votes


class Router(nn.Module):
    """Routes votes from I child capsules to J parent capsules.

    ``router(votes [B, I, J, D], activations [B, I] or None) -> RoutingResult(poses [B, J, D],
    activations [B, J], assignments [B, I, J])``. Every sample is routed independently of the rest of the batch.

    Subclasses implement ``route`` with the same signature; ``forward`` checks the inputs first, so a bad shape,
    dtype or a NaN gives a ValueError that says what was expected. Routers are made by ``routing.create``,
    which sets ``name`` (the algorithm), ``backend`` (the registered backend chosen) and ``fallback`` (whether
    an accelerated backend may fall back to the reference one on inputs it cannot handle).
    """

    name: str = "router"
    backend: str = "torch"
    fallback: bool = True

    def forward(self, votes: Tensor, activations: Tensor | None = None, **kwargs) -> RoutingResult:
        check_votes(votes, activations, self.name)
        return self.route(votes, activations, **kwargs)

    def route(self, votes: Tensor, activations: Tensor | None = None, **kwargs) -> RoutingResult:
        raise NotImplementedError(f"{type(self).__name__} does not implement route()")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, backend={self.backend!r}"
