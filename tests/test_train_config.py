"""Training configuration, command line and schedules: presets, overrides, clear errors, resumable schedules."""

import argparse

import pytest

import routing
from experiments.train.config import PRESETS, TrainConfig, add_arguments, build_config, parse_model_options
from experiments.train.run import parse_args
from experiments.train.schedule import lr_at, progress, spread_margin_at


def test_papers_defaults_per_model_family():
    capsnet = parse_args(["--model", "capsnet"])
    assert (capsnet.optimizer, capsnet.lr, capsnet.schedule, capsnet.decay_rate, capsnet.decay_steps) == \
        ("adam", 1e-3, "exponential", 0.96, 2000)
    assert (capsnet.batch_size, capsnet.loss, capsnet.reconstruction_weight, capsnet.max_shift) == \
        (128, "margin", 0.0005, 2)
    matrix = parse_args(["--model", "matrix-capsnet", "--routing", "em"])
    assert (matrix.dataset, matrix.loss, matrix.spread_margin_start, matrix.spread_margin_end) == \
        ("smallnorb", "spread", 0.2, 0.9)
    assert matrix.reconstruction_weight == 0.0


def test_compact_model_takes_the_loss_of_its_routings_paper_unless_told():
    assert build_config(model="compact", routing="dynamic").loss == "margin"
    assert build_config(model="compact", routing="em").loss == "spread"
    assert build_config(model="compact", routing="em", loss="margin").loss == "margin"
    assert build_config(model="capsnet", routing="em").loss == "margin"  # the preset fixes it


def test_a_variant_takes_its_family_preset_and_options_override_it():
    config = parse_args(["--model", "matrix-capsnet-small", "--lr", "0.01", "--no-progress", "--amp",
                         "--model-option", "width=8", "--model-option", "name=x", "--time-budget-min", "1.5"])
    assert config.loss == PRESETS["matrix-capsnet"]["loss"]
    assert (config.lr, config.progress, config.amp, config.time_budget_min) == (0.01, False, True, 1.5)
    assert config.model_options == {"width": 8, "name": "x"}


def test_every_field_has_a_described_option():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = {action.dest: action.help for action in parser._actions}
    assert {f for f in TrainConfig.__dataclass_fields__} <= set(options)
    undescribed = [name for name, text in options.items() if text.startswith("(default")]
    assert not undescribed


@pytest.mark.parametrize("options, message", [
    (dict(dataset="cifar"), "--dataset must be one of"),
    (dict(schedule="linear"), "--schedule must be one of"),
    (dict(optimizer="sgd"), "--optimizer must be one of"),
    (dict(batch_size=0), "--batch-size must be >= 1"),
    (dict(lr=-1.0), r"--lr must be a finite number in \(0, inf\)"),
    (dict(time_budget_min=0.0), r"--time-budget-min must be a finite number in \(0, inf\)"),
    (dict(train_subset=0), "--train-subset must be >= 1"),
    (dict(bogus=1), "unknown training option"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        build_config(**options)


def test_bad_model_option_syntax():
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_options(["width"])


def test_onecycle_warms_up_then_anneals_to_the_final_fraction():
    config = build_config(model="compact", schedule="onecycle", lr=1.0, warmup_fraction=0.2, final_lr_fraction=0.1)
    assert lr_at(config, 0, 0.0) == pytest.approx(1 / 25)
    assert lr_at(config, 10, 0.1) == pytest.approx(1 / 25 + (1 - 1 / 25) / 2)
    assert lr_at(config, 20, 0.2) == pytest.approx(1.0)
    assert lr_at(config, 60, 0.6) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(config, 100, 1.0) == pytest.approx(0.1)


def test_exponential_decay_by_step():
    config = build_config(model="capsnet")
    assert lr_at(config, 4000, 0.3) == pytest.approx(1e-3 * 0.96 ** 2)


def test_progress_follows_steps_or_the_clock_whichever_is_further():
    by_steps = build_config(model="compact")
    assert progress(by_steps, 25, 100, train_seconds=1e6) == 0.25
    timed = build_config(model="compact", time_budget_min=2.0)
    assert progress(timed, 25, 100, train_seconds=90.0) == 0.75
    assert progress(timed, 25, 100, train_seconds=600.0) == 1.0


def test_spread_margin_grows_from_start_to_end_then_stays():
    config = build_config(model="matrix-capsnet", spread_margin_fraction=0.5)
    assert spread_margin_at(config, 0.0) == pytest.approx(0.2)
    assert spread_margin_at(config, 0.25) == pytest.approx(0.55)
    assert spread_margin_at(config, 0.5) == pytest.approx(0.9)
    assert spread_margin_at(config, 1.0) == pytest.approx(0.9)


def test_routing_iterations_default_to_the_algorithms_own_and_only_apply_where_it_iterates():
    assert build_config(model="compact", routing="dynamic").routing_iterations == 3
    assert build_config(model="compact", routing="inverted-dot-product").routing_iterations == 2  # its paper's
    assert build_config(model="compact", routing="em", routing_iterations=2).routing_iterations == 2
    assert build_config(model="compact", routing="self-routing").routing_iterations is None
    with pytest.raises(ValueError, match="routing 'self-attention' does not iterate"):
        build_config(model="compact", routing="self-attention", routing_iterations=3)
    with pytest.raises(ValueError, match="routing-iterations must be >= 1"):
        build_config(model="compact", routing="dynamic", routing_iterations=0)


def test_each_routing_trains_with_its_papers_loss():
    losses = {name: build_config(model="compact", routing=name).loss for name in routing.available()}
    assert losses == {"dynamic": "margin", "em": "spread", "self-routing": "nll", "self-attention": "margin",
                      "inverted-dot-product": "cross-entropy", "variational-bayes": "cross-entropy"}
