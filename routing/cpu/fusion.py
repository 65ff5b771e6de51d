"""The two-buffer protocol of the fused dense-layer routers (routing.dynamic.linear, routing.em.linear).

A fused router takes poses [B, I, K] and transforms [I, J, D, K] instead of votes. It writes the votes product
[I, B, J*D] into this thread's reusable buffer (routing.cpu.workspace) and routes from a second buffer that holds
the votes parent-major, [B, J, I, D], filled chunk by chunk while routing. Its backward reads the parent-major
votes as they are (or forms them again when another call has claimed the buffers since), writes the votes'
gradient into the product's buffer and turns it into the poses' and transforms' gradients with two batched
products. After the first call no votes-sized memory is mapped, which on a CPU is a large and erratic share of
the unfused layer's time (page faults, and memory compaction for huge pages), and the backward reorders nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from routing.cpu.switch import tuning_enabled
from routing.cpu.workspace import workspace

PRODUCT, PARENT_MAJOR = "linear votes", "linear parent-major votes"


def fusable(*tensors: Tensor | None) -> bool:
    """Whether the fused CPU path applies: the CPU machinery on (routing.cpu), CPU tensors of one full-precision
    dtype (None entries ignored), outside autocast and torch.compile (which trace the unfused path)."""
    present = [t for t in tensors if t is not None]
    dtype = present[0].dtype
    return (
        tuning_enabled()
        and all(t.device.type == "cpu" and t.dtype == dtype for t in present)
        and dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def backward_follows(*inputs: Tensor | None) -> bool:
    """Whether autograd will record the call (grad mode on and an input that requires grad): only then does a
    forward keep its parent-major votes for the backward (evaluation under torch.no_grad leaves them alone)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)


def votes_product(poses: Tensor, transforms: Tensor) -> Tensor:
    """The product [I, B, K] @ [I, K, J*D] written into the workspace's PRODUCT buffer, as [I, B, J*D]."""
    I, J, D, K = transforms.shape
    product, _ = workspace().claim(PRODUCT, (I, poses.shape[0], J * D), poses.dtype)
    torch.bmm(poses.transpose(0, 1), transforms.view(I, J * D, K).transpose(1, 2), out=product)
    return product


def as_votes(product: Tensor, transforms: Tensor) -> Tensor:
    """The product [I, B, J*D] as votes [B, I, J, D] (a view)."""
    I, J, D, _ = transforms.shape
    return product.view(I, product.shape[1], J, D).transpose(0, 1)


def forward_buffers(poses: Tensor, transforms: Tensor, keep_votes: bool) -> tuple[Tensor, Tensor | None, object]:
    """For a forward: (the votes [B, I, J, D], a view of the PRODUCT buffer they were just written into; the
    PARENT_MAJOR buffer [B, J, I, D] for the routing to keep them in, or None; the token that tells the backward
    whether that buffer still holds them). A forward that no backward will follow (keep_votes False, see
    backward_follows) routes from the cache instead and claims nothing."""
    votes = as_votes(votes_product(poses, transforms), transforms)
    if not keep_votes:
        return votes, None, None
    I, J, D, _ = transforms.shape
    kept, token = workspace().claim(PARENT_MAJOR, (poses.shape[0], J, I, D), poses.dtype)
    return votes, kept, token


def backward_buffers(poses: Tensor, transforms: Tensor, token: object) -> tuple[Tensor, Tensor]:
    """For a backward: (votes [B, I, J, D] to read, the PRODUCT buffer [I, B, J*D] to write the votes' gradient
    into). The votes are the forward's parent-major ones when its `token` still holds the buffer; else the
    product formed again, read chunk by chunk just before the gradient overwrites it."""
    I, J, D, _ = transforms.shape
    B = poses.shape[0]
    if workspace().holds(token, PARENT_MAJOR, poses.dtype):
        kept, _ = workspace().claim(PARENT_MAJOR, (B, J, I, D), poses.dtype)
        product, _ = workspace().claim(PRODUCT, (I, B, J * D), poses.dtype)  # scratch for the gradient
        return kept.transpose(1, 2), product
    product = votes_product(poses, transforms)
    return as_votes(product, transforms), product


def poses_and_transforms_gradients(
    grad_product: Tensor, poses: Tensor, transforms: Tensor, needs: tuple[bool, bool]
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of poses [B, I, K] and transforms [I, J, D, K] from that of the product [I, B, J*D]."""
    I, J, D, K = transforms.shape
    grad_poses = grad_transforms = None
    # Both products put the small K on the rows: at the dense layer's size this was faster on the project's CPU
    # than either product with K on the columns (several times so for the transforms' gradient).
    if needs[0]:  # [I, K, J*D] @ [I, J*D, B] -> [I, K, B], read as [B, I, K]
        grad_poses = torch.bmm(transforms.view(I, J * D, K).transpose(1, 2), grad_product.transpose(1, 2))
        grad_poses = grad_poses.permute(2, 0, 1)
    if needs[1]:  # [I, K, B] @ [I, B, J*D] -> [I, K, J*D], then into the transforms' layout
        grad_transforms = torch.bmm(poses.transpose(0, 1).transpose(1, 2), grad_product)
        grad_transforms = grad_transforms.view(I, K, J, D).permute(0, 2, 3, 1).contiguous()
    return grad_poses, grad_transforms
