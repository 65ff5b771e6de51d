"""Batched transforms against naive per-image references."""

import pytest
import torch

from capsules.datasets import random_shift
from capsules.datasets.transforms import (
    center_crop,
    random_brightness,
    random_contrast,
    random_crop,
    random_horizontal_flip,
    resize_area,
    scale_pixels,
    standardize,
)


def translate(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Naive reference: out[:, y, x] = image[:, y - dy, x - dx] where inside, else 0."""
    out = torch.zeros_like(image)
    height, width = image.shape[-2:]
    for y in range(height):
        for x in range(width):
            if 0 <= y - dy < height and 0 <= x - dx < width:
                out[:, y, x] = image[:, y - dy, x - dx]
    return out


def shifts_matching(shifted: torch.Tensor, image: torch.Tensor, max_shift: int) -> list[tuple[int, int]]:
    """All (dy, dx) within max_shift that turn `image` into `shifted`."""
    span = range(-max_shift, max_shift + 1)
    return [(dy, dx) for dy in span for dx in span if torch.equal(translate(image, dy, dx), shifted)]


def test_random_shift_translates_each_image_with_zero_fill():
    images = torch.randint(1, 256, (24, 2, 9, 7), dtype=torch.uint8)  # no zero pixels: the fill is visible
    shifted = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    found = [shifts_matching(s, image, 2) for s, image in zip(shifted, images, strict=False)]
    assert all(len(matches) == 1 for matches in found)
    assert len({matches[0] for matches in found}) > 5  # independent draws per image


def test_random_shift_is_reproducible_and_zero_is_identity():
    images = torch.rand(8, 1, 28, 28)
    first = random_shift(images, 2, torch.Generator().manual_seed(3))
    assert torch.equal(first, random_shift(images, 2, torch.Generator().manual_seed(3)))
    assert torch.equal(random_shift(images, 0), images)


def test_random_crop_takes_a_window_of_each_image():
    images = torch.arange(5 * 2 * 10 * 12, dtype=torch.float32).reshape(5, 2, 10, 12)
    crops = random_crop(images, 6, torch.Generator().manual_seed(1))
    assert crops.shape == (5, 2, 6, 6)
    for crop, image in zip(crops, images, strict=False):
        top, left = divmod(int(crop[0, 0, 0] - image[0, 0, 0]), 12)
        assert torch.equal(crop, image[:, top:top + 6, left:left + 6])
    assert torch.equal(center_crop(images, 6), images[:, :, 2:8, 3:9])


def test_brightness_and_contrast_per_image():
    images = torch.rand(16, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    brighter = random_brightness(images, 0.25, torch.Generator().manual_seed(0))
    delta = (brighter - images).flatten(1)
    assert torch.allclose(delta, delta[:, :1].expand_as(delta), atol=1e-6) and delta.abs().max() <= 0.25
    contrasted = random_contrast(images, 0.2, 1.8, torch.Generator().manual_seed(0))
    mean = images.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(contrasted.mean(dim=(2, 3), keepdim=True), mean)
    centred, scaled = (images - mean).flatten(1), (contrasted - mean).flatten(1)
    # one factor per image (least squares; a pixel-wise ratio is ill-conditioned where a pixel equals the mean)
    factor = (centred * scaled).sum(1, keepdim=True) / (centred * centred).sum(1, keepdim=True)
    torch.testing.assert_close(scaled, factor * centred, atol=1e-5, rtol=1e-5)
    assert factor.min() >= 0.2 - 1e-4 and factor.max() <= 1.8 + 1e-4
    assert factor.std() > 0.1  # drawn per image, not one factor for the batch


def test_standardize_gives_zero_mean_unit_std_and_survives_constant_images():
    images = torch.rand(6, 2, 32, 32) * 3 + 1
    out = standardize(images).flatten(1)
    torch.testing.assert_close(out.mean(1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(1, correction=0), torch.ones(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardize(torch.full((1, 1, 4, 4), 0.7)), torch.zeros(1, 1, 4, 4), atol=1e-6, rtol=0)


def test_resize_area_averages_blocks_and_scale_pixels():
    rows, cols = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    images = ((rows // 2) + (cols // 2)).to(torch.uint8).expand(3, 2, 96, 96)
    expected = (torch.arange(48).view(-1, 1) + torch.arange(48)).to(torch.uint8)
    assert torch.equal(resize_area(images, 48), expected.expand(3, 2, 48, 48))
    pixels = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    assert torch.equal(scale_pixels(pixels), torch.tensor([[[[0.0, 1.0]]]]))
    torch.testing.assert_close(scale_pixels(pixels, 0.5, 0.25), torch.tensor([[[[-2.0, 2.0]]]]))


def test_scale_pixels_per_channel():
    pixels = torch.tensor([[[[0, 255]], [[255, 0]]]], dtype=torch.uint8)  # [1, 2, 1, 2]
    expected = torch.tensor([[[[-1.0, 1.0]], [[3.0, -1.0]]]])
    torch.testing.assert_close(scale_pixels(pixels, (0.5, 0.25), (0.5, 0.25)), expected)


def test_random_horizontal_flip_mirrors_some_images_whole():
    images = torch.arange(64 * 2 * 3 * 4, dtype=torch.float32).view(64, 2, 3, 4)
    out = random_horizontal_flip(images, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True))  # each image mirrored or kept, all channels alike
    assert 16 < sum(mirrored) < 48
    assert torch.equal(out, random_horizontal_flip(images, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("max_shift, error", [(2.5, TypeError), (True, TypeError), ("2", TypeError), (-1, ValueError)])
def test_random_shift_checks_max_shift(max_shift, error):
    with pytest.raises(error, match="max_shift must be"):
        random_shift(torch.zeros(1, 1, 4, 4), max_shift)
