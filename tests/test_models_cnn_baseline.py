"""The plain CNN baseline: sized to a parameter count, trains like the capsule models, clear errors."""

import pytest
import torch

import capsules
from capsules.models.cnn_baseline import parameter_count


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("in_channels, image_size", [(1, 28), (1, 40), (3, 32)])
def test_parameter_formula_and_matching_a_capsule_model(in_channels, image_size):
    capsule = capsules.create_model("compact", in_channels=in_channels, image_size=image_size)
    target = count(capsule)
    cnn = capsules.create_model("cnn-baseline", in_channels=in_channels, image_size=image_size, params=target)
    grid = (image_size + 3) // 4
    assert count(cnn) == parameter_count(in_channels, (32, 64, 128), grid, 10, cnn.width)
    # the smallest width that reaches the target: one unit narrower falls short
    assert count(cnn) >= target > parameter_count(in_channels, (32, 64, 128), grid, 10, cnn.width - 1)
    assert abs(count(cnn) - target) / target < 0.05


def test_forward_gives_class_probabilities_and_gradients():
    torch.manual_seed(0)
    model = capsules.create_model("cnn-baseline", image_size=40, width=8)
    images, labels = torch.rand(4, 1, 40, 40), torch.tensor([0, 1, 2, 3])
    out = model(images, labels)
    assert out.activations.shape == (4, 10) and out.poses.shape == (4, 10, 0) and out.reconstruction is None
    assert torch.allclose(out.activations.sum(1), torch.ones(4))
    capsules.nll_loss(out.activations, labels).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_settings_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="params=0"):
        capsules.create_model("cnn-baseline", params=0)
    with pytest.raises(ValueError, match="channels"):
        capsules.create_model("cnn-baseline", channels=(8, 8))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\] = \[\*, 1, 28, 28\]"):
        capsules.create_model("cnn-baseline")(torch.zeros(2, 1, 32, 32))
    with pytest.raises(TypeError):
        capsules.create_model("cnn-baseline", routing="dynamic")
