"""The value every routing algorithm returns."""

from typing import NamedTuple

from torch import Tensor


class RoutingResult(NamedTuple):
    """Output of one routing call.

    poses:       [B, J, D] parent poses (v for dynamic routing, mu for EM routing).
    activations: [B, J]    parent activations (|v| for dynamic routing, a_j for EM routing).
    assignments: [B, I, J] final child-to-parent assignments (couplings c for dynamic routing, R for EM).
    """

    poses: Tensor
    activations: Tensor
    assignments: Tensor
