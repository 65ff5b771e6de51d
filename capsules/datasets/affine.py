"""Placement and affine maps of image batches: the affNIST protocol of Sabour et al. (2017) built from any digits.

- `place_on_canvas`: each image at a random position on a larger black canvas (the training set of the protocol,
  and, with a fixed generator, the translated test set).
- `affnist_style`: a deterministic affNIST-like test set from 28x28 images: on a 40x40 canvas, each image under its
  own random rotation within +-20 degrees, shear within +-0.2 and scale 0.8..1.2 per axis, then translated at
  random with the whole digit kept inside the canvas. The same seed gives the same images on every machine.
- `rotate`: every image turned by one angle about its centre (accuracy against rotation angle).

Images are [B, C, H, W], uint8 (0..255) or floating point; outputs keep the input's dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

AFFNIST_CANVAS = 40
AFFNIST_ROTATION_DEGREES = 20.0
AFFNIST_SHEAR = 0.2
AFFNIST_SCALE = (0.8, 1.2)


def _check_images(images: Tensor, name: str) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of images [B, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name}: expected images [B, C, H, W], got shape {list(images.shape)}")
    if not (images.dtype == torch.uint8 or images.is_floating_point()):
        raise TypeError(f"{name}: expected uint8 or floating-point images, got {images.dtype}")


def place_on_canvas(images: Tensor, canvas: int, generator: torch.Generator | None = None) -> Tensor:
    """images [B, C, h, w] -> [B, C, canvas, canvas], each image pasted at a uniformly random whole-pixel position
    (top-left corner in 0..canvas - h by 0..canvas - w) on zeros. Positions are drawn from `generator`."""
    _check_images(images, "place_on_canvas")
    if isinstance(canvas, bool) or not isinstance(canvas, int):
        raise TypeError(f"place_on_canvas: canvas must be an int, got {canvas!r}")
    B, C, h, w = images.shape
    if canvas < max(h, w):
        raise ValueError(f"place_on_canvas: canvas {canvas} is smaller than the images ({h}x{w})")
    top = torch.randint(0, canvas - h + 1, (B,), generator=generator).to(images.device)
    left = torch.randint(0, canvas - w + 1, (B,), generator=generator).to(images.device)
    return _paste(images, canvas, top, left)


def centre_on_canvas(images: Tensor, canvas: int) -> Tensor:
    """images [B, C, h, w] -> [B, C, canvas, canvas], each image in the middle of a black canvas."""
    _check_images(images, "centre_on_canvas")
    B, _, h, w = images.shape
    if canvas < max(h, w):
        raise ValueError(f"centre_on_canvas: canvas {canvas} is smaller than the images ({h}x{w})")
    top = torch.full((B,), (canvas - h) // 2, device=images.device)
    left = torch.full((B,), (canvas - w) // 2, device=images.device)
    return _paste(images, canvas, top, left)


def _paste(images: Tensor, canvas: int, top: Tensor, left: Tensor) -> Tensor:
    """out[b, :, y, x] = images[b, :, y - top[b], x - left[b]] where that lies inside the image, else 0."""
    B, C, h, w = images.shape
    rows = torch.arange(canvas, device=images.device)[None, :] - top[:, None]  # [B, canvas]
    cols = torch.arange(canvas, device=images.device)[None, :] - left[:, None]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # [B, canvas, canvas]
    picked = images.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(B, C, canvas, w))
    picked = picked.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(B, C, canvas, canvas))
    return picked * inside[:, None].to(images.dtype)


def warp(images: Tensor, inverse: Tensor) -> Tensor:
    """Each image under its own linear map about the image centre, bilinear, zeros outside.

    images [B, C, H, W]; inverse [B, 2, 2] maps an output pixel's (x, y) offset from the centre to the input
    offset it is sampled from (the inverse of the map applied to the image). Output dtype = input dtype (uint8
    rounded).
    """
    _check_images(images, "warp")
    B, C, H, W = images.shape
    if inverse.shape != (B, 2, 2):
        raise ValueError(f"warp: expected inverse maps [{B}, 2, 2], got {list(inverse.shape)}")
    # affine_grid works in normalised coordinates (x / (W / 2), y / (H / 2)); conjugate the pixel map into them.
    to_pixels = torch.tensor([[W / 2, 0.0], [0.0, H / 2]], dtype=torch.float32)
    theta_linear = torch.linalg.solve(to_pixels, inverse.float().cpu() @ to_pixels)
    theta = torch.cat([theta_linear, torch.zeros(B, 2, 1)], dim=2).to(images.device)
    grid = F.affine_grid(theta, [B, C, H, W], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else out.to(images.dtype)


def rotate(images: Tensor, degrees: float) -> Tensor:
    """images [B, C, H, W] turned anticlockwise by `degrees` about their centre (bilinear, zeros outside)."""
    angle = math.radians(float(degrees))
    cos, sin = math.cos(angle), math.sin(angle)
    # The output pixel at offset p comes from the input at R(-angle) p (y pointing down on screen).
    inverse = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float32)
    return warp(images, inverse.expand(images.shape[0], 2, 2))


def affnist_style(images: Tensor, seed: int = 0, canvas: int = AFFNIST_CANVAS, batch: int = 2000) -> Tensor:
    """images [N, C, h, w] (e.g. the MNIST test digits) -> [N, C, canvas, canvas]: an affNIST-like test set.

    Image n gets its own rotation in [-20, 20] degrees, shear in [-0.2, 0.2] and scale in [0.8, 1.2] per axis
    (the affNIST ranges, as recalled in REFERENCE.md), applied about the canvas centre; then a random whole-pixel
    translation that keeps every non-zero pixel of the result inside the canvas. All draws come from one
    generator seeded with `seed`, so the set is the same on every machine.
    """
    _check_images(images, "affnist_style")
    generator = torch.Generator().manual_seed(seed)
    N = images.shape[0]
    angles = (torch.rand(N, generator=generator) * 2 - 1) * math.radians(AFFNIST_ROTATION_DEGREES)
    shears = (torch.rand(N, generator=generator) * 2 - 1) * AFFNIST_SHEAR
    low, high = AFFNIST_SCALE
    scales = low + torch.rand(N, 2, generator=generator) * (high - low)
    jitter = torch.rand(N, 2, generator=generator)  # where in its allowed range each digit lands
    cos, sin = angles.cos(), angles.sin()
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [N, 2, 2]
    shear = torch.eye(2).repeat(N, 1, 1)
    shear[:, 0, 1] = shears
    forward = rotation @ shear @ torch.diag_embed(scales)  # digit offsets -> canvas offsets
    inverse = torch.linalg.inv(forward)
    outputs = []
    for start in range(0, N, batch):
        part = slice(start, start + batch)
        centred = warp(centre_on_canvas(images[part], canvas), inverse[part])
        # Where the ink went, from the warped ink mask: the same for uint8 and float copies of the images.
        ink = warp(centre_on_canvas((images[part] != 0).float(), canvas), inverse[part]).amax(dim=1) > 1e-6
        outputs.append(_translate_inside(centred, ink, jitter[part]))
    return torch.cat(outputs) if outputs else images.new_zeros(0, images.shape[1], canvas, canvas)


def _translate_inside(images: Tensor, ink: Tensor, jitter: Tensor) -> Tensor:
    """Shift each image [B, C, H, W] by whole pixels to a position inside its allowed range (jitter [B, 2] in
    [0, 1) picks where): the bounding box of its ink (bool [B, H, W]) stays on the canvas. Blank images stay."""
    B, _, H, W = images.shape
    rows, cols = ink.any(dim=2), ink.any(dim=1)  # [B, H], [B, W]
    first_row = torch.where(rows.any(1), rows.float().argmax(1), torch.zeros(B, dtype=torch.long))
    last_row = torch.where(rows.any(1), H - 1 - rows.flip(1).float().argmax(1), torch.full((B,), H - 1))
    first_col = torch.where(cols.any(1), cols.float().argmax(1), torch.zeros(B, dtype=torch.long))
    last_col = torch.where(cols.any(1), W - 1 - cols.flip(1).float().argmax(1), torch.full((B,), W - 1))
    # new top = first_row + dy must lie in [0, H - 1 - (last_row - first_row)]
    dy = (jitter[:, 0] * (H - (last_row - first_row))).floor().long() - first_row
    dx = (jitter[:, 1] * (W - (last_col - first_col))).floor().long() - first_col
    padded = F.pad(images, (W, W, H, H))
    top, left = (H - dy).clamp(0, 2 * H), (W - dx).clamp(0, 2 * W)
    return _crop(padded, top, left, H, W)


def _crop(images: Tensor, top: Tensor, left: Tensor, H: int, W: int) -> Tensor:
    """out[b] = images[b, :, top[b]:top[b] + H, left[b]:left[b] + W]."""
    B, C = images.shape[:2]
    rows = (top[:, None] + torch.arange(H)[None, :]).to(images.device)
    cols = (left[:, None] + torch.arange(W)[None, :]).to(images.device)
    picked = images.gather(2, rows[:, None, :, None].expand(B, C, H, images.shape[3]))
    return picked.gather(3, cols[:, None, None, :].expand(B, C, H, W))
