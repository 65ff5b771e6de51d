"""The reconstruction loss of Sabour et al. 2017: sum of squared pixel errors, scaled by 0.0005."""

from __future__ import annotations

from torch import Tensor

from capsules.layers.checks import expect_shape


def reconstruction_loss(reconstruction: Tensor, images: Tensor, scale: float = 0.0005) -> Tensor:
    """Mean over the batch of scale * sum over pixels of (reconstruction - image)^2.

    reconstruction [B, C*H*W] (the decoder's output), images [B, C, H, W] (or any [B, ...] of C*H*W values).
    """
    expect_shape(reconstruction, (None, None), "[B, C*H*W]", "reconstruction")
    B, N = reconstruction.shape
    if not isinstance(images, Tensor) or images.ndim < 2 or images.shape[0] != B or images[0].numel() != N:
        got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be [B, C, H, W] with B = {B} and C*H*W = {N} to match the reconstruction "
                         f"{list(reconstruction.shape)}, got {got}")
    target = images.reshape(B, N)
    return scale * (reconstruction - target.to(reconstruction.dtype)).square().sum(dim=1).mean()
