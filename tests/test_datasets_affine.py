"""Canvas placement, rotation and the affNIST-style test set (capsules.datasets.affine)."""

import math

import pytest
import torch

from capsules.datasets.affine import affnist_style, centre_on_canvas, place_on_canvas, rotate, warp


def digits(count: int = 6, seed: int = 0) -> torch.Tensor:
    """uint8 [count, 1, 28, 28] blobs of ink at random places inside a 20x20 box, like MNIST's digits."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, 1, 28, 28, dtype=torch.uint8)
    for n in range(count):
        top, left = torch.randint(4, 12, (2,), generator=generator).tolist()
        images[n, 0, top:top + 10, left:left + 6] = torch.randint(1, 256, (10, 6), generator=generator,
                                                                   dtype=torch.int32).to(torch.uint8)
    return images


def test_place_on_canvas_keeps_every_pixel_and_moves_each_image_on_its_own():
    images = digits(32)
    placed = place_on_canvas(images, 40, torch.Generator().manual_seed(1))
    assert placed.shape == (32, 1, 40, 40) and placed.dtype == torch.uint8
    assert torch.equal(placed.sum(dim=(1, 2, 3), dtype=torch.int64), images.sum(dim=(1, 2, 3), dtype=torch.int64))
    # each image is its source pasted at some offset in 0..12 x 0..12
    offsets = set()
    for n in range(32):
        found = [(y, x) for y in range(13) for x in range(13)
                 if torch.equal(placed[n, :, y:y + 28, x:x + 28], images[n]) and placed[n].sum() == images[n].sum()]
        assert found, f"image {n} is not its source pasted on the canvas"
        offsets.add(found[0])
    assert len(offsets) > 10  # random positions, not one fixed place
    again = place_on_canvas(images, 40, torch.Generator().manual_seed(1))
    assert torch.equal(placed, again)


def test_centre_on_canvas_and_bad_canvas():
    images = digits(2)
    centred = centre_on_canvas(images, 40)
    assert torch.equal(centred[:, :, 6:34, 6:34], images)
    with pytest.raises(ValueError, match="smaller than the images"):
        place_on_canvas(images, 20)
    with pytest.raises(TypeError, match="canvas must be an int"):
        place_on_canvas(images, 40.0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        place_on_canvas(images[0], 40)


def test_rotate_turns_a_bar_by_the_angle():
    image = torch.zeros(1, 1, 41, 41)
    image[0, 0, 20, 10:31] = 1.0  # a horizontal bar through the centre
    for degrees in (0, 30, 90):
        turned = rotate(image, degrees)
        ys, xs = torch.nonzero(turned[0, 0] > 0.5, as_tuple=True)
        dx, dy = xs.float() - 20, 20 - ys.float()  # y up
        far = dx.abs() + dy.abs() > 5
        angles = torch.atan2(dy[far], dx[far]) % math.pi
        expected = math.radians(degrees) % math.pi
        error = torch.minimum((angles - expected).abs(), math.pi - (angles - expected).abs())
        assert error.max() < math.radians(6), degrees
    assert torch.allclose(rotate(image, 360), image, atol=1e-5)


def test_warp_identity_is_exact_and_checks_its_maps():
    images = digits(3).float()
    assert torch.allclose(warp(images, torch.eye(2).expand(3, 2, 2)), images, atol=1e-4)
    with pytest.raises(ValueError, match=r"inverse maps \[3, 2, 2\]"):
        warp(images, torch.eye(2).expand(2, 2, 2))


def test_affnist_style_is_deterministic_inside_the_canvas_and_varied():
    images = digits(64)
    first = affnist_style(images, seed=0, batch=20)
    assert first.shape == (64, 1, 40, 40) and first.dtype == torch.uint8
    assert torch.equal(first, affnist_style(images, seed=0))  # batching does not change it
    assert not torch.equal(first, affnist_style(images, seed=1))
    # no ink lost off the canvas: bilinear resampling keeps the total roughly (scale 0.8..1.2 per axis)
    ratio = first.sum(dim=(1, 2, 3)).double() / images.sum(dim=(1, 2, 3)).double()
    assert ratio.min() > 0.5 and ratio.max() < 1.6
    # the digits land at many different places and are not just translated copies
    centres = [tuple(torch.nonzero(f[0]).float().mean(0).round().tolist()) for f in first]
    assert len(set(centres)) > 30
    floats = affnist_style(images.float() / 255, seed=0)
    assert floats.dtype == torch.float32 and torch.allclose(floats * 255, first.float(), atol=1.0)
