"""The reconstruction loss of Sabour et al. 2017: sum of squared pixel errors, scaled by 0.0005."""

from __future__ import annotations

from torch import Tensor

from capsules.layers.checks import expect_shape
from capsules.losses.options import expect_real
from capsules.losses.reduction import batch_mean


def reconstruction_loss(reconstruction: Tensor, images: Tensor, scale: float = 0.0005) -> Tensor:
    """Mean over the batch of scale * sum over pixels of (reconstruction - image)^2.

    reconstruction [B, C*H*W] (the decoder's output, a sigmoid in [0, 1]), images [B, C, H, W] (or any [B, ...]
    of C*H*W values) as floating-point pixels in [0, 1]: uint8 images (0-255) or normalised ones would be compared
    with the wrong scale, so they are refused. scale >= 0. An empty batch gives 0.
    """
    expect_shape(reconstruction, (None, None), "[B, C*H*W]", "reconstruction")
    B, N = reconstruction.shape
    if not isinstance(images, Tensor) or images.ndim < 2 or images.shape[0] != B or images.shape[1:].numel() != N:
        got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be [B, C, H, W] with B = {B} and C*H*W = {N} to match the reconstruction "
                         f"{list(reconstruction.shape)}, got {got}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating-point pixels in [0, 1], got dtype {images.dtype} (uint8 images: "
                         f"divide by 255)")
    if images.numel():
        low, high = (float(v) for v in images.detach().aminmax())
        if not 0.0 <= low <= high <= 1.0:  # NaN fails too
            raise ValueError(f"images must be pixels in [0, 1] (the decoder's sigmoid range), got values from {low:g} "
                             f"to {high:g}: scale them to [0, 1] (undo any normalisation) before this loss")
    scale = expect_real("scale", scale, 0.0)
    target = images.reshape(B, N)
    return scale * batch_mean((reconstruction - target.to(reconstruction.dtype)).square().sum(dim=1))
