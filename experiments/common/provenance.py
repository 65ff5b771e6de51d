"""Where a number came from: git commit, device name, library versions, timestamp."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from functools import cache
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


@cache
def git_commit() -> str:
    """The checked-out commit (with '+dirty' when tracked files differ from it), or 'unknown' outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device | str = "cpu") -> str:
    """'NVIDIA H100 80GB HBM3' for a CUDA device; for the CPU its model name and core count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


@cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def versions() -> dict[str, str]:
    """torch and triton versions (triton 'absent' where it is not installed)."""
    try:  # triton is optional (not installed off Linux): the one import inside a function in experiments/common
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    return {"torch": torch.__version__, "triton": triton_version}


def timestamp() -> str:
    """UTC time in ISO 8601, seconds resolution."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
