"""The interface every routing algorithm implements."""

from __future__ import annotations

from torch import Tensor, nn

from kernels.utils import kernel_unavailable_reason
from routing.linear_votes import vector_votes
from routing.result import RoutingResult
from routing.validation import check_linear_inputs, check_votes


class Router(nn.Module):
    """Routes votes from I child capsules to J parent capsules.

    ``router(votes [B, I, J, D], activations [B, I] or None) -> RoutingResult(poses [B, J, D],
    activations [B, J], assignments [B, I, J])``. Every sample is routed independently of the rest of the batch.

    ``router(poses [B, I, K], activations, transforms=W [I, J, D, K])`` routes the votes of a dense capsule layer,
    u_ij = W[i, j] @ poses[b, i], with gradients into poses, W and activations: the same result as routing
    ``routing.linear_votes.vector_votes(poses, W)``, and a backend may fuse the votes into its routing
    (``route_linear``) so they are never materialised outside it.

    Subclasses implement ``route`` with the same signature; ``forward`` checks the inputs first, so a bad shape,
    dtype or a NaN gives a ValueError that says what was expected. Routers are made by ``routing.create``,
    which sets ``name`` (the algorithm), ``backend`` (the registered backend chosen) and ``fallback`` (whether
    an accelerated backend may fall back to the reference one on inputs it cannot handle).
    """

    # How the assignments [B, I, J] are normalised, which routing.testing.check_router verifies: "parents" (each
    # child's row sums to 1 over the J parents), "children" (each parent's column sums to 1 over the I children)
    # or "none" (no sum is fixed; say why in the router's docstring).
    normalisation: str = "none"
    # Whether the router has parameters of its own per child (then permuting the children changes the result).
    child_parameters: bool = False
    # Whether the backward gives the true gradient of the forward (False for a deliberate surrogate, such as
    # dynamic routing's detach_inner; check_router then skips its finite-difference check).
    exact_gradients: bool = True
    name: str = "router"
    backend: str = "torch"
    fallback: bool = True
    accelerated: bool = False  # True for backends whose kernels cannot run everywhere (Triton)

    def forward(
        self, votes: Tensor, activations: Tensor | None = None, *, transforms: Tensor | None = None, **kwargs
    ) -> RoutingResult:
        if transforms is not None:  # `votes` holds the children's poses [B, I, K]
            check_linear_inputs(votes, transforms, activations, self.name)
            return self.route_linear(votes, transforms, activations, **kwargs)
        check_votes(votes, activations, self.name)
        return self.route(votes, activations, **kwargs)

    def route_linear(
        self, poses: Tensor, transforms: Tensor, activations: Tensor | None = None, **kwargs
    ) -> RoutingResult:
        """Route the votes transforms[i, j] @ poses[b, i]; this default forms the votes, then calls ``route``."""
        return self.route(vector_votes(poses, transforms), activations, **kwargs)

    def route(self, votes: Tensor, activations: Tensor | None = None, **kwargs) -> RoutingResult:
        raise NotImplementedError(f"{type(self).__name__} does not implement route()")

    def routes_in_torch(self, tensor: Tensor) -> bool:
        """Whether the PyTorch code routes `tensor`: always for a PyTorch backend; for an accelerated one only
        when it falls back (its kernels cannot run on `tensor` and fallback is allowed)."""
        if not self.accelerated:
            return True
        return self.fallback and kernel_unavailable_reason(tensor, interpreter_ok=False) is not None

    def falls_back(self, reason: str | None) -> bool:
        """For an accelerated backend whose kernels cannot take the inputs for `reason` (None: they can): whether
        to run the PyTorch code instead. Raises a ValueError naming the reason when fallback is off."""
        if reason is None:
            return False
        if self.fallback:
            return True
        raise ValueError(f"{self.name} routing, backend 'triton': {reason}")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, backend={self.backend!r}"
