"""What a model costs: parameters, training and evaluation samples per second, and the peak tensor memory of a
training step, measured on a freshly built copy of the model on synthetic batches of the dataset's shape.

Peak memory is counted by torch's MemTracker (parameters, gradients, optimiser state, activations and temporaries
alive at once during one training step, on any device); where that tool is missing (it is private to torch), by
the CUDA allocator's peak on a GPU, and not at all on a CPU (NaN).
"""

from __future__ import annotations

import math
import time

import torch

import routing
from experiments.train.config import TrainConfig
from experiments.train.data import TrainingData
from experiments.train.distributed import resolve_device
from experiments.train.run import build_model, build_optimizer, count_parameters, total_loss

WARMUP_STEPS = 2
TIMED_STEPS = 5


def measure(config: TrainConfig, shape: tuple[int, int, int], classes: int) -> dict[str, float]:
    """{"params", "train_samples_per_s", "eval_samples_per_s", "peak_memory_mib"} of config's model at its batch
    size on random images of `shape` (C, H, W); timings are medians of TIMED_STEPS after WARMUP_STEPS."""
    device = resolve_device(config.device, 0)
    torch.manual_seed(config.seed)
    routing.cpu.release_workspaces()  # reused CPU buffers of an earlier model would hide this one's
    empty = torch.zeros(0, *shape, dtype=torch.uint8)
    data = TrainingData(empty, torch.zeros(0, dtype=torch.long), empty.float(), torch.zeros(0, dtype=torch.long),
                        lambda x, g: x, classes, shape[0], shape[-1])
    model = build_model(config, data).to(device)
    optimizer = build_optimizer(config, model)
    images = torch.rand(config.batch_size, *shape, device=device)
    labels = torch.randint(0, classes, (config.batch_size,), device=device)

    def step() -> None:
        loss = total_loss(config, model(images, labels), images, labels, config.spread_margin_end)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    peak = _peak_mib(step, model, optimizer, device)
    train_seconds = _timed(step, device)
    model.eval()

    @torch.no_grad()
    def forward() -> None:
        model(images, None)

    eval_seconds = _timed(forward, device)
    return {"params": float(count_parameters(model)), "train_samples_per_s": config.batch_size / train_seconds,
            "eval_samples_per_s": config.batch_size / eval_seconds, "peak_memory_mib": peak}


def _peak_mib(step, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> float:
    """Peak MiB of tensors alive during the first call of `step` (see the module docstring)."""
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:
        MemTracker = None
    if MemTracker is not None:
        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        with tracker:
            step()
        peaks = tracker.get_tracker_snapshot("peak")
        return sum(by_kind["Total"] for by_kind in peaks.values()) / 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        return torch.cuda.max_memory_allocated(device) / 2**20
    step()
    return math.nan


def _timed(fn, device: torch.device) -> float:
    """Median seconds of one call after warm-up calls."""
    for _ in range(WARMUP_STEPS):
        fn()
    times = []
    for _ in range(TIMED_STEPS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
