"""CPU speed of the PyTorch routing backends at the papers' layer shapes: a small standalone benchmark.

    python -m experiments.bench_routing_cpu                 # every case, median of 5
    python -m experiments.bench_routing_cpu --repeats 9 --only dynamic

Prints a markdown table of median wall-clock times (time.perf_counter, after one warm-up call, finite checks
off) for the routing call alone and, for the dense capsule layer, votes from W plus routing. The machine is
shared, so repeat runs and compare medians; the header line names the device, torch version and commit.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch

import routing
from experiments.provenance import device_name, git_commit


@dataclass
class Case:
    """One benchmark: `run(backward)` performs forward (and backward when asked) once."""

    name: str
    shape: str
    run: Callable[[bool], None]


def time_ms(fn: Callable[[], None], repeats: int) -> tuple[float, float, float]:
    """Median, min and max milliseconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    return times[len(times) // 2], times[0], times[-1]


def backward_through(outputs: routing.RoutingResult, backward: bool, leaves: tuple[torch.Tensor, ...]) -> None:
    """Backward from a loss on poses and activations into fresh .grad of `leaves` (as after zero_grad)."""
    if backward:
        for leaf in leaves:
            leaf.grad = None
        (outputs.poses.square().sum() + outputs.activations.sum()).backward()


def dynamic_routing_case(layout: str, B=128, I=1152, J=10, D=16) -> Case:
    """Routing alone; layout 'parent-major' hands a [B, J, I, D]-contiguous tensor as a [B, I, J, D] view."""
    router = routing.create("dynamic", backend="torch", iterations=3)
    g = torch.Generator().manual_seed(0)
    if layout == "parent-major":
        votes = torch.randn(B, J, I, D, generator=g).transpose(1, 2).requires_grad_()
    else:
        votes = torch.randn(B, I, J, D, generator=g).requires_grad_()
    return Case(f"dynamic routing ({layout})", f"{B}x{I}x{J}x{D}",
                lambda backward: backward_through(router(votes), backward, (votes,)))


def dense_layer_case(B=128, I=1152, J=10, D=16, D_in=8) -> Case:
    """Votes u_hat[b, j, i] = W[i, j] @ u[b, i] from W [I, J, D, D_in] as parent-major [B, J, I, D], then routing."""
    router = routing.create("dynamic", backend="torch", iterations=3)
    g = torch.Generator().manual_seed(0)
    W = (0.05 * torch.randn(I, J, D, D_in, generator=g)).requires_grad_()
    u = torch.randn(B, I, D_in, generator=g).requires_grad_()

    def run(backward: bool) -> None:
        # [I, J*D, D_in] @ [I, D_in, B] -> [I, J*D, B], a batched matmul over children, then parent-major
        votes = (W.reshape(I, J * D, D_in) @ u.permute(1, 2, 0)).reshape(I, J, D, B).permute(3, 1, 0, 2)
        backward_through(router(votes.contiguous().transpose(1, 2)), backward, (W, u))

    return Case("dense capsule layer (votes + dynamic routing)", f"{B}x{D_in}->{I}x{J}x{D}", run)


def em_routing_case(N: int, I: int, J: int, D: int = 16, windows: int | None = None, children: int = 0) -> Case:
    """EM routing alone; with `windows`, a conv child_index [windows, I] over `children` shared children."""
    router = routing.create("em", backend="torch", iterations=3, out_caps=J)
    g = torch.Generator().manual_seed(0)
    votes = torch.randn(N, I, J, D, generator=g).requires_grad_()
    acts = torch.rand(N, I, generator=g).requires_grad_()
    child_index = None
    label = "em routing"
    if windows is not None:
        child_index = torch.randint(0, children, (windows, I), generator=g)
        label = "em routing (conv child_index)"
    return Case(label, f"{N}x{I}x{J}x{D}",
                lambda backward: backward_through(router(votes, acts, child_index=child_index), backward, (votes, acts)))


def conv_child_index(side_in=6, side_out=4, K=3, stride=1, types=16) -> torch.Tensor:
    """child_index [side_out^2, K*K*types] of a ConvCaps layer: window p's local child (ky, kx, type) -> the
    sample's child (row, col, type) on the side_in x side_in grid."""
    rows = []
    for oy in range(side_out):
        for ox in range(side_out):
            rows.append([((oy * stride + ky) * side_in + ox * stride + kx) * types + c
                         for ky in range(K) for kx in range(K) for c in range(types)])
    return torch.tensor(rows)


def convcaps_em_case(batch=32) -> Case:
    """ConvCaps 6x6 -> 4x4, K=3, 16 -> 16 types: votes [batch*16, 144, 16, 16] with the layer's child_index."""
    child_index = conv_child_index()
    P, I = child_index.shape
    router = routing.create("em", backend="torch", iterations=3, out_caps=16)
    g = torch.Generator().manual_seed(0)
    votes = torch.randn(batch * P, I, 16, 16, generator=g).requires_grad_()
    acts = torch.rand(batch * P, I, generator=g).requires_grad_()
    return Case("em routing (ConvCaps 6x6->4x4 child_index)", f"{batch * P}x{I}x16x16",
                lambda backward: backward_through(router(votes, acts, child_index=child_index), backward, (votes, acts)))


def all_cases() -> list[Case]:
    return [
        dynamic_routing_case("parent-major"),
        dynamic_routing_case("contiguous"),
        dense_layer_case(),
        em_routing_case(512, 144, 16),
        convcaps_em_case(),
        em_routing_case(32, 256, 5),
        em_routing_case(32, 256, 10),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="", help="run only cases whose name contains this text")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 gives steadier numbers on a busy machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with routing.finite_checks(False):
        for case in all_cases():
            if args.only not in case.name:
                continue
            for mode, backward in (("forward", False), ("forward+backward", True)):
                with torch.set_grad_enabled(backward):
                    median, low, high = time_ms(lambda: case.run(backward), args.repeats)
                rows.append({"case": case.name, "shape": case.shape, "mode": mode,
                             "median_ms": round(median, 1), "min_ms": round(low, 1), "max_ms": round(high, 1)})
    print(f"device: {device_name()}, torch {torch.__version__}, commit {git_commit()}, "
          f"median of {args.repeats} after a warm-up call\n")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
