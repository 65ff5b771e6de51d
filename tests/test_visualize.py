"""Pictures of trained models (experiments.visualize) and TensorBoard scalars of training runs.

Run folders are written the way capsule-train writes them (config.json beside checkpoint.pt) from untrained models
on the small written MNIST files (conftest's `small_mnist`): the pictures' files, sizes and contents are checked,
not what a trained model would show. TensorBoard's event files come from one-epoch runs on 64 images.
"""

import json
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread

import experiments.train.tensorboard as tensorboard_module
from capsules import CapsuleLinear, CapsuleOutput
from experiments.train.checkpoint import save_checkpoint, seed_everything
from experiments.train.config import TrainConfig, build_config
from experiments.train.data import load_data
from experiments.train.run import CHECKPOINT, CONFIG, build_model, train
from experiments.train.run import main as train_main
from experiments.visualize.assignments import recording, window_maps
from experiments.visualize.decoding import PERTURBATIONS, perturbed_reconstructions, reconstruct
from experiments.visualize.figures import PanelGrid
from experiments.visualize.main import main
from experiments.visualize.pictures import draw_assignments, write_pictures
from experiments.visualize.runs import Run, load_run

NARROW = {"channels": [8, 16, 16], "types": 2}  # the compact model, narrower: 7x7x2 children


def write_run(folder: Path, data_root: Path, **options) -> Path:
    """A run folder as capsule-train leaves it (config.json, checkpoint.pt with the model's state) for an untrained
    model of `options` on the small MNIST files; returns the checkpoint's path."""
    config = build_config(dataset="mnist", data_root=str(data_root), out_dir=str(folder), **options)
    seed_everything(0)
    model = build_model(config, load_data("mnist", data_root, train_subset=1, test_subset=1))
    folder.mkdir(parents=True)
    (folder / CONFIG).write_text(json.dumps(config.to_dict(), indent=2))
    save_checkpoint({"model": model.state_dict(), "run": {"epoch": 1}}, folder / CHECKPOINT)
    return folder / CHECKPOINT


def png_size(path: Path) -> tuple[int, int]:
    """(height, width) of the PNG at `path`, decoded."""
    return imread(path).shape[:2]


@pytest.fixture
def capsnet_run(tmp_path, small_mnist) -> Path:
    return write_run(tmp_path / "capsnet", small_mnist, model="capsnet", routing="dynamic")


# ---------------------------------------------------------------------------------------- the command line
def test_capsnet_pictures_have_the_expected_grids(tmp_path, small_mnist, capsnet_run, capsys):
    out = tmp_path / "pictures"
    assert main(["--checkpoint", str(capsnet_run), "--out", str(out), "--index", "3", "0",
                 "--device", "cpu"]) == 0
    assert png_size(out / "reconstructions.png") == PanelGrid.pixels(2, 2)
    for index in (3, 0):
        # 16 pose entries x 11 shifts (-0.25 ... +0.25 by 0.05), with the shifts as column labels
        assert png_size(out / f"perturbations-image{index}.png") == PanelGrid.pixels(16, 11, column_labels=True)
        # one routed layer (DigitCaps), 10 parents: the input and 10 maps in one row, with a colour bar
        assert png_size(out / f"assignments-image{index}.png") == PanelGrid.pixels(1, 11, colour_bars=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["reconstructions.png"] + [f"{kind}-image{i}.png" for kind in ("perturbations", "assignments")
                                   for i in (0, 3)])
    assert "wrote" in capsys.readouterr().out


def test_compared_checkpoints_get_a_row_per_routing(tmp_path, small_mnist, capsys):
    runs = [write_run(tmp_path / name, small_mnist, model="compact", routing=name, model_options=NARROW)
            for name in ("dynamic", "em")]
    out = tmp_path / "compared"
    assert main(["--checkpoint", *map(str, runs), "--out", str(out), "--images", "1", "--device", "cpu"]) == 0
    assert png_size(out / "assignments-compared-image0.png") == PanelGrid.pixels(2, 11, True, True)
    for name in ("dynamic", "em"):  # each run's own maps in a folder named by its routing; no decoder, no more
        assert sorted(p.name for p in (out / name).iterdir()) == ["assignments-image0.png"]
    printed = capsys.readouterr().out
    assert "compact has no reconstruction decoder; reconstructions and pose perturbations skipped" in printed


@pytest.mark.parametrize("problem, message", [
    ("missing", "no checkpoint at"),
    ("corrupt", "is not a readable checkpoint"),
    ("no-config", "no config.json beside"),
    ("other-model", "does not fit the model its config.json describes"),
    ("index", "--index 200 is outside the test set, which has 200 images"),
    ("negative-index", "--index takes positions in the test set (>= 0), got [-1]"),
    ("no-images", "--images must be >= 1, got 0"),
    ("other-dataset", "the checkpoints compared must come from one dataset"),
])
def test_bad_checkpoints_and_options_are_clear_errors(tmp_path, small_mnist, capsys, problem, message):
    checkpoint = write_run(tmp_path / "run", small_mnist, model="compact", routing="dynamic", model_options=NARROW)
    argv = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--device", "cpu"]
    if problem == "missing":
        checkpoint.unlink()
    elif problem == "corrupt":
        checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    elif problem == "no-config":
        (checkpoint.parent / CONFIG).unlink()
    elif problem == "other-model":  # EM routing learns beta_u and beta_a, which the dynamic run's state lacks
        config = json.loads((checkpoint.parent / CONFIG).read_text())
        (checkpoint.parent / CONFIG).write_text(json.dumps({**config, "routing": "em"}))
    elif problem == "index":
        argv += ["--index", "200"]
    elif problem == "negative-index":
        argv += ["--index", "3", "-1"]
    elif problem == "no-images":
        argv += ["--images", "0"]
    elif problem == "other-dataset":  # the same digits on a 40x40 canvas are other test images
        other = write_run(tmp_path / "canvas", small_mnist, model="compact", routing="em", model_options=NARROW)
        config = json.loads((other.parent / CONFIG).read_text())
        (other.parent / CONFIG).write_text(json.dumps({**config, "canvas": 40}))
        argv[1:2] = [str(checkpoint), str(other)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ------------------------------------------------------------------------------ what the pictures contain
def test_perturbations_shift_one_pose_entry_of_the_winner(tmp_path, small_mnist, capsnet_run):
    data = load_data("mnist", small_mnist, train_subset=1, test_subset=2)
    run = load_run(capsnet_run, data, torch.device("cpu"))
    image = data.test_images[1]
    assert PERTURBATIONS.tolist() == pytest.approx([-0.25, -0.2, -0.15, -0.1, -0.05, 0, 0.05, 0.1, 0.15, 0.2, 0.25])
    winner, grid = perturbed_reconstructions(run.model, image)
    assert grid.shape == (16, 11, 1, 28, 28)
    predicted, plain = reconstruct(run.model, image[None])
    assert winner == int(predicted[0])
    for d in range(16):  # the middle column is no shift: every row reproduces the plain reconstruction
        torch.testing.assert_close(grid[d, 5], plain[0])
    # the decoder's input for entry 3 shifted by +0.25, built by hand: the winner's pose alone, entry 3 moved
    poses = run.model(image[None], None).poses.detach()
    masked = torch.zeros_like(poses)
    masked[0, winner] = poses[0, winner]
    masked[0, winner, 3] += 0.25
    expected = run.model.decoder.layers(masked.flatten(1)).view(1, 28, 28)
    torch.testing.assert_close(grid[3, 10], expected)
    assert not torch.allclose(grid[3, 10], grid[3, 0])


def test_dense_layer_maps_lie_on_the_primary_capsule_grid(tmp_path, small_mnist):
    checkpoint = write_run(tmp_path / "run", small_mnist, model="compact", routing="dynamic", model_options=NARROW)
    data = load_data("mnist", small_mnist, train_subset=1, test_subset=2)
    run = load_run(checkpoint, data, torch.device("cpu"))
    with recording(run.model) as layers, torch.no_grad():
        run.model(data.test_images[:2], None)
    (layer,) = layers
    assert (layer.name, layer.kind, layer.grid) == ("classes_caps", "CapsuleLinear", (7, 7, 2))
    assert layer.assignments.shape == (2, 98, 10) and layer.maps.shape == (2, 10, 7, 7)
    # child (h, w, t) is assignment row (7 h + w) 2 + t, as the model flattens its primary capsules
    torch.testing.assert_close(layer.maps[1, 4, 2, 5], layer.assignments[1, [38, 39], 4].mean())
    # dynamic routing's couplings sum to 1 over the parents, so each position's maps do too
    torch.testing.assert_close(layer.maps.sum(dim=1), torch.ones(2, 7, 7))


def test_convolutional_layers_map_windows_back_onto_their_children(tmp_path, small_mnist):
    checkpoint = write_run(tmp_path / "run", small_mnist, model="matrix-capsnet-small", routing="dynamic")
    data = load_data("mnist", small_mnist, train_subset=1, test_subset=1)
    run = load_run(checkpoint, data, torch.device("cpu"))
    with recording(run.model) as layers, torch.no_grad():
        run.model(data.test_images[:1], None)
    assert [(layer.name, layer.grid) for layer in layers] == [
        ("conv_caps1", (12, 12, 8)), ("conv_caps2", (5, 5, 16)), ("class_caps", (3, 3, 16))]
    assert [tuple(layer.maps.shape) for layer in layers] == [(1, 16, 12, 12), (1, 16, 5, 5), (1, 10, 3, 3)]
    # 3x3 windows with stride 2 over 12 rows start at 0, 2, ..., 8 and reach row 10: row and column 11 are in no
    # window; every covered child's couplings sum to 1 over the parent types of each of its windows
    sums = layers[0].maps[0].sum(dim=0)
    torch.testing.assert_close(sums[:11, :11], torch.ones(11, 11))
    assert sums[11].abs().max() == 0 and sums[:, 11].abs().max() == 0


def test_window_maps_match_a_loop_over_windows():
    height, width, types, kernel, stride, parents, batch = 5, 4, 2, 3, 1, 3, 2
    rows, columns = (height - kernel) // stride + 1, (width - kernel) // stride + 1
    assignments = torch.rand(batch * rows * columns, kernel * kernel * types, parents, dtype=torch.float64)
    total = torch.zeros(batch, height, width, types, parents, dtype=torch.float64)
    count = torch.zeros(height, width, types, 1, dtype=torch.float64)
    for b in range(batch):
        for y in range(rows):
            for x in range(columns):
                window = assignments[(b * rows + y) * columns + x].view(kernel, kernel, types, parents)
                total[b, y * stride:y * stride + kernel, x * stride:x * stride + kernel] += window
                if b == 0:
                    count[y * stride:y * stride + kernel, x * stride:x * stride + kernel] += 1
    expected = (total / count).mean(dim=3).permute(0, 3, 1, 2)
    torch.testing.assert_close(window_maps(assignments, height, width, types, kernel, stride), expected)


# ----------------------------------------------------------------------------------------------- TensorBoard
def scalars(folder: Path):
    """The scalars TensorBoard reads from the event files in `folder` (an EventAccumulator, loaded)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def test_tensorboard_scalars_per_step_and_epoch_and_after_a_resume(tmp_path, small_mnist):
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra: pip install -e '.[tensorboard]'")
    from torch.utils.tensorboard import SummaryWriter

    settings = dict(model="compact", model_options=NARROW, dataset="mnist", data_root=str(small_mnist),
                    train_subset=64, test_subset=40, batch_size=32, schedule="constant", progress=False,
                    tensorboard=True, out_dir=str(tmp_path / "run"))
    first = train(build_config(epochs=1, **settings))
    board = tmp_path / "run" / tensorboard_module.TENSORBOARD_DIR
    events = scalars(board)
    assert {"step/train_loss", "step/train_accuracy", "step/lr", "epoch/train_loss", "epoch/test_accuracy",
            "epoch/lr"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("step/train_loss")] == [1, 2]
    (epoch,) = events.Scalars("epoch/test_accuracy")
    assert epoch.step == 2 and epoch.value == pytest.approx(first["test_accuracy"].iloc[0])
    assert events.Scalars("epoch/train_loss")[0].value == pytest.approx(first["train_loss"].iloc[0], rel=1e-6)
    # the last step's running mean is the epoch's mean
    assert events.Scalars("step/train_loss")[-1].value == pytest.approx(first["train_loss"].iloc[0], rel=1e-6)

    with SummaryWriter(str(board)) as stale:  # what a run killed in its 2nd epoch, after step 3, leaves behind
        stale.add_scalar("step/train_loss", 123.0, 3)
    resumed = train(build_config(epochs=2, resume=True, **settings))
    events = scalars(board)
    losses = events.Scalars("step/train_loss")
    assert [event.step for event in losses] == [1, 2, 3, 4]
    assert 123.0 not in [event.value for event in losses]
    assert [event.step for event in events.Scalars("epoch/test_accuracy")] == [2, 4]
    assert events.Scalars("epoch/test_accuracy")[-1].value == pytest.approx(resumed["test_accuracy"].iloc[-1])


def test_tensorboard_without_the_package_fails_before_reading_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tensorboard_module, "tensorboard_available", lambda: False)
    argv = ["--model", "compact", "--data-root", str(tmp_path / "no-data"), "--out-dir", str(tmp_path / "run"),
            "--tensorboard"]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert "--tensorboard needs the tensorboard package" in err and 'pip install -e ".[tensorboard]"' in err
    assert len(err.strip().splitlines()) == 1


class FlatCapsules(torch.nn.Module):
    """Capsules from a linear map of the pixels, with no grid: 12 children of 8 entries routed to 10 parents."""

    def __init__(self):
        super().__init__()
        self.children_poses = torch.nn.Linear(28 * 28, 12 * 8)
        self.parents = CapsuleLinear(12, 8, 10, 16, "dynamic")

    def forward(self, images, labels=None):
        poses, activations = self.parents(self.children_poses(images.flatten(1)).view(-1, 12, 8))
        return CapsuleOutput(activations, poses)


def test_children_without_a_grid_are_drawn_as_the_assignment_matrix(tmp_path):
    torch.manual_seed(0)
    run = Run(tmp_path / CHECKPOINT, TrainConfig(), FlatCapsules().eval(), "flat")
    path = tmp_path / "assignments.png"
    (layer,) = draw_assignments(run, torch.rand(1, 28, 28), label=3, index=0, path=path)
    assert layer.grid is None and layer.maps is None and layer.assignments.shape == (1, 12, 10)
    assert png_size(path) == PanelGrid.pixels(1, 11, colour_bars=True)


class PlainNetwork(torch.nn.Module):
    """No capsule routing at all, as a CNN baseline: a linear map of the pixels to 10 class scores."""

    def __init__(self):
        super().__init__()
        self.scores = torch.nn.Linear(28 * 28, 10)

    def forward(self, images, labels=None):
        scores = self.scores(images.flatten(1))
        return CapsuleOutput(scores, scores[..., None])


def test_models_without_routing_are_left_out_of_the_maps_with_a_note(tmp_path, small_mnist):
    checkpoint = write_run(tmp_path / "run", small_mnist, model="compact", routing="dynamic", model_options=NARROW)
    data = load_data("mnist", small_mnist, train_subset=1, test_subset=1)
    runs = [load_run(checkpoint, data, torch.device("cpu")),
            Run(tmp_path / "plain" / CHECKPOINT, TrainConfig(model="plain"), PlainNetwork().eval(), "plain")]
    written, notes = write_pictures(runs, data, [0], tmp_path / "out")
    assert [path.relative_to(tmp_path / "out").as_posix() for path in written] == [
        "dynamic/assignments-image0.png", "assignments-compared-image0.png"]
    assert any("plain has no routed layer; assignment maps skipped" in note for note in notes)
    assert png_size(tmp_path / "out" / "assignments-compared-image0.png") == PanelGrid.pixels(1, 11, True, True)
