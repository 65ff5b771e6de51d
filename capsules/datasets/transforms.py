"""Batched image transforms used by the loaders and by training scripts.

Every function takes a batch `[B, C, H, W]` and treats each image independently, without a Python loop over
images. Random draws come from `generator` (a CPU torch.Generator) or torch's global generator when it is None.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by its own random (dy, dx), |dy|, |dx| <= max_shift, filling with zeros.

    images: [B, C, H, W], any dtype. Returns the same shape and dtype: out[b, :, y, x] = images[b, :, y - dy, x - dx]
    where that pixel exists, else 0.
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, int):
        raise TypeError(f"max_shift must be an int, got {max_shift!r} of type {type(max_shift).__name__}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return images.clone()
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    tops = _offsets(batch, 2 * max_shift, generator, images.device)
    lefts = _offsets(batch, 2 * max_shift, generator, images.device)
    return _crop_each(F.pad(images, (max_shift,) * 4), tops, lefts, height, width)


def random_crop(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random `size` x `size` window of each image (all channels alike). [B, C, H, W] -> [B, C, size, size]."""
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    if not (0 < size <= height and size <= width):
        raise ValueError(f"cannot crop {size}x{size} from {height}x{width} images")
    tops = _offsets(batch, height - size, generator, images.device)
    lefts = _offsets(batch, width - size, generator, images.device)
    return _crop_each(images, tops, lefts, size, size)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central `size` x `size` window of each image. [B, C, H, W] -> [B, C, size, size]."""
    height, width = images.shape[-2:]
    if not (0 < size <= height and size <= width):
        raise ValueError(f"cannot crop {size}x{size} from {height}x{width} images")
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top:top + size, left:left + size]


def random_brightness(images: torch.Tensor, max_delta: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add one uniform delta in [-max_delta, max_delta] to every pixel of each image (no clipping).

    images: float [B, C, H, W] (pixels in [0, 1]); returns the same shape.
    """
    delta = (torch.rand(images.shape[0], generator=generator) * 2 - 1) * max_delta
    return images + delta.to(images).view(-1, 1, 1, 1)


def random_contrast(
    images: torch.Tensor, lower: float, upper: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Scale each image's deviation from its per-channel mean by one uniform factor in [lower, upper].

    As TensorFlow's adjust_contrast: (x - mean_c) * factor + mean_c. images: float [B, C, H, W]; same shape out.
    """
    factor = (lower + torch.rand(images.shape[0], generator=generator) * (upper - lower)).to(images)
    mean = images.mean(dim=(-2, -1), keepdim=True)
    return (images - mean) * factor.view(-1, 1, 1, 1) + mean


def standardize(images: torch.Tensor) -> torch.Tensor:
    """Per-image standardisation over all channels and pixels, as TensorFlow's per_image_standardization.

    (x - mean) / max(std, 1 / sqrt(C * H * W)), std the population standard deviation. float [B, C, H, W] in and out.
    """
    flat = images.flatten(1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, correction=0).clamp_min(flat.shape[1] ** -0.5)
    return (images - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)


def random_horizontal_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left to right with probability 1/2. [B, C, H, W], any dtype; same shape and dtype out."""
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def scale_pixels(
    images: torch.Tensor, mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None
) -> torch.Tensor:
    """uint8 pixels [B, C, H, W] -> float32 in [0, 1], then (x - mean) / std when both are given (one number for
    every channel, or one per channel)."""
    pixels = images.to(torch.float32) / 255
    if mean is None or std is None:
        return pixels
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    return (pixels - mean_t) / std_t


def resize_area(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 images [N, C, H, W] to [N, C, size, size] by area averaging, rounded back to uint8.

    For a whole factor (96 -> 48) this is the mean of each 2x2 block, what a bilinear 2x downscale computes.
    """
    resized = F.interpolate(images.to(torch.float32), size=(size, size), mode="area")
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _offsets(batch: int, high: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """`batch` uniform integers in [0, high], on `device`."""
    return torch.randint(0, high + 1, (batch,), generator=generator).to(device)


def _crop_each(images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """images[b, :, tops[b]:tops[b] + height, lefts[b]:lefts[b] + width] for every b, gathered at once."""
    batch = torch.arange(images.shape[0], device=images.device).view(-1, 1, 1)
    rows = (tops.view(-1, 1) + torch.arange(height, device=images.device)).view(-1, height, 1)
    cols = (lefts.view(-1, 1) + torch.arange(width, device=images.device)).view(-1, 1, width)
    # Advanced indices separated by a slice put their broadcast dims first: [B, height, width, C].
    return images[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()

