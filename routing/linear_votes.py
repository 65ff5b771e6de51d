"""Votes of a dense capsule layer, u_hat[b, i, j] = W[i, j] @ u[b, i], as one batched matrix product.

The product over children, [I, B, K] @ [I, K, J*D], writes the votes as [I, B, J, D]; routers read them through
a [B, I, J, D] view, a cache-sized chunk of samples at a time, so no pass reorders them (on the project's 2-core
CPU this was faster than copying them to a contiguous [B, J, I, D] first). On the CPU the product is written to
huge pages (routing.cpu.product). The capsule layers (capsules.layers.votes) build on this; the routers use it
to route from poses and transforms (``router(poses, activations, transforms=W)``).
"""

from __future__ import annotations

from torch import Tensor

from routing.cpu.product import batched_product


def vector_votes(poses: Tensor, weight: Tensor) -> Tensor:
    """u_hat[b, i, j] = W[i, j] @ u[b, i] for poses u [B, I, K] and weight W [I, J, D, K] -> votes [B, I, J, D].

    One batched product over children, [I, B, K] @ [I, K, J*D]; the votes are a view of its [I, B, J, D] output.
    """
    I, J, D, K = weight.shape
    B = poses.shape[0]
    product = batched_product(poses.transpose(0, 1), weight.view(I, J * D, K).transpose(1, 2))  # [I, B, J*D]
    return product.view(I, B, J, D).transpose(0, 1)
