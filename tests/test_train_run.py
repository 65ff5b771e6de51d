"""Training runs end to end: small written MNIST files (conftest's `small_mnist`) and real MNIST (from
$CAPSULES_DATA, skipped without it) learn with each routing, resume is exact, smallNORB files train, and bad
arguments fail with clear messages. Small subsets and a narrow compact model keep the module short."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers_smallnorb import write_split

import experiments.train.run as train_module
import routing
from experiments.train.config import build_config
from experiments.train.run import CHECKPOINT, METRICS, main, train

COMPACT = "compact"
NARROW = {"channels": [16, 32, 32], "types": 4}  # the compact model, narrower: same layers, a fraction of the time
ROW_COLUMNS = {"epoch", "train_loss", "train_accuracy", "test_accuracy", "test_error", "samples_per_s",
               "wall_time_s", "device", "git_commit", "config_model", "config_routing", "config_lr", "config_seed"}


def small_run(tmp_path: Path, name: str, data_root: Path, **options):
    """A quick narrow compact-model configuration on a slice of the data in data_root, writing into tmp_path / name."""
    settings = dict(model=COMPACT, model_options=NARROW, dataset="mnist", data_root=str(data_root), train_subset=256,
                    test_subset=100, batch_size=32, epochs=1, schedule="constant", lr=2e-3, progress=False,
                    out_dir=str(tmp_path / name))
    return build_config(**{**settings, **options})


# Training images of the one-epoch real-MNIST run: variational Bayes routing's class activations (from posterior
# entropies and mixing weights) start nearly equal and separate more slowly: 21% test accuracy after 1024 images,
# 37% after 3072 (its 20-minute run reaches 98.9%, experiments/results/accuracy.csv).
SHORT_RUN_IMAGES = {"variational-bayes": 4096}


@pytest.mark.parametrize("routing_name", routing.available())
def test_short_real_mnist_run_learns_well_above_chance(tmp_path, routing_name, real_mnist_dir):
    config = small_run(tmp_path, routing_name, real_mnist_dir, routing=routing_name,
                       train_subset=SHORT_RUN_IMAGES.get(routing_name, 1024), test_subset=500)
    check_learns_well_above_chance(config, routing_name)


@pytest.mark.parametrize("routing_name", routing.available())
def test_short_run_on_written_mnist_learns_well_above_chance(tmp_path, routing_name, small_mnist):
    config = small_run(tmp_path, routing_name, small_mnist, routing=routing_name, train_subset=1024)
    check_learns_well_above_chance(config, routing_name)


def check_learns_well_above_chance(config, routing_name: str) -> None:
    """Train `config` one epoch: one metrics row, test accuracy well above chance, saved as it was returned."""
    table = train(config)
    assert len(table) == 1
    assert table["test_accuracy"].iloc[0] > 0.3, table.to_string()  # chance is 0.1
    saved = pd.read_csv(Path(config.out_dir) / METRICS)
    assert ROW_COLUMNS <= set(saved.columns)
    assert saved["test_accuracy"].iloc[0] == pytest.approx(table["test_accuracy"].iloc[0])
    assert saved["config_routing"].iloc[0] == routing_name


def interrupt_at_step(monkeypatch, stop_step: int) -> None:
    """Make the training loop raise KeyboardInterrupt (as Ctrl-C would) when it reaches optimiser step `stop_step`."""
    real_lr_at = train_module.lr_at

    def lr_at(config, step, done):
        if step == stop_step:
            raise KeyboardInterrupt
        return real_lr_at(config, step, done)

    monkeypatch.setattr(train_module, "lr_at", lr_at)


def test_interrupted_run_keeps_its_last_checkpoint_and_resumes_exactly(tmp_path, monkeypatch, small_mnist):
    # onecycle and the spread margin: both schedules must continue where they stopped
    options = dict(routing="dynamic", schedule="onecycle", loss="spread", epochs=2)
    straight = train(small_run(tmp_path, "straight", small_mnist, **options))
    interrupt_at_step(monkeypatch, 12)  # 8 steps per epoch: in the middle of epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(small_run(tmp_path, "resumed", small_mnist, **options))
    monkeypatch.undo()
    assert pd.read_csv(tmp_path / "resumed" / METRICS)["epoch"].tolist() == [1]
    assert torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=False)["run"]["step"] == 8
    resumed = train(small_run(tmp_path, "resumed", small_mnist, resume=True, **options))
    metrics = ["epoch", "step", "train_loss", "train_accuracy", "test_accuracy", "test_loss", "lr"]
    pd.testing.assert_frame_equal(straight[metrics], resumed[metrics])
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=False)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert torch.equal(a["data_generator"], b["data_generator"])


def test_a_finished_run_resumes_to_the_same_table(tmp_path, small_mnist):
    first = train(small_run(tmp_path, "done", small_mnist, routing="dynamic", train_subset=128))
    again = train(small_run(tmp_path, "done", small_mnist, routing="dynamic", train_subset=128, resume=True))
    pd.testing.assert_frame_equal(first, again)


@pytest.mark.parametrize("routing_name", routing.available())
def test_bf16_autocast_option_trains(tmp_path, routing_name, small_mnist):
    table = train(small_run(tmp_path, f"amp-{routing_name}", small_mnist, routing=routing_name, train_subset=128,
                            amp=True))
    assert table["config_amp"].tolist() == [True]
    assert torch.isfinite(torch.tensor(table[["train_loss", "test_loss"]].to_numpy())).all()


def test_a_non_finite_loss_stops_the_run_with_a_clear_error(tmp_path, monkeypatch, small_mnist):
    monkeypatch.setattr(train_module, "total_loss", lambda *args: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(FloatingPointError, match="training loss is nan at step 1"):
        train(small_run(tmp_path, "nan", small_mnist, routing="dynamic", train_subset=64))


def test_smallnorb_run_on_written_files_completes(tmp_path):
    root = tmp_path / "smallnorb"
    write_split(root, train=True, pairs=36, seed=1)
    write_split(root, train=False, pairs=20, seed=2)
    config = small_run(tmp_path, "norb", root, routing="em", dataset="smallnorb", train_subset=None,
                       test_subset=None, batch_size=12, loss="spread")
    table = train(config)
    assert table["epoch"].tolist() == [1] and table["step"].tolist() == [3]
    assert 0.0 <= table["test_accuracy"].iloc[0] <= 1.0
    assert table["train_loss"].notna().all()


@pytest.mark.parametrize("argv, message", [
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--routing", "no-such-routing"], "unknown routing 'no-such-routing'"),
    (["--dataset", "cifar100"], "--dataset must be one of"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_bad_arguments_are_clear_errors(tmp_path, capsys, small_mnist, argv, message):
    common = ["--model", COMPACT, "--data-root", str(small_mnist), "--train-subset", "64", "--test-subset", "64",
              "--batch-size", "32", "--out-dir", str(tmp_path / "bad"), "--no-progress"]
    assert main(common + argv) == 2
    assert message in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["--model", COMPACT, "--data-root", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "mnist data not found in" in err and "--data-root" in err


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys, small_mnist):
    argv = ["--model", COMPACT, "--data-root", str(small_mnist), "--train-subset", "64", "--test-subset", "64",
            "--batch-size", "32", "--out-dir", str(tmp_path / "none"), "--resume"]
    assert main(argv) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err
