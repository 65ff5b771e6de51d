"""Split a batch into chunks of whole samples whose votes fit in the CPU's cache, for the PyTorch backends.

Routing reads the votes several times per iteration. Done on the whole batch, every read comes from memory,
and every votes-sized temporary is a fresh allocation that the CPU allocator maps (and page-faults) anew;
done on a few samples at a time, the reads after the first come from the last-level cache and the temporaries
are small blocks that the allocator reuses.
"""

from __future__ import annotations

import torch

from routing.cpu.switch import tuning_enabled

# Votes bytes per chunk of dynamic routing: the fastest of a 2-16 MiB sweep at the dense layer's size (B=128,
# I=1152, J=10, D=16) on the project's 2-core CPU (experiments/results/throughput.csv holds the layer's times).
CHUNK_BYTES = 8 * 2**20
# Votes bytes per chunk of EM routing's rows (it keeps about four chunk-sized buffers live): the fastest of a
# 1-20 MiB sweep of the ConvCaps and class-capsule layers on the project's 2-core CPU (their times:
# experiments/results/throughput.csv).
EM_CHUNK_BYTES = 6 * 2**20


def row_chunks(
    rows: int, row_bytes: int, group: int = 1, budget: int | None = None, device: torch.device | None = None
) -> list[slice]:
    """Slices covering range(rows), each a multiple of `group` rows (rows of one sample stay together) and
    about `budget` bytes (CHUNK_BYTES when None; at least one group). `rows` must be a multiple of `group`.

    Only CPU work is chunked, and only while the CPU machinery is on (routing.cpu): on a GPU the whole batch is
    one chunk, since small chunks there would only add kernel launches.
    """
    if (device is not None and torch.device(device).type != "cpu") or not tuning_enabled():
        return [slice(0, rows)]
    budget = CHUNK_BYTES if budget is None else budget
    per_chunk = max(1, budget // max(1, row_bytes * group)) * group
    return [slice(start, min(start + per_chunk, rows)) for start in range(0, rows, per_chunk)]


def votes_row_bytes(votes: torch.Tensor, dtype: torch.dtype) -> int:
    """Bytes of one row (sample) of votes [B, I, J, D] in `dtype`."""
    return votes[0].numel() * torch.empty((), dtype=dtype).element_size()
