"""Train a capsule network: any registered model with any registered routing on MNIST or smallNORB.

    capsule-train --model capsnet --routing dynamic                      # Sabour et al. 2017 on MNIST
    capsule-train --model matrix-capsnet --routing em                    # Hinton et al. 2018 on smallNORB
    capsule-train --model compact --routing em --time-budget-min 20      # the CPU model, 20 minutes of training
    capsule-train --model capsnet --resume --out-dir runs/x              # continue an interrupted run exactly
    torchrun --nproc-per-node 2 -m experiments.train --model compact     # DistributedDataParallel, 2 processes

Each model family starts from its paper's settings (`experiments.train.config.PRESETS`); every option can be
overridden (`capsule-train --help`). The run folder (default runs/<model>-<routing>-<dataset>-seed<seed>) holds
`checkpoint.pt` (written atomically after every epoch), `metrics.csv` (one row per epoch: metrics, device, the full
configuration, git commit) and `config.json`. Ctrl-C or SIGTERM stops the run and leaves the last complete
checkpoint and table; `--resume` continues from them with the same model, optimiser, schedule, random states and
epoch counter, so a resumed run matches an uninterrupted one on the same machine.

Every option is checked before any data is read or file written (a bad one is one line `capsule-train: error: ...`
and exit status 2). A run holds its folder's lock (`.lock`, with its process id) while it runs, so a second run on
the same folder refuses to start, and a new run refuses a folder that holds another run's checkpoint. `--resume`
refuses settings that differ from the run's config.json, listing the differences, except `--epochs` and
`--time-budget-min` (which extend the run) and options that do not change what is computed (device, threads, data
folder, progress, logging); `--allow-config-change` continues with the new settings and keeps the old config.json as
config.until-epoch<E>.json (experiments/train/resume.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import capsules
import routing
from capsules.models.registry import check_model_arguments
from experiments.common import provenance
from experiments.common.cli import one_line
from experiments.common.folder_lock import FolderInUseError, locked_folder
from experiments.common.outputs import check_output_dir
from experiments.common.tables import to_markdown, write_csv_atomic
from experiments.train.checkpoint import rng_state, save_checkpoint, seed_everything
from experiments.train.config import NO_ROUTING, TrainConfig, add_arguments, build_config, overrides_from_args
from experiments.train.data import TrainingData, eval_shard, load_data, steps_per_epoch, train_batches
from experiments.train.distributed import DistributedContext, main_rank_value, setup, sum_across_ranks, teardown
from experiments.train.resume import check_resume, restore, save_config
from experiments.train.schedule import lr_at, progress, spread_margin_at
from experiments.train.tensorboard import ScalarLog, require_tensorboard

CHECKPOINT, METRICS, CONFIG = "checkpoint.pt", "metrics.csv", "config.json"
SHOWN_COLUMNS = ["epoch", "train_loss", "train_accuracy", "test_accuracy", "test_error", "samples_per_s",
                 "train_time_s", "wall_time_s", "lr"]


@dataclass
class RunState:
    """The counters a checkpoint carries besides module states."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimiser steps taken
    train_seconds: float = 0.0  # time spent in training steps (what a time budget counts)
    wall_seconds: float = 0.0  # everything: training, evaluation, checkpoints
    rows: list | None = None  # the run's table so far


# ---------------------------------------------------------------------------------------------------- set-up
def check_names(config: TrainConfig) -> None:
    """KeyError listing what exists when the model or the routing is not registered (before any data is read)."""
    if config.model not in capsules.models():
        raise KeyError(f"unknown model {config.model!r}; available: {', '.join(capsules.models())}")
    if "routing" not in capsules.model_options(config.model):
        if config.routing != NO_ROUTING:
            raise ValueError(f"model {config.model!r} does not route: pass --routing {NO_ROUTING}, "
                             f"got {config.routing!r}")
        return
    if config.routing not in routing.available():
        raise KeyError(f"unknown routing {config.routing!r}; available: {', '.join(routing.available())}")


# create_model arguments the trainer sets itself, and the option that sets each instead
TRAINER_SET = {"in_channels": "--dataset", "classes": "--dataset", "image_size": "--dataset (or --canvas)",
               "decoder": "--reconstruction-weight", "routing": "--routing"}
TRAINER_ROUTING_OPTIONS = {"iterations": "--routing-iterations", "backend": "--routing-backend"}


def check_before_work(config: TrainConfig) -> None:
    """Everything that can be checked before data is read or files are written: the model and routing names
    (KeyError listing what exists), the routing backend, the --model-option names, and that --out-dir is a
    writable folder (ValueError/TypeError naming the option)."""
    check_names(config)
    if config.tensorboard:
        require_tensorboard()
    if "routing" in capsules.model_options(config.model):
        backends = ("auto", *routing.backends(config.routing))
        if config.routing_backend not in backends:
            raise ValueError(f"--routing-backend must be one of {', '.join(backends)} for routing "
                             f"{config.routing!r}, got {config.routing_backend!r}")
    for key, option in TRAINER_SET.items():
        if key in config.model_options:
            raise ValueError(f"--model-option {key}: set by {option}; leave it out")
    given_routing_options = config.model_options.get("routing_options") or {}
    if not isinstance(given_routing_options, dict):
        raise ValueError(f"--model-option routing_options must be a mapping (a JSON object such as "
                         f"{{\"eps\": 1e-6}}), got {given_routing_options!r}")
    for key, option in TRAINER_ROUTING_OPTIONS.items():
        if key in given_routing_options:
            raise ValueError(f"--model-option routing_options: {key} is set by {option}; leave it out")
    try:
        check_model_arguments(config.model, model_arguments(config, channels=1, classes=2, image_size=28))
    except (TypeError, ValueError) as error:
        raise ValueError(f"--model-option: {error}") from None
    check_output_dir(output_dir(config), "--out-dir")
    check_not_clobbering(config)


def check_not_clobbering(config: TrainConfig) -> None:
    """A new run (no --resume) must not start in a folder that holds another run's checkpoint: its first epoch
    would overwrite that run's checkpoint, table and config."""
    checkpoint = output_dir(config) / CHECKPOINT
    if not config.resume and checkpoint.exists():
        raise ValueError(f"--out-dir {output_dir(config)} already holds a run ({checkpoint}): continue it with "
                         f"--resume, or choose another --out-dir (delete the folder to start that run over)")


def routing_options(config: TrainConfig) -> dict[str, Any]:
    """The routing's backend, and its iterations where the algorithm iterates (routing_iterations is None for
    self-routing and self-attention, which do not)."""
    options: dict[str, Any] = {"backend": config.routing_backend}
    if config.routing_iterations is not None:  # build_config resolved it for the routings that iterate
        options["iterations"] = config.routing_iterations
    return options


def model_arguments(config: TrainConfig, channels: int, classes: int, image_size: int) -> dict[str, Any]:
    """create_model's keyword arguments: the dataset's sizes (image size where the model takes one), the routing,
    its iterations and backend (plus any routing_options given with --model-option), a decoder only when the
    reconstruction loss is on, and the other --model-option values."""
    accepted = capsules.model_options(config.model)
    options: dict[str, Any] = dict(in_channels=channels, classes=classes)
    if "routing" in accepted:
        given = config.model_options.get("routing_options")
        extra = given if isinstance(given, dict) else {}
        options.update(routing=config.routing, routing_options={**routing_options(config), **extra})
    if "image_size" in accepted:
        options["image_size"] = image_size
    if "decoder" in accepted:
        options["decoder"] = config.reconstruction_weight > 0
    rest = {k: v for k, v in config.model_options.items() if k != "routing_options" or "routing" not in accepted}
    return {**options, **rest}


def build_model(config: TrainConfig, data: TrainingData) -> nn.Module:
    """capsules.create_model sized for the dataset; a bad --model-option value is a ValueError naming the model."""
    try:
        return capsules.create_model(config.model, **model_arguments(config, data.channels, data.classes,
                                                                     data.image_size))
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot build model {config.model!r} with --model-option {config.model_options}: "
                         f"{error}") from error


def distribute(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """The model wrapped in DistributedDataParallel when there are several processes (else itself).

    BatchNorm becomes SyncBatchNorm on GPUs, so statistics cover the global batch as in one process; on CPUs
    (where SyncBatchNorm does not run) each process normalises its own share of the batch.
    """
    if not ctx.distributed:
        return model
    has_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if ctx.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif has_batch_norm and ctx.is_main:
        print("note: BatchNorm statistics are per process on CPUs (SyncBatchNorm needs GPUs)", file=sys.stderr)
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def output_dir(config: TrainConfig) -> Path:
    return Path(config.out_dir) if config.out_dir else Path("runs") / config.run_name()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------- the loss
def classification_loss(config: TrainConfig, activations: torch.Tensor, labels: torch.Tensor,
                        margin: float) -> torch.Tensor:
    """Mean over the batch of the configured loss: margin (Sabour et al.), spread at `margin` (Hinton et al.),
    nll (-log of the true class's activation) or cross-entropy (on the activations' logits)."""
    if config.loss == "spread":
        return capsules.spread_loss(activations, labels, margin)
    if config.loss == "nll":
        return capsules.nll_loss(activations, labels)
    if config.loss == "cross-entropy":
        return capsules.logit_cross_entropy(activations, labels)
    return capsules.margin_loss(activations, labels)


def total_loss(config: TrainConfig, output: capsules.CapsuleOutput, images: torch.Tensor, labels: torch.Tensor,
               margin: float) -> torch.Tensor:
    """Classification loss plus reconstruction_weight x the decoder's sum of squared errors (batch means)."""
    loss = classification_loss(config, output.activations.float(), labels, margin)
    if config.reconstruction_weight and output.reconstruction is not None:
        loss = loss + capsules.reconstruction_loss(output.reconstruction.float(), images,
                                                   scale=config.reconstruction_weight)
    return loss


# ------------------------------------------------------------------------------------------------- evaluate
@torch.no_grad()
def evaluate(config: TrainConfig, model: nn.Module, data: TrainingData, ctx: DistributedContext,
             margin: float) -> tuple[float, float]:
    """(test accuracy, mean test classification loss) over the whole test set, each rank scoring its share."""
    model.eval()
    images, labels = eval_shard(data, ctx.rank, ctx.world_size)
    correct = loss_sum = 0.0
    chunks = zip(images.split(config.eval_batch_size), labels.split(config.eval_batch_size), strict=True)
    for chunk, chunk_labels in chunks:
        chunk, chunk_labels = chunk.to(ctx.device), chunk_labels.to(ctx.device)
        with autocast(config, ctx.device):
            activations = model(chunk, None).activations.float()
        correct += (activations.argmax(dim=1) == chunk_labels).sum().item()
        loss_sum += classification_loss(config, activations, chunk_labels, margin).item() * len(chunk_labels)
    correct, loss_sum, count = sum_across_ranks([correct, loss_sum, float(len(labels))], ctx.device)
    model.train()
    return correct / count, loss_sum / count


def autocast(config: TrainConfig, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if config.amp else nullcontext()


# ------------------------------------------------------------------------------------------------ the loop
def train(config: TrainConfig) -> pd.DataFrame:
    """Run (or, with config.resume, continue) training; returns the run's table, one row per epoch.

    Raises KeyboardInterrupt when interrupted, after the last complete checkpoint and table are on disk.
    """
    check_before_work(config)
    ctx = setup(config.device)
    try:
        # One run at a time in a folder (the main rank holds its lock); a resume is checked under the lock.
        with locked_folder(output_dir(config)) if ctx.is_main else nullcontext():
            check_not_clobbering(config)
            if config.resume:
                check_resume(config, output_dir(config) / CHECKPOINT, output_dir(config) / CONFIG)
            return _train(config, ctx)
    finally:
        teardown()


def _train(config: TrainConfig, ctx: DistributedContext) -> pd.DataFrame:
    check_names(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    out = output_dir(config)
    seed_everything(config.seed)
    data = load_data(config.dataset, config.data_root, train_subset=config.train_subset,
                     test_subset=config.test_subset, max_shift=config.max_shift, smallnorb_view=config.smallnorb_view,
                     canvas=config.canvas)
    side = min(data.train_images.shape[-2:])
    if config.canvas is None and config.max_shift >= side:
        raise ValueError(f"--max-shift {config.max_shift} would move the {side}x{side} training images of "
                         f"{config.dataset} out of the frame: it must be < {side}")
    model = build_model(config, data).to(ctx.device)
    params = count_parameters(model)
    optimizer = build_optimizer(config, model)
    data_generator = torch.Generator().manual_seed(config.seed)
    steps = steps_per_epoch(len(data.train_labels), config.batch_size)
    if steps == 0:
        raise ValueError(f"--batch-size {config.batch_size} is larger than the {len(data.train_labels)} training "
                         f"images: an epoch would have no full batch")
    total_steps = steps * config.epochs
    state = RunState(rows=[])
    if config.resume:
        state = RunState(**restore(out / CHECKPOINT, config, model, optimizer, data_generator))
    net = distribute(model, ctx)
    device_name = provenance.device_name(ctx.device)
    static = {"params": params, "device": device_name, "world_size": ctx.world_size,
              "git_commit": provenance.git_commit(), **{f"config_{k}": v for k, v in config.flat().items()}}
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / CONFIG, state.epoch)
        print(f"{config.model} + {config.routing} on {config.dataset}: {params:,} parameters, {steps} steps/epoch, "
              f"{ctx.world_size} process(es) on {device_name}; run folder {out}")
    board = ScalarLog(out, config.tensorboard and ctx.is_main, steps_done=state.step)
    done = progress(config, state.step, total_steps, state.train_seconds)
    while state.epoch < config.epochs and done < 1.0:
        wall_start = time.perf_counter()
        epoch_seconds, loss_sum, correct, seen = 0.0, 0.0, 0.0, 0.0
        bar = tqdm(train_batches(data, config.batch_size, data_generator, ctx.rank, ctx.world_size), total=steps,
                   desc=f"epoch {state.epoch + 1}", disable=not (config.progress and ctx.is_main), leave=False,
                   file=sys.stdout, dynamic_ncols=True)
        tick = time.perf_counter()
        for images, labels in bar:  # each step's time includes making its batch
            lr = lr_at(config, state.step, done)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = images.to(ctx.device), labels.to(ctx.device)
            with autocast(config, ctx.device):
                output = net(images, labels)
                loss = total_loss(config, output, images, labels, spread_margin_at(config, done))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()} at step {state.step + 1}; the checkpoint "
                                         f"in {out} is the last good state (epoch {state.epoch})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            state.step += 1
            loss_sum += loss.item() * len(labels)
            correct += (output.activations.detach().argmax(dim=1) == labels).sum().item()
            seen += len(labels)
            board.step(state.step, loss_sum / seen, correct / seen, lr)
            now = time.perf_counter()
            epoch_seconds, tick = epoch_seconds + now - tick, now
            train_seconds = main_rank_value(state.train_seconds + epoch_seconds, ctx.device)
            done = progress(config, state.step, total_steps, train_seconds)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                            samples_s=f"{seen * ctx.world_size / epoch_seconds:.0f}", refresh=False)
            if done >= 1.0:
                break
        bar.close()
        state.train_seconds += epoch_seconds
        loss_sum, correct, seen = sum_across_ranks([loss_sum, correct, seen], ctx.device)
        test_accuracy, test_loss = evaluate(config, model, data, ctx, spread_margin_at(config, done))
        state.epoch += 1
        state.wall_seconds += time.perf_counter() - wall_start
        row = {"epoch": state.epoch, "step": state.step, "epochs_trained": state.step * config.batch_size /
               len(data.train_labels), "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
               "test_accuracy": test_accuracy, "test_error": 1 - test_accuracy, "test_loss": test_loss,
               "samples_per_s": seen / epoch_seconds, "epoch_time_s": epoch_seconds,
               "train_time_s": state.train_seconds, "wall_time_s": state.wall_seconds, "lr": lr,
               "timestamp": provenance.timestamp(), **static}
        state.rows.append(row)
        board.epoch(row)
        if ctx.is_main:
            save_run(out, model, optimizer, data_generator, state)
            tqdm.write(f"epoch {state.epoch}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
                       f"test acc {test_accuracy:.4f} (error {100 * (1 - test_accuracy):.2f}%) | "
                       f"{row['samples_per_s']:.0f} samples/s | {epoch_seconds:.1f} s", file=sys.stdout)
            print(to_markdown(pd.DataFrame(state.rows)[SHOWN_COLUMNS]), flush=True)
    board.close()
    return pd.DataFrame(state.rows)


def save_run(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, data_generator: torch.Generator,
             state: RunState) -> None:
    """Checkpoint first, then the table (both atomic): the table never gets ahead of a checkpoint. The schedules
    (learning rate, spread margin) are functions of the saved step and training time, so they need no state."""
    save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "data_generator": data_generator.get_state(), "rng": rng_state(), "run": vars(state)},
                    out / CHECKPOINT)
    write_csv_atomic(pd.DataFrame(state.rows), out / METRICS)


# ------------------------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return build_config(**overrides_from_args(parser.parse_args(argv)))


def raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except (TypeError, ValueError, KeyError) as error:
        print(f"capsule-train: error: {one_line(error)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    started = time.time()
    try:
        train(config)
    except KeyboardInterrupt:
        print(f"\n{interrupted_message(config, started)}", file=sys.stderr)
        return 130
    except (TypeError, ValueError, KeyError, FileNotFoundError, FolderInUseError) as error:
        print(f"capsule-train: error: {one_line(error)}", file=sys.stderr)
        return 2
    return 0


def interrupted_message(config: TrainConfig, started: float) -> str:
    """What an interruption left: the checkpoint this run wrote (or resumed from), or nothing to resume."""
    checkpoint = output_dir(config) / CHECKPOINT
    if checkpoint.is_file() and (config.resume or checkpoint.stat().st_mtime >= started):
        return (f"interrupted; the last complete checkpoint and table are in {output_dir(config)} "
                f"(continue with --resume)")
    return (f"interrupted before the first checkpoint: nothing to resume in {output_dir(config)}; start the run "
            f"again (without --resume)")


if __name__ == "__main__":
    sys.exit(main())
