"""The interface every routing algorithm implements."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kernels.utils import kernel_unavailable_reason
from routing.linear_votes import vector_votes
from routing.result import RoutingResult
from routing.validation import check_linear_inputs, check_votes

# A float32_range for algorithms that square the votes (variances, agreements of votes with sums of votes) and
# divide by those squares: float32 holds magnitudes from 1e-38 to 3e38, so squares of votes between 1e-9 and 1e9
# (and products of a few of them with reciprocals) stay inside it with room to spare.
FLOAT32_SQUARES_RANGE = (1e-9, 1e9)
# A float32_range for algorithms that only sum votes (weighted): sums of up to ~1e8 votes below 1e30 stay finite.
FLOAT32_SUMS_RANGE = (0.0, 1e30)


class Router(nn.Module):
    """Routes votes from I child capsules to J parent capsules.

    ``router(votes [B, I, J, D], activations [B, I] or None) -> RoutingResult(poses [B, J, D],
    activations [B, J], assignments [B, I, J])``. Every sample is routed independently of the rest of the batch.

    ``router(poses [B, I, K], activations, transforms=W [I, J, D, K])`` routes the votes of a dense capsule layer,
    u_ij = W[i, j] @ poses[b, i], with gradients into poses, W and activations: the same result as routing
    ``routing.linear_votes.vector_votes(poses, W)``, and a backend may fuse the votes into its routing
    (``route_linear``) so they are never materialised outside it.

    Subclasses implement ``route`` with the same signature; ``forward`` checks the inputs first, so a bad shape,
    dtype, device, a NaN or activations outside ``activation_range`` give a ValueError that says what was expected
    (something that is not a torch.Tensor, such as a numpy array, a TypeError). While that NaN/Inf scan runs, votes
    too large or too small for the algorithm's float32 arithmetic (``float32_range``) are routed in float64.
    Routers are made by ``routing.create``, which sets ``name`` (the algorithm), ``backend`` (the registered
    backend chosen) and ``fallback`` (whether an accelerated backend may fall back to the reference one on inputs
    it cannot handle).
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
    # What the algorithm requires of the children's activations, checked with the NaN/Inf scan: (low, high), high
    # None for no upper bound (for example (0, 1) for probabilities, (0, None) for weights); None: any finite value.
    activation_range: tuple[float, float | None] | None = None
    # Magnitudes of the votes (low, high) within which the algorithm's float32 arithmetic cannot overflow or
    # underflow where float64's does not. Votes whose largest |u| lies outside it (0 excepted), found by the NaN/Inf
    # scan, are routed in float64 and the results returned in the votes' dtype. None: float32 is safe throughout.
    float32_range: tuple[float, float] | None = None

    def forward(
        self, votes: Tensor, activations: Tensor | None = None, *, transforms: Tensor | None = None, **kwargs
    ) -> RoutingResult:
        if transforms is not None:  # `votes` holds the children's poses [B, I, K]
            peak = check_linear_inputs(votes, transforms, activations, self.name, self.activation_range)
            self.check_parameters_device(votes.device)
            if self.needs_float64(peak, votes.dtype):
                return self.in_float64(self.route_linear, votes.dtype, votes, activations, transforms, **kwargs)
            return self.route_linear(votes, transforms, activations, **kwargs)
        peak = check_votes(votes, activations, self.name, activation_range=self.activation_range)
        self.check_parameters_device(votes.device)
        if self.needs_float64(peak, votes.dtype):
            return self.in_float64(self.route, votes.dtype, votes, activations, **kwargs)
        return self.route(votes, activations, **kwargs)

    def check_parameters_device(self, device: torch.device) -> None:
        """The router's parameters must be where the inputs are (a clear error instead of one deep inside torch)."""
        for name, parameter in self.named_parameters():
            if parameter.device != device:
                how = (f".to_empty(device={str(device)!r}) and then set its parameters" if parameter.is_meta
                       else f".to({str(device)!r})")
                raise ValueError(f"{self.name} routing: the router's parameter {name} is on {parameter.device} but "
                                 f"the inputs are on {device}; move the router with {how}")

    def needs_float64(self, peak: float | None, dtype: torch.dtype) -> bool:
        """Whether votes of largest magnitude `peak` (None: not scanned) in `dtype` are routed in float64."""
        if peak is None or self.float32_range is None or dtype == torch.float64 or peak == 0:
            return False
        low, high = self.float32_range
        return not low <= peak <= high

    def in_float64(self, route, dtype: torch.dtype, first: Tensor, activations: Tensor | None, *rest: Tensor,
                   **kwargs) -> RoutingResult:
        """`route` (self.route or self.route_linear) on float64 copies of the inputs, results cast back to dtype."""
        if rest:  # route_linear(poses, transforms, activations)
            args = (first.double(), rest[0].double(), None if activations is None else activations.double())
        else:
            args = (first.double(), None if activations is None else activations.double())
        return RoutingResult(*(t.to(dtype) for t in route(*args, **kwargs)))

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
