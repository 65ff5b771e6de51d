"""The launches that reach every variant of the dynamic-routing kernels (see kernels/variants.py).

The launchers in kernels/dynamic/op.py choose BLOCK_I, BLOCK_J, BLOCK_D and the warps from the padded (J, D) and
the dtype, and the flags from the call: HAS_ACT (activations given), LAST (the last iteration), HAS_GRAD_C (the
couplings' gradient is used), FINAL (the backward's last pass). Iterations 1, 2 and 3 give every flag with the
iteration index 0, 1 (which Triton specialises to a constant) and 2; detach_inner both ways gives the backward's
pass structures. Every combination runs at every shape class and dtype.

The fused dense-layer launcher (kernels/dynamic/votes_op.py) also chooses BLOCK_B from the batch (2, 4 or 8
samples per program, as the tile allows): its launches route poses [B, I, K] with W [I, J, D, K] at B = 1, 2, 4
and 8, at the shape classes of `fused_shapes` (its range of padded J * D is smaller), forward and backward (whose
unfused kernel then reads votes formed in the accumulation dtype).
"""

from __future__ import annotations

import itertools
from functools import partial

import torch

from kernels.dynamic.op import dynamic_routing
from kernels.dynamic.votes_op import MAX_BLOCK_B, dynamic_routing_linear
from kernels.variants import DTYPES, MODEL_SHAPES, PARENT_TILES, Launch, corner_children, fused_shapes

BATCH = 2
ITERATIONS = (1, 2, 3)


def _route(shape: tuple[int, int, int, int], dtype: torch.dtype, with_activations: bool, iterations: int,
           detach_inner: bool, use_couplings: bool) -> None:
    """Forward and backward of `dynamic_routing` on votes [B, I, J, D]; the couplings feed the loss or not."""
    votes = torch.empty(shape, dtype=dtype, requires_grad=True)  # never read: no kernel runs
    activations = torch.ones(shape[:2], dtype=dtype, requires_grad=True) if with_activations else None
    v, lengths, c = dynamic_routing(votes, activations, iterations, detach_inner, 1e-8)
    loss = v.sum() + lengths.sum() + (c.sum() if use_couplings else 0)
    loss.backward()


def _shapes() -> dict[str, tuple[int, int, int, int]]:
    shapes = {name: (BATCH, I, J, D) for name, (I, J, D) in MODEL_SHAPES.items()}
    shapes |= {name: (BATCH, corner_children(J, D), J, D) for name, (J, D) in PARENT_TILES.items()}
    return shapes


LAUNCHES = tuple(
    Launch(f"dynamic {name} {str(dtype).removeprefix('torch.')} act={int(act)} T={T} detach={int(detach)} "
           f"grad_c={int(grad_c)}", dtype, partial(_route, shape, dtype, act, T, detach, grad_c))
    for (name, shape), dtype, act, T, detach, grad_c in itertools.product(
        _shapes().items(), DTYPES, (False, True), ITERATIONS, (False, True), (False, True))
)


LINEAR_POSE_SIZE = 8  # K of the fused launches (CapsNet's primary capsules)


def _route_linear(shape: tuple[int, int, int, int], dtype: torch.dtype, with_activations: bool,
                  use_couplings: bool) -> None:
    """Forward and backward of `dynamic_routing_linear` (2 iterations) on the votes of poses [B, I, K] and
    W [I, J, D, K] for shape (B, I, J, D)."""
    B, I, J, D = shape
    poses = torch.zeros(B, I, LINEAR_POSE_SIZE, dtype=dtype, requires_grad=True)
    transforms = torch.zeros(I, J, D, LINEAR_POSE_SIZE, dtype=dtype, requires_grad=True)
    activations = torch.ones(B, I, dtype=dtype, requires_grad=True) if with_activations else None
    v, lengths, c = dynamic_routing_linear(poses, transforms, activations, 2, False, 1e-8)
    (v.sum() + lengths.sum() + (c.sum() if use_couplings else 0)).backward()


LAUNCHES += tuple(
    Launch(f"dynamic fused {name} B={B} {str(dtype).removeprefix('torch.')} act={int(act)} grad_c={int(grad_c)}",
           dtype, partial(_route_linear, (B, I, J, D), dtype, act, grad_c))
    for dtype in DTYPES
    for (name, (I, J, D)), B, act, grad_c in itertools.product(
        fused_shapes(dtype).items(), (1, 2, 4, MAX_BLOCK_B), (False, True), (False, True))
)
