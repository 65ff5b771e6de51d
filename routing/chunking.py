"""Split a batch into chunks of whole samples whose votes fit in the CPU's cache, for the PyTorch backends.

Routing reads the votes several times per iteration. Done on the whole batch, every read comes from memory,
and every votes-sized temporary is a fresh allocation that the CPU allocator maps (and page-faults) anew;
done on a few samples at a time, the reads after the first come from the last-level cache and the temporaries
are small blocks that the allocator reuses.
"""

from __future__ import annotations

import torch

# Votes bytes per chunk. Measured on a 2-core AMD EPYC (32 MiB L3 shared with other jobs): dynamic routing at
# B=128, I=1152, J=10, D=16 (1 thread) ran fastest with chunks of 4 to 8 samples (3 to 6 MiB); 1 sample per
# chunk pays the Python overhead of many small ops, and 32 samples (24 MiB) no longer stay in the cache. With
# 2 threads and the fused dense layer (routing.linear_fusion), forward + backward, medians of 7: 2 MiB 139-142 ms,
# 4 MiB 108-127, 6 MiB 102-106, 8 MiB 99-126, 12 MiB 115, 16 MiB 110-120 (the machine's noise is +-15%).
CHUNK_BYTES = 8 * 2**20


def row_chunks(
    rows: int, row_bytes: int, group: int = 1, budget: int | None = None, device: torch.device | None = None
) -> list[slice]:
    """Slices covering range(rows), each a multiple of `group` rows (rows of one sample stay together) and
    about `budget` bytes (CHUNK_BYTES when None; at least one group). `rows` must be a multiple of `group`.

    Only CPU work is chunked: on a GPU (`device` not a CPU) the whole batch is one chunk, since small chunks
    there would only add kernel launches (and make the PyTorch baseline of the GPU benchmarks unfairly slow).
    """
    if device is not None and torch.device(device).type != "cpu":
        return [slice(0, rows)]
    budget = CHUNK_BYTES if budget is None else budget
    per_chunk = max(1, budget // max(1, row_bytes * group)) * group
    return [slice(start, min(start + per_chunk, rows)) for start in range(0, rows, per_chunk)]


def votes_row_bytes(votes: torch.Tensor, dtype: torch.dtype) -> int:
    """Bytes of one row (sample) of votes [B, I, J, D] in `dtype`."""
    return votes[0].numel() * torch.empty((), dtype=dtype).element_size()
