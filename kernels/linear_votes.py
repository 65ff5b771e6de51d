"""A dense capsule layer's votes u[b, i, j] = W[i, j] @ x[b, i], for the kernels that form them inside (the fused
paths of kernels.dynamic and kernels.em): the @triton.jit tile, the input checks, and the host-side matrix
products the backward uses.

Shapes: poses x [B, I, K] (any strides), transforms W [I, J, D, K] (contiguous), votes [B, I, J, D]. The forward
kernels form each votes tile in registers, in the accumulation dtype (float32 for float16/bfloat16/float32 inputs,
float64 for float64), so the votes are never rounded to the inputs' dtype nor written to memory. The backward
forms them once (``formed_votes``, the same products in the same dtype), runs the unfused backward kernels on them,
and turns the votes' gradient into the gradients of x and W with two batched matrix products
(``poses_and_transforms_gradients``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.utils import accumulation_dtype, kernel_dtype_ok, parent_tile_size

# Largest padded J * D (BLOCK_J * BLOCK_D) of one child's votes, in 32-bit words (float64 values take two), that the
# fused kernels hold: their programs keep the votes tile and, for dynamic routing, two more [BLOCK_J, BLOCK_D] tiles
# per sample. Larger parents are routed from formed votes by the unfused kernels. Compiled for sm_80 and sm_90
# (experiments.kernel_resources), the fused dynamic kernel spilled at 2048.
MAX_FUSED_PARENT_WORDS = 1024


def max_fused_parents(dtype: torch.dtype) -> int:
    """The largest padded J * D the fused kernels take for inputs of `dtype`."""
    return MAX_FUSED_PARENT_WORDS * 4 // accumulation_dtype(dtype).itemsize


def fused_tile_reason(J: int, D: int, dtype: torch.dtype, op: str) -> str | None:
    """Why the fused `op` kernels cannot hold J parents of pose size D for inputs of `dtype` (None when they
    can)."""
    if parent_tile_size(J, D) <= max_fused_parents(dtype):
        return None
    return (f"the fused {op} kernels hold up to {max_fused_parents(dtype)} padded {accumulation_dtype(dtype)} "
            f"values of one child's votes: J x D = {J} x {D} pads to {parent_tile_size(J, D)}")


@triton.jit
def sample_votes(x_ptr, w_ptr, offs_b, mask_b, i, mask_jd, J, D, K, stride_xb, stride_xi, stride_xk,
                 BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, acc_ty: tl.constexpr):
    """Child i's votes of samples offs_b: u [BLOCK_B, BLOCK_J, BLOCK_D] = sum_k W[i, :, :, k] x[b, i, k] in acc_ty, 0
    where padded. One [BLOCK_J, BLOCK_D] slice of W per k, used for all BLOCK_B samples."""
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    w_row = w_ptr + i.to(tl.int64) * J * D * K
    w_offs = (offs_j[:, None] * D + offs_d[None, :]) * K  # within one child's [J, D, K] block: 32-bit
    x_offs = offs_b.to(tl.int64) * stride_xb + i.to(tl.int64) * stride_xi
    u = tl.zeros([BLOCK_B, BLOCK_J, BLOCK_D], dtype=acc_ty)
    for k in range(0, K):
        w = tl.load(w_row + w_offs + k, mask=mask_jd, other=0.0).to(acc_ty)
        x = tl.load(x_ptr + x_offs + k * stride_xk, mask=mask_b, other=0.0).to(acc_ty)
        u += x[:, None, None] * w[None, :, :]
    return u


@triton.jit
def child_votes(x_ptr, w_ptr, n, offs_i, mask_i, mask_jd, J, D, K, stride_xn, stride_xi, stride_xk,
                BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, acc_ty: tl.constexpr):
    """Row n's votes of children offs_i: V [BLOCK_I, BLOCK_J, BLOCK_D] = sum_k W[i, :, :, k] x[n, i, k] in acc_ty, 0
    where padded. One [BLOCK_I, BLOCK_J, BLOCK_D] slice of W per k."""
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    first = tl.min(offs_i, axis=0)
    w_block = w_ptr + first.to(tl.int64) * J * D * K
    w_offs = (((offs_i - first)[:, None, None] * J + offs_j[None, :, None]) * D + offs_d[None, None, :]) * K
    w_mask = mask_i[:, None, None] & mask_jd[None, :, :]
    x_offs = n.to(tl.int64) * stride_xn + offs_i.to(tl.int64) * stride_xi
    v = tl.zeros([BLOCK_I, BLOCK_J, BLOCK_D], dtype=acc_ty)
    for k in range(0, K):
        w = tl.load(w_block + w_offs + k, mask=w_mask, other=0.0).to(acc_ty)
        x = tl.load(x_ptr + x_offs + k * stride_xk, mask=mask_i, other=0.0).to(acc_ty)
        v += x[:, None, None] * w
    return v


def check_linear(poses: Tensor, transforms: Tensor, activations: Tensor | None, op: str) -> None:
    """ValueError naming what was expected unless poses [B, I, K], transforms [I, J, D, K] and activations
    [B, I] or None fit together, on one device, in dtypes the kernels read."""
    if not isinstance(poses, Tensor) or not isinstance(transforms, Tensor):
        raise ValueError(f"{op} kernel with transforms: poses and transforms must be tensors, got "
                         f"{type(poses).__name__} and {type(transforms).__name__}")
    if poses.ndim != 3 or transforms.ndim != 4:
        raise ValueError(f"{op} kernel with transforms: expected poses [B, I, K] and transforms [I, J, D, K], got "
                         f"shapes {list(poses.shape)} and {list(transforms.shape)}")
    B, I, K = poses.shape
    if transforms.shape[0] != I or transforms.shape[3] != K:
        raise ValueError(f"{op} kernel with transforms: transforms must be [I, J, D, K] with I = {I} and K = {K} "
                         f"from poses {list(poses.shape)}, got {list(transforms.shape)}")
    if min(poses.shape) == 0 or min(transforms.shape) == 0:
        raise ValueError(f"{op} kernel with transforms: empty inputs, poses {list(poses.shape)} and transforms "
                         f"{list(transforms.shape)}")
    if activations is not None and tuple(activations.shape) != (B, I):
        raise ValueError(f"{op} kernel with transforms: activations must be [B, I] = {[B, I]}, got "
                         f"{list(activations.shape)}")
    for name, t in (("poses", poses), ("transforms", transforms), ("activations", activations)):
        if t is not None and not kernel_dtype_ok(t):
            raise ValueError(f"{op} kernel with transforms: {name} dtype {t.dtype} is not supported (float16, "
                             f"bfloat16, float32 or float64)")
        if t is not None and t.device != poses.device:
            raise ValueError(f"{op} kernel with transforms: {name} is on {t.device}, poses on {poses.device}")


def formed_votes(poses: Tensor, transforms: Tensor) -> Tensor:
    """Votes [B, I, J, D] in the accumulation dtype, as the forward kernels form them: a [B, I, J, D] view of one
    batched product over children [I, B, K] @ [I, K, J * D]."""
    I, J, D, K = transforms.shape
    acc = accumulation_dtype(poses.dtype)
    x = poses.to(acc).transpose(0, 1)  # [I, B, K]
    w = transforms.to(acc).reshape(I, J * D, K)
    return torch.bmm(x, w.transpose(1, 2)).view(I, -1, J, D).transpose(0, 1)


def poses_and_transforms_gradients(grad_votes: Tensor, poses: Tensor, transforms: Tensor,
                                   needs: tuple[bool, bool]) -> tuple[Tensor | None, Tensor | None]:
    """From the votes' gradient [B, I, J, D] (accumulation dtype, any strides): the gradients of poses [B, I, K]
    and transforms [I, J, D, K] in their own dtypes (None where `needs` says it is not wanted)."""
    I, J, D, K = transforms.shape
    acc = grad_votes.dtype
    g = grad_votes.transpose(0, 1).reshape(I, -1, J * D)  # [I, B, J*D]; a view when the votes were formed above
    grad_poses = grad_transforms = None
    if needs[0]:
        w = transforms.to(acc).reshape(I, J * D, K)
        grad_poses = torch.bmm(g, w).transpose(0, 1).to(poses.dtype)  # [B, I, K]
    if needs[1]:
        x = poses.to(acc).transpose(0, 1)  # [I, B, K]
        grad_transforms = torch.bmm(g.transpose(1, 2), x).view(I, J, D, K).to(transforms.dtype)
    return grad_poses, grad_transforms
