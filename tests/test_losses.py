"""The papers' losses against hand-computed values, the spread margin schedule, and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from capsules import (
    SpreadMarginSchedule,
    logit_cross_entropy,
    margin_loss,
    nll_loss,
    reconstruction_loss,
    spread_loss,
)


def test_margin_loss_matches_hand_computed_values():
    lengths = torch.tensor([[0.95, 0.3, 0.05], [0.5, 0.2, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    # sample 0: present 0.95 >= 0.9 -> 0; absent 0.5 (0.3 - 0.1)^2 = 0.02 and 0.05 < 0.1 -> 0: total 0.02
    # sample 1: present (0.9 - 0.8)^2 = 0.01; absent 0.5 (0.4^2 + 0.1^2) = 0.085: total 0.095
    assert margin_loss(lengths, labels).item() == pytest.approx((0.02 + 0.095) / 2, abs=1e-15)
    # other constants: m+ = 1, m- = 0, lambda = 1 on sample 0: (1 - 0.95)^2 + 0.3^2 + 0.05^2
    assert margin_loss(lengths[:1], labels[:1], m_plus=1.0, m_minus=0.0, lambda_=1.0).item() == pytest.approx(
        0.05**2 + 0.3**2 + 0.05**2, abs=1e-15)


def test_spread_loss_matches_hand_computed_values():
    activations = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.6, 0.55]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    # sample 0: (0.5 - 0.4)^2 + max(0, 0.5 - 0.8)^2 = 0.01;  sample 1: (0.5 - 0.4)^2 + (0.5 - 0.05)^2 = 0.2125
    assert spread_loss(activations, labels, 0.5).item() == pytest.approx((0.01 + 0.2125) / 2, abs=1e-15)
    assert spread_loss(activations, labels, 0.0).item() == pytest.approx(0.0, abs=1e-15)


def test_spread_loss_gradient_pushes_the_target_up_and_close_rivals_down():
    activations = torch.tensor([[0.6, 0.55, 0.0]], requires_grad=True)
    spread_loss(activations, torch.tensor([0]), 0.2).backward()
    grad = activations.grad[0]
    assert grad[0] < 0 and grad[1] > 0 and grad[2] == 0  # the distant rival is outside the margin


def test_reconstruction_loss_is_scaled_sum_of_squares_per_image_averaged_over_the_batch():
    images = torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.5)]).double()
    reconstruction = torch.zeros(2, 4, dtype=torch.float64)
    # 0.0005 x 4 x 1^2 = 0.002 and 0.0005 x 4 x 0.5^2 = 0.0005
    assert reconstruction_loss(reconstruction, images).item() == pytest.approx((0.002 + 0.0005) / 2, abs=1e-15)
    assert reconstruction_loss(reconstruction, images, scale=1.0).item() == pytest.approx(2.5, abs=1e-15)


def test_spread_margin_schedule_grows_linearly_then_holds_and_resumes():
    schedule = SpreadMarginSchedule(0.2, 0.9, steps=4)
    margins = []
    for _ in range(6):
        margins.append(schedule.margin)
        schedule.step()
    assert margins == pytest.approx([0.2, 0.375, 0.55, 0.725, 0.9, 0.9])
    half = SpreadMarginSchedule(0.2, 0.9, steps=4)
    half.step()
    half.step()
    resumed = SpreadMarginSchedule()
    resumed.load_state_dict(half.state_dict())
    assert resumed.margin == pytest.approx(0.55) and resumed.steps == 4
    resumed.step()
    assert resumed.margin == pytest.approx(0.725)


def test_losses_reject_bad_inputs_clearly():
    lengths = torch.rand(2, 3)
    with pytest.raises(ValueError, match=r"labels must lie in 0..2"):
        margin_loss(lengths, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"integer tensor \[B\] = \[2\]"):
        margin_loss(lengths, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"integer tensor \[B\] = \[2\]"):
        spread_loss(lengths, torch.tensor([0, 1, 2]), 0.2)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        spread_loss(torch.rand(2, 3, 1), torch.tensor([0, 1]), 0.2)
    with pytest.raises(ValueError, match=r"C\*H\*W = 4"):
        reconstruction_loss(torch.zeros(2, 4), torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        SpreadMarginSchedule(steps=0)
    with pytest.raises(ValueError, match="missing"):
        SpreadMarginSchedule().load_state_dict({"start": 0.2})


def test_nll_loss_is_minus_the_log_of_the_true_class_activation():
    a = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    want = -(math.log(0.7) + math.log(0.5)) / 2
    assert nll_loss(a, labels).item() == pytest.approx(want, rel=1e-12)
    assert torch.isfinite(nll_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([0])))  # an activation of exactly 0


def test_logit_cross_entropy_is_the_cross_entropy_of_the_sigmoids_input():
    z = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 1])
    got = logit_cross_entropy(torch.sigmoid(z), labels)
    assert got.item() == pytest.approx(torch.nn.functional.cross_entropy(z, labels).item(), rel=1e-9)
    saturated = logit_cross_entropy(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert torch.isfinite(saturated) and saturated.item() < 1e-6


@pytest.mark.parametrize("loss", [nll_loss, logit_cross_entropy])
def test_likelihood_losses_check_their_inputs(loss):
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        loss(torch.rand(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        loss(torch.rand(2, 3), torch.tensor([0, 3]))


EMPTY_BATCH_LOSSES = {
    "margin": lambda a, y: margin_loss(a, y),
    "spread": lambda a, y: spread_loss(a, y, 0.2),
    "nll": nll_loss,
    "cross-entropy": logit_cross_entropy,
}


@pytest.mark.parametrize("name", EMPTY_BATCH_LOSSES)
def test_an_empty_batch_has_loss_zero_not_nan(name):
    # issue 16 cause 8: Tensor.mean of nothing is NaN, and NaN x 0 images poisons a sum over evaluation shards
    activations = torch.rand(0, 10, requires_grad=True)
    loss = EMPTY_BATCH_LOSSES[name](activations, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert activations.grad.shape == (0, 10)
    reconstruction = torch.rand(0, 4, requires_grad=True)
    assert reconstruction_loss(reconstruction, torch.rand(0, 1, 2, 2)).item() == 0.0


def test_a_batch_mean_is_unchanged_by_the_empty_batch_rule():
    lengths = torch.rand(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 0, 1])
    one_by_one = sum(margin_loss(lengths[i:i + 1], labels[i:i + 1]) for i in range(5)) / 5
    assert margin_loss(lengths, labels).item() == pytest.approx(one_by_one.item(), rel=1e-12)


@pytest.mark.parametrize("margin, message", [
    (-0.1, "spread_loss margin must be a finite number >= 0, got -0.1"),
    (float("nan"), "spread_loss margin must be a finite number >= 0, got nan"),
    ("0.2", "spread_loss margin must be a real number, got '0.2'"),
    (torch.tensor([0.2, 0.3]), "spread_loss margin must be a real number"),
])
def test_spread_loss_refuses_a_margin_that_is_not_a_number_at_least_zero(margin, message):
    with pytest.raises(ValueError, match=message):
        spread_loss(torch.rand(2, 3), torch.tensor([0, 1]), margin)


def test_spread_loss_takes_a_one_element_tensor_margin():
    activations, labels = torch.rand(2, 3), torch.tensor([0, 1])
    assert spread_loss(activations, labels, torch.tensor(0.4)).item() == pytest.approx(
        spread_loss(activations, labels, 0.4).item())


@pytest.mark.parametrize("start, stop, message", [
    (0.9, 0.2, "expected 0 <= start <= stop"),
    (-0.1, 0.2, "start must be a finite number >= 0"),
    (0.2, float("nan"), "stop must be a finite number >= 0"),
])
def test_spread_margin_schedule_refuses_inverted_or_negative_margins(start, stop, message):
    with pytest.raises(ValueError, match=message):
        SpreadMarginSchedule(start, stop, steps=10)


@pytest.mark.parametrize("options, message", [
    (dict(m_plus=0.1, m_minus=0.9), "expected m_minus <= m_plus"),
    (dict(m_plus=1.5), r"m_plus must be a finite number in \[0, 1\]"),
    (dict(m_minus=-0.1), r"m_minus must be a finite number in \[0, 1\]"),
    (dict(lambda_=-1.0), "lambda_ must be a finite number >= 0, got -1.0"),
    (dict(lambda_=float("inf")), "lambda_ must be a finite number >= 0, got inf"),
])
def test_margin_loss_refuses_bad_constants(options, message):
    with pytest.raises(ValueError, match=message):
        margin_loss(torch.rand(2, 3), torch.tensor([0, 1]), **options)


def test_reconstruction_loss_refuses_images_that_are_not_pixels_in_0_1():
    reconstruction = torch.rand(2, 4)
    with pytest.raises(ValueError, match="must be floating-point pixels in \\[0, 1\\], got dtype torch.uint8"):
        reconstruction_loss(reconstruction, torch.randint(0, 256, (2, 1, 2, 2), dtype=torch.uint8))
    with pytest.raises(ValueError, match="got values from 0 to 255"):
        reconstruction_loss(reconstruction, torch.tensor([0.0, 255.0, 3.0, 7.0]).repeat(2, 1).view(2, 1, 2, 2))
    normalised = (torch.tensor([0.0, 0.5, 1.0, 0.25]).repeat(2, 1).view(2, 1, 2, 2) - 0.1307) / 0.3081
    with pytest.raises(ValueError, match="got values from -0.424213 to 2.82149"):
        reconstruction_loss(reconstruction, normalised)
    with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
        reconstruction_loss(reconstruction, torch.rand(2, 1, 2, 2), scale=-1.0)
