"""The launches that reach every variant of the EM-routing kernels (see kernels/variants.py).

The launchers in kernels/em/op.py choose BLOCK_I, BLOCK_J, BLOCK_D from the padded (J, D) (always 4 warps) and
the flags from the call: FIRST / LAST (the first and last iteration), SHARED (``child_index`` given: convolutional
layers whose windows share children), WRITE_R, Q_ONLY, HAS_E and ACCUMULATE (the backward's stages). Iterations
1, 2 and 3, with and without ``child_index``, give every flag with the iteration index 0, 1 (which Triton
specialises to a constant) and 2. Every combination runs at every shape class and dtype.

The fused dense-layer launcher (kernels/em/votes_op.py: its own partials kernel, the finalize kernel reading the
first shift as votes with one child) is reached by routing poses [N, I, K] with W [I, J, D, K] at the shape
classes of `fused_shapes` for 1 and 2 iterations (FIRST and LAST together, then apart), forward and backward
(whose unfused kernels then read votes formed in the accumulation dtype).
"""

from __future__ import annotations

import itertools
from functools import partial

import torch

from kernels.em.op import em_routing
from kernels.em.votes_op import em_routing_linear
from kernels.utils import accumulation_dtype
from kernels.variants import DTYPES, MODEL_SHAPES, PARENT_TILES, Launch, corner_children, fused_shapes

BATCH = 2
WINDOWS = 2  # windows per sample when child_index is given: rows are (sample, window) pairs
ITERATIONS = (1, 2, 3)


def _route(shape: tuple[int, int, int, int], dtype: torch.dtype, iterations: int, shared: bool) -> None:
    """Forward and backward of `em_routing` on votes [N, I, J, D], every output feeding the loss."""
    N, I, J, D = shape
    votes = torch.empty(shape, dtype=dtype, requires_grad=True)  # never read: no kernel runs
    activations = torch.ones(N, I, dtype=dtype, requires_grad=True)
    betas = [torch.zeros(J, dtype=accumulation_dtype(dtype), requires_grad=True) for _ in range(2)]
    child_index = torch.arange(I).repeat(WINDOWS, 1) + torch.arange(WINDOWS)[:, None] if shared else None
    poses, parents, assignments = em_routing(votes, activations, *betas, iterations=iterations,
                                             child_index=child_index)
    (poses.sum() + parents.sum() + assignments.sum()).backward()


def _shapes() -> dict[str, tuple[int, int, int, int]]:
    rows = BATCH * WINDOWS
    shapes = {name: (rows, I, J, D) for name, (I, J, D) in MODEL_SHAPES.items()}
    shapes |= {name: (rows, corner_children(J, D), J, D) for name, (J, D) in PARENT_TILES.items()}
    return shapes


LAUNCHES = tuple(
    Launch(f"em {name} {str(dtype).removeprefix('torch.')} T={T} shared={int(shared)}", dtype,
           partial(_route, shape, dtype, T, shared))
    for (name, shape), dtype, T, shared in itertools.product(_shapes().items(), DTYPES, ITERATIONS, (False, True))
)


LINEAR_POSE_SIZE = 16  # K of the fused launches (4x4 pose matrices through kron(I_4, W))


def _route_linear(shape: tuple[int, int, int, int], dtype: torch.dtype, iterations: int) -> None:
    """Forward and backward of `em_routing_linear` on the votes of poses [N, I, K] and W [I, J, D, K]."""
    N, I, J, D = shape
    poses = torch.zeros(N, I, LINEAR_POSE_SIZE, dtype=dtype, requires_grad=True)
    transforms = torch.zeros(I, J, D, LINEAR_POSE_SIZE, dtype=dtype, requires_grad=True)
    activations = torch.ones(N, I, dtype=dtype, requires_grad=True)
    betas = [torch.zeros(J, dtype=accumulation_dtype(dtype), requires_grad=True) for _ in range(2)]
    out_poses, parents, assignments = em_routing_linear(poses, transforms, activations, *betas,
                                                        iterations=iterations)
    (out_poses.sum() + parents.sum() + assignments.sum()).backward()


LAUNCHES += tuple(
    Launch(f"em fused {name} {str(dtype).removeprefix('torch.')} T={T}", dtype,
           partial(_route_linear, (BATCH, I, J, D), dtype, T))
    for dtype in DTYPES
    for (name, (I, J, D)), T in itertools.product(fused_shapes(dtype).items(), (1, 2))
)
