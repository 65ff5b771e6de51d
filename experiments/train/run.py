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
"""

from __future__ import annotations

import argparse
import json
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
from experiments.common import provenance
from experiments.common.atomic import write_text_atomic
from experiments.common.tables import to_markdown, write_csv_atomic
from experiments.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from experiments.train.config import NO_ROUTING, TrainConfig, add_arguments, build_config, overrides_from_args
from experiments.train.data import TrainingData, eval_shard, load_data, steps_per_epoch, train_batches
from experiments.train.distributed import DistributedContext, main_rank_value, setup, sum_across_ranks, teardown
from experiments.train.schedule import lr_at, progress, spread_margin_at

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


def routing_options(config: TrainConfig) -> dict[str, Any]:
    """The routing's backend, and its iterations where the algorithm iterates (routing_iterations is None for
    self-routing and self-attention, which do not)."""
    options: dict[str, Any] = {"backend": config.routing_backend}
    if config.routing_iterations is not None:  # build_config resolved it for the routings that iterate
        options["iterations"] = config.routing_iterations
    return options


def build_model(config: TrainConfig, data: TrainingData) -> nn.Module:
    """capsules.create_model sized for the dataset (channels, classes, and image size where the model takes one),
    with the routing, its iterations and backend, and a decoder only when the reconstruction loss is on."""
    accepted = capsules.model_options(config.model)
    options: dict[str, Any] = dict(in_channels=data.channels, classes=data.classes)
    if "routing" in accepted:
        options.update(routing=config.routing, routing_options=routing_options(config))
    if "image_size" in accepted:
        options["image_size"] = data.image_size
    if "decoder" in accepted:
        options["decoder"] = config.reconstruction_weight > 0
    return capsules.create_model(config.model, **{**options, **config.model_options})


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
    ctx = setup(config.device)
    try:
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
    model = build_model(config, data).to(ctx.device)
    params = count_parameters(model)
    optimizer = build_optimizer(config, model)
    data_generator = torch.Generator().manual_seed(config.seed)
    steps = steps_per_epoch(len(data.train_labels), config.batch_size)
    total_steps = steps * config.epochs
    state = RunState(rows=[])
    if config.resume:
        checkpoint = load_checkpoint(out / CHECKPOINT)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        data_generator.set_state(checkpoint["data_generator"])
        set_rng_state(checkpoint["rng"])
        state = RunState(**checkpoint["run"])
    net = distribute(model, ctx)
    device_name = provenance.device_name(ctx.device)
    static = {"params": params, "device": device_name, "world_size": ctx.world_size,
              "git_commit": provenance.git_commit(), **{f"config_{k}": v for k, v in config.flat().items()}}
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")
        print(f"{config.model} + {config.routing} on {config.dataset}: {params:,} parameters, {steps} steps/epoch, "
              f"{ctx.world_size} process(es) on {device_name}; run folder {out}")
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
        if ctx.is_main:
            save_run(out, model, optimizer, data_generator, state)
            tqdm.write(f"epoch {state.epoch}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
                       f"test acc {test_accuracy:.4f} (error {100 * (1 - test_accuracy):.2f}%) | "
                       f"{row['samples_per_s']:.0f} samples/s | {epoch_seconds:.1f} s", file=sys.stdout)
            print(to_markdown(pd.DataFrame(state.rows)[SHOWN_COLUMNS]), flush=True)
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
    except (ValueError, KeyError) as error:
        print(f"capsule-train: error: {error}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        train(config)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the last complete checkpoint and table are in {output_dir(config)} "
              f"(continue with --resume)", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"capsule-train: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
