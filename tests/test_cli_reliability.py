"""The command-line tools against bad input (issue 16): every argument is checked before any work, a usage error
is one line `<prog>: error: ...` on stderr with exit status 2 and no traceback, resumed runs keep their settings,
checkpoints that do not fit are named, and a run folder holds one run at a time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import experiments.train.run as train_module
from experiments.common.folder_lock import LOCK_NAME, FolderInUseError, locked_folder
from experiments.common.outputs import OutputPathError, check_output_dir, check_output_file
from experiments.gpu_check import main as gpu_check
from experiments.throughput import sweep as throughput
from experiments.train import compare_accuracy
from experiments.train.config import build_config
from experiments.train.run import CHECKPOINT, CONFIG, METRICS

REPO = Path(__file__).resolve().parents[1]
# The compact model at its narrowest: a run of 2 steps on 64 images takes about a second.
TINY_MODEL = ["--model", "compact", "--model-option", "channels=[4,4,4]", "--model-option", "types=1"]


def tiny_run_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY_MODEL, "--data-root", str(data), "--train-subset", "64", "--test-subset", "32", "--batch-size",
            "32", "--epochs", "1", "--schedule", "constant", "--lr", "0.002", "--no-progress", "--out-dir", str(out),
            *extra]


def expect_usage_error(capsys, status: int, prog: str, *fragments: str) -> str:
    """status 2 and exactly one line on stderr, `prog: error: ...` holding every fragment; returns the line."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------- capsule-train
@pytest.mark.parametrize("extra, fragment", [
    (["--max-shift", "100"], "--max-shift 100 would move mnist's 28x28 images out of the frame: it must be < 28"),
    (["--max-shift", "28"], "it must be < 28"),
    (["--grad-clip", "-1"], "--grad-clip must be a finite number in (0, inf), got -1.0"),
    (["--grad-clip", "0"], "--grad-clip must be a finite number in (0, inf), got 0.0"),
    (["--grad-clip", "nan"], "--grad-clip must be a finite number in (0, inf), got nan"),
    (["--device", "junk"], "--device must be auto, cpu, cuda or cuda:<index>, got 'junk'"),
    (["--device", "meta"], "--device must be auto, cpu, cuda or cuda:<index>, got 'meta'"),
    (["--lr", "inf"], "--lr must be a finite number in (0, inf), got inf"),
    (["--decay-rate", "-1"], "--decay-rate must be a finite number in (0, 1], got -1.0"),
    (["--weight-decay=-1e-4"], "--weight-decay must be a finite number in [0, inf)"),
    (["--warmup-fraction", "1"], "--warmup-fraction must be a finite number in [0, 1)"),
    (["--final-lr-fraction", "2"], "--final-lr-fraction must be a finite number in [0, 1]"),
    (["--reconstruction-weight", "nan"], "--reconstruction-weight must be a finite number"),
    (["--time-budget-min", "nan"], "--time-budget-min must be a finite number in (0, inf), got nan"),
    (["--time-budget-min", "0"], "--time-budget-min must be a finite number in (0, inf), got 0.0"),
    (["--spread-margin-start", "0.9", "--spread-margin-end", "0.2"],
     "--spread-margin-start 0.9 is above --spread-margin-end 0.2"),
    (["--spread-margin-start", "-0.2"], "--spread-margin-start must be a finite number in [0, inf)"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--batch-size", "128"], "--train-subset 64 is smaller than --batch-size 128"),
    (["--routing-backend", "junk"], "--routing-backend must be one of auto, torch, triton for routing 'dynamic'"),
    (["--routing", "nope"], "unknown routing 'nope'; available: dynamic"),
    (["--model-option", "foo=1"], "--model-option: model 'compact' has no option(s) foo; it takes routing"),
    (["--model-option", "in_channels=3"], "--model-option in_channels: set by --dataset; leave it out"),
    (["--model-option", "routing=em"], "--model-option routing: set by --routing; leave it out"),
    (["--model-option", "routing_options=[1]"], "routing_options must be a mapping"),
    (["--model-option", 'routing_options={"out_caps": 3}'], "the model's layers set these from their own sizes"),
    (["--model-option", 'routing_options={"iterations": 3}'], "iterations is set by --routing-iterations"),
    (["--model-option", "width"], "--model-option expects KEY=VALUE, got 'width'"),
    (["--seed", "-1"], "--seed must be in [0, 2**63), got -1"),
    (["--seed", str(2**70)], "--seed must be in [0, 2**63)"),
    (["--smallnorb-view", "left"], "--smallnorb-view applies to the smallnorb datasets, not to --dataset mnist"),
])
def test_bad_training_arguments_are_one_line_before_any_work(tmp_path, capsys, extra, fragment):
    # nothing is read (the data folder does not exist) and nothing is written
    out = tmp_path / "run"
    status = train_module.main(tiny_run_argv(tmp_path / "no-data", out, *extra))
    expect_usage_error(capsys, status, "capsule-train", fragment)
    assert not out.exists()


def test_an_out_dir_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    status = train_module.main(tiny_run_argv(tmp_path / "no-data", tmp_path / "file"))
    expect_usage_error(capsys, status, "capsule-train", f"--out-dir {tmp_path / 'file'} is a file; expected a folder")
    status = train_module.main(tiny_run_argv(tmp_path / "no-data", tmp_path / "file" / "run"))
    expect_usage_error(capsys, status, "capsule-train", f"{tmp_path / 'file'} is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_dir_is_refused_before_any_work(tmp_path, capsys):
    locked = tmp_path / "read-only"
    locked.mkdir(mode=0o555)
    status = train_module.main(tiny_run_argv(tmp_path / "no-data", locked / "run"))
    expect_usage_error(capsys, status, "capsule-train", f"the folder {locked} is not writable")


def test_a_model_option_value_the_model_refuses_is_one_line_and_leaves_no_folder(tmp_path, capsys, small_mnist):
    out = tmp_path / "run"
    status = train_module.main(tiny_run_argv(small_mnist, out, "--model-option", "channels=[0,8,8]"))
    expect_usage_error(capsys, status, "capsule-train", "cannot build model 'compact'", "channels[0]=0")
    assert not out.exists()


@pytest.mark.parametrize("options, message", [
    (dict(max_shift=2.5), "--max-shift must be an int, got 2.5"),
    (dict(max_shift=True), "--max-shift must be an int, got True"),
    (dict(lr="0.1"), "--lr must be a float, got '0.1'"),
    (dict(amp="yes"), "--amp must be a bool, got 'yes'"),
    (dict(grad_clip=-1.0), r"--grad-clip must be a finite number in \(0, inf\)"),
    (dict(dataset="mnist", max_shift=30), "--max-shift 30 would move"),
    (dict(dataset="cifar10", max_shift=32), "--max-shift 32 would move cifar10's 32x32 images out of the frame"),
])
def test_configurations_built_in_python_are_checked_the_same_way(options, message):
    with pytest.raises(ValueError, match=message):
        build_config(**options)


def test_grad_clip_and_max_shift_within_range_are_accepted():
    config = build_config(grad_clip=0.5, max_shift=27)
    assert (config.grad_clip, config.max_shift) == (0.5, 27)


def test_the_command_line_is_one_line_in_a_real_process(tmp_path):
    # the console script as a user runs it: no traceback on stderr, exit status 2
    result = subprocess.run([sys.executable, "-m", "experiments.train", "--lr", "inf", "--out-dir",
                             str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == ["capsule-train: error: --lr must be a finite number in (0, inf), got inf"]


# ------------------------------------------------------------------------------- resume, checkpoints, locks
@pytest.fixture
def finished_run(tmp_path_factory, small_mnist) -> Path:
    """A copy of a finished one-epoch tiny run (trained once per module, copied for each test)."""
    cache = tmp_path_factory.getbasetemp() / "cli-reliability-finished-run"
    if not cache.exists():
        assert train_module.main(tiny_run_argv(small_mnist, cache)) == 0
    copy = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(cache, copy)
    return copy


def test_resume_with_other_settings_is_refused_listing_the_differences(finished_run, small_mnist, capsys):
    before = {name: (finished_run / name).read_bytes() for name in (CHECKPOINT, CONFIG, METRICS)}
    capsys.readouterr()
    status = train_module.main(tiny_run_argv(small_mnist, finished_run, "--resume", "--lr", "0.004",
                                             "--batch-size", "16"))
    line = expect_usage_error(capsys, status, "capsule-train", f"settings that differ from the run's "
                              f"{finished_run / CONFIG}", "batch_size: 32 -> 16", "lr: 0.002 -> 0.004",
                              "--allow-config-change")
    assert "epochs" not in line
    assert {name: (finished_run / name).read_bytes() for name in before} == before  # the record is untouched


def test_resume_may_extend_the_run(finished_run, small_mnist, capsys):
    assert train_module.main(tiny_run_argv(small_mnist, finished_run, "--resume", "--epochs", "2")) == 0
    assert pd.read_csv(finished_run / METRICS)["epoch"].tolist() == [1, 2]
    assert json.loads((finished_run / CONFIG).read_text())["epochs"] == 2
    assert not list(finished_run.glob("config.until-epoch*"))


def test_allowed_config_change_keeps_the_old_config(finished_run, small_mnist):
    argv = tiny_run_argv(small_mnist, finished_run, "--resume", "--allow-config-change", "--lr", "0.004",
                         "--epochs", "2")
    assert train_module.main(argv) == 0
    assert json.loads((finished_run / "config.until-epoch1.json").read_text())["lr"] == 0.002
    assert json.loads((finished_run / CONFIG).read_text())["lr"] == 0.004
    assert pd.read_csv(finished_run / METRICS)["epoch"].tolist() == [1, 2]


def test_a_new_run_refuses_a_folder_that_holds_another_run(finished_run, small_mnist, capsys):
    before = (finished_run / CHECKPOINT).read_bytes()
    capsys.readouterr()
    status = train_module.main(tiny_run_argv(small_mnist, finished_run, "--lr", "0.004"))
    expect_usage_error(capsys, status, "capsule-train", f"--out-dir {finished_run} already holds a run",
                       "continue it with --resume, or choose another --out-dir")
    assert (finished_run / CHECKPOINT).read_bytes() == before


def test_resume_with_an_unreadable_config_is_named(finished_run, small_mnist, capsys):
    (finished_run / CONFIG).write_text("{ not json")
    capsys.readouterr()
    status = train_module.main(tiny_run_argv(small_mnist, finished_run, "--resume"))
    expect_usage_error(capsys, status, "capsule-train", f"{finished_run / CONFIG} is not a readable run "
                       "configuration", "--allow-config-change")


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "random":
        path.write_bytes(os.urandom(len(data)))
    elif how == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)


@pytest.mark.parametrize("how, fragment", [
    ("empty", "is empty"),
    ("truncated", "is not a readable checkpoint"),
    ("random", "is not a readable checkpoint"),
    ("foreign", "is not a training checkpoint (it lacks model, optimizer, data_generator, rng, run)"),
])
def test_a_damaged_checkpoint_is_named_with_what_to_do(finished_run, small_mnist, capsys, how, fragment):
    corrupt(finished_run / CHECKPOINT, how)
    capsys.readouterr()
    status = train_module.main(tiny_run_argv(small_mnist, finished_run, "--resume"))
    expect_usage_error(capsys, status, "capsule-train", f"{finished_run / CHECKPOINT} {fragment}",
                       "start the run again without --resume")


def test_another_models_checkpoint_is_named_with_what_to_do(finished_run, small_mnist, capsys):
    capsys.readouterr()
    wider = tiny_run_argv(small_mnist, finished_run, "--resume", "--allow-config-change", "--model-option",
                          "channels=[4,4,8]")
    status = train_module.main(wider)
    expect_usage_error(capsys, status, "capsule-train", f"{finished_run / CHECKPOINT} holds another model's weights",
                       "other shapes: stem.2.0.weight [4, 4, 3, 3] vs [8, 4, 3, 3]",
                       "Resume with the settings the run was made with")


def test_ctrl_c_before_the_first_checkpoint_does_not_claim_one(tmp_path, small_mnist, capsys, monkeypatch):
    def interrupted(config, step, done):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "lr_at", interrupted)
    out = tmp_path / "run"
    assert train_module.main(tiny_run_argv(small_mnist, out)) == 130
    err = capsys.readouterr().err
    assert "interrupted before the first checkpoint: nothing to resume in" in err and "last complete" not in err
    assert not (out / CHECKPOINT).exists() and not (out / LOCK_NAME).exists()


def test_a_second_run_on_a_folder_in_use_refuses_to_start(finished_run, small_mnist, capsys):
    before = (finished_run / CHECKPOINT).read_bytes()
    capsys.readouterr()
    with locked_folder(finished_run):  # as a first run holds it
        status = train_module.main(tiny_run_argv(small_mnist, finished_run, "--resume", "--epochs", "2"))
        expect_usage_error(capsys, status, "capsule-train", f"{finished_run} is in use by process {os.getpid()}",
                           "choose another --out-dir")
    assert (finished_run / CHECKPOINT).read_bytes() == before
    assert not (finished_run / LOCK_NAME).exists()


def test_the_lock_is_held_across_processes_and_dropped_when_its_process_dies(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from experiments.common.folder_lock import locked_folder\n"
         "with locked_folder(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(folder)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=f"is in use by process {holder.pid}"), locked_folder(folder):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert (folder / LOCK_NAME).read_text().strip() == str(holder.pid)  # a stale lock file of a dead process
    with locked_folder(folder) as lock:
        assert lock.read_text().strip() == str(os.getpid())
    assert not (folder / LOCK_NAME).exists()


def test_a_lock_in_this_process_refuses_a_second_holder_until_released(tmp_path):
    with locked_folder(tmp_path / "run"):
        with pytest.raises(FolderInUseError), locked_folder(tmp_path / "run"):
            pass
    with locked_folder(tmp_path / "run"):
        pass
    assert not (tmp_path / "run").exists()  # created by the lock, left empty: removed again


def test_output_checks_name_the_option_and_the_problem(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputPathError, match="--out .* is a folder; expected a file path"):
        check_output_file(tmp_path, "--out")
    with pytest.raises(OutputPathError, match=f"--out .*: {tmp_path / 'file'} is a file, not a folder"):
        check_output_file(tmp_path / "file" / "x.csv", "--out")
    with pytest.raises(OutputPathError, match="--out /dev/null is not a regular file"):
        check_output_file("/dev/null", "--out")
    with pytest.raises(OutputPathError, match="--out-dir .* is a file; expected a folder"):
        check_output_dir(tmp_path / "file", "--out-dir")
    assert check_output_file(tmp_path / "new" / "deeper" / "x.csv", "--out") == tmp_path / "new" / "deeper" / "x.csv"
    assert not (tmp_path / "new").exists()  # checking creates nothing


# --------------------------------------------------------------------------------------- capsule-throughput
@pytest.fixture
def no_sweep(monkeypatch):
    def sweep_ran(*args, **kwargs):
        raise AssertionError("the sweep started before its arguments were checked")

    monkeypatch.setattr(throughput, "run_sweep", sweep_ran)


@pytest.mark.parametrize("extra, fragment", [
    (["--cases", "nope"], "unknown case 'nope'; available: routing, capsule-linear, conv-caps"),
    (["--routings", "nope"], "unknown routing 'nope'; available: dynamic"),
    (["--dtypes", "int8"], "unknown dtype 'int8'; available: float32"),
    (["--batch-sizes", "0"], "batch_sizes (--batch-sizes) must be positive integers, got [0]"),
    (["--providers", "x"], "unknown provider 'x'; available: torch, torch-compile, triton"),
    (["--modes", "x"], "unknown mode 'x'; available: forward, backward, forward+backward"),
    (["--iterations", "0"], "iterations (--iterations) must be positive integers, got [0]"),
    (["--repeats", "0"], "repeats (--repeats) must be an integer >= 1, got 0"),
    (["--warmup", "-1"], "warmup (--warmup) must be an integer >= 0, got -1"),
    (["--threads", "0"], "threads (--threads) must be an integer >= 1, got 0"),
    (["--device", "junk"], "device (--device) must be cpu, cuda or cuda:<index>, got 'junk'"),
])
def test_bad_throughput_arguments_are_one_line_before_the_sweep(tmp_path, capsys, no_sweep, extra, fragment):
    with pytest.raises(SystemExit) as exit_:
        throughput.main([*extra, "--out", str(tmp_path / "t.csv")])
    expect_usage_error(capsys, exit_.value.code, Path(sys.argv[0]).name, fragment)
    assert not list(tmp_path.iterdir())


def test_throughput_output_paths_are_checked_before_the_sweep(tmp_path, capsys, no_sweep):
    # issue 16 cause 11: an --out that cannot be written was found only after the whole sweep
    (tmp_path / "file").write_text("")
    (tmp_path / "other.csv").write_text("name,value\nx,1\n")
    prog = Path(sys.argv[0]).name
    for out, fragment in ((tmp_path, "is a folder; expected a file path"),
                          (tmp_path / "file" / "t.csv", "is a file, not a folder"),
                          (tmp_path / "other.csv", "is not a throughput table (it lacks case, routing")):
        with pytest.raises(SystemExit) as exit_:
            throughput.main(["--device", "cpu", "--out", str(out)])
        expect_usage_error(capsys, exit_.value.code, prog, f"--out {out}", fragment)
    with pytest.raises(SystemExit) as exit_:
        throughput.main(["--device", "cpu", "--out", str(tmp_path / "t.csv"), "--plot", str(tmp_path)])
    expect_usage_error(capsys, exit_.value.code, prog, "--plot", "is a folder")
    with pytest.raises(SystemExit) as exit_:
        throughput.main(["--device", "cpu", "--out", str(tmp_path / "t.md")])
    expect_usage_error(capsys, exit_.value.code, prog, "is the --out CSV itself")


@pytest.mark.slow  # about 10 s of imports; the in-process tests above check the same messages
def test_throughput_command_line_is_one_line_in_a_real_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "experiments.throughput", "--device", "junk", "--out",
                             str(tmp_path / "t.csv")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error: device (--device) must be cpu, cuda or cuda:<index>" in lines[0], result.stderr


# ------------------------------------------------------------------------------- capsule-compare-accuracy
def test_print_results_of_a_missing_or_foreign_table_is_one_line(tmp_path, capsys):
    (tmp_path / "other.csv").write_text("name,value\nx,1\n")
    (tmp_path / "binary.csv").write_bytes(os.urandom(64) + b"\xff\xfe")
    prog = "capsule-compare-accuracy"
    status = compare_accuracy.main(["--print-results", "--results", str(tmp_path / "missing.csv")])
    expect_usage_error(capsys, status, prog, f"no results table at {tmp_path / 'missing.csv'}")
    status = compare_accuracy.main(["--print-results", "--results", str(tmp_path / "other.csv")])
    expect_usage_error(capsys, status, prog, "is not a results table written by capsule-compare-accuracy",
                       "model, routing, test_accuracy, best_test_accuracy")
    status = compare_accuracy.main(["--print-results", "--results", str(tmp_path / "binary.csv")])
    line = expect_usage_error(capsys, status, prog, str(tmp_path / "binary.csv"))
    assert "not a readable CSV" in line or "not a results table" in line


@pytest.mark.parametrize("extra, fragment", [
    (["--routings", "nope"], "unknown routing 'nope'"),
    (["--lr", "inf"], "--lr must be a finite number in (0, inf), got inf"),
    (["--grad-clip", "-1"], "--grad-clip must be a finite number in (0, inf)"),
    (["--device", "junk"], "--device must be auto, cpu, cuda or cuda:<index>"),
    (["--model-option", "foo=1"], "has no option(s) foo"),
])
def test_bad_comparison_arguments_are_one_line_before_any_run(tmp_path, capsys, monkeypatch, extra, fragment):
    monkeypatch.setattr(compare_accuracy, "train", lambda config: pytest.fail("a run started"))
    argv = ["--model", "compact", "--routings", "dynamic", "--out-dir", str(tmp_path / "runs"), "--results",
            str(tmp_path / "accuracy.csv"), *extra]
    expect_usage_error(capsys, compare_accuracy.main(argv), "capsule-compare-accuracy", fragment)
    assert not list(tmp_path.iterdir())


def test_comparison_output_paths_are_checked_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compare_accuracy, "train", lambda config: pytest.fail("a run started"))
    (tmp_path / "file").write_text("")
    base = ["--model", "compact", "--routings", "dynamic"]
    status = compare_accuracy.main([*base, "--out-dir", str(tmp_path / "file"), "--no-results"])
    expect_usage_error(capsys, status, "capsule-compare-accuracy", "--out-dir", "is a file; expected a folder")
    status = compare_accuracy.main([*base, "--out-dir", str(tmp_path / "runs"), "--results", str(tmp_path)])
    expect_usage_error(capsys, status, "capsule-compare-accuracy", "--results", "is a folder")
    # rows are upserted into --results: another kind of table there would be rewritten with them
    (tmp_path / "mine.csv").write_text("model,routing,test_accuracy,best_test_accuracy\nm,r,0.5,0.5\n")
    status = compare_accuracy.main([*base, "--out-dir", str(tmp_path / "runs"), "--results",
                                    str(tmp_path / "mine.csv")])
    expect_usage_error(capsys, status, "capsule-compare-accuracy",
                       "lacks the column(s) model_options, dataset, device, budget, seed")
    assert (tmp_path / "mine.csv").read_text().startswith("model,routing,test_accuracy")


# ----------------------------------------------------------------------------------- python -m gpu_check
@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_check_without_cuda_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main([])
    expect_usage_error(capsys, exit_.value.code, Path(sys.argv[0]).name, "no CUDA device: run this on a GPU "
                       "machine (or --smoke under TRITON_INTERPRET=1)")
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--only", "nope"])
    assert exit_.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err

