"""Routing throughput on random votes: a first, small comparison (the full sweep replaces it).

    python -m experiments.throughput
"""

from __future__ import annotations

import time

import pandas as pd
import torch

import routing


def time_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    rows = []
    for name, (B, I, J, D) in [("dynamic", (32, 1152, 10, 16)), ("em", (32, 288, 32, 16))]:
        router = routing.create(name, backend="torch")
        votes = torch.randn(B, I, J, D, requires_grad=True)
        rows.append({"routing": name, "shape": f"{B}x{I}x{J}x{D}",
                     "forward_ms": time_ms(lambda: router(votes)),
                     "forward_backward_ms": time_ms(lambda: router(votes).poses.sum().backward())})
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
