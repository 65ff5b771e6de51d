"""CPU speed of the PyTorch routing backends at the papers' layer shapes: a small standalone benchmark.

    python -m experiments.throughput.bench_cpu                 # every case, median of 5
    python -m experiments.throughput.bench_cpu --repeats 9 --only dynamic

Prints a markdown table of median wall-clock and CPU times (time.perf_counter and time.process_time, after
one warm-up call, finite checks off) for the routing call alone and, for the dense capsule layer, votes from W
plus routing. The machine is shared, so repeat runs and compare medians; the header line names the device,
threads, torch version, commit and the load average.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch

import routing
from capsules.layers import CapsuleLinear, ConvCaps
from capsules.layers.windows import window_child_index
from experiments.common.provenance import device_name, git_commit
from experiments.throughput.naive import NaiveCapsuleLinear


@dataclass
class Case:
    """One benchmark: `run(backward)` performs forward (and backward when asked) once."""

    name: str
    shape: str
    run: Callable[[bool], None]


def time_ms(fn: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Median wall-clock and median CPU (process) milliseconds of `repeats` calls after one warm-up call.

    On a machine shared with other jobs the wall time grows with the load; the CPU time of a single-threaded
    run (--threads 1) stays close to what the call costs on an idle core."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(1000 * (time.perf_counter() - start))
        cpu.append(1000 * (time.process_time() - start_cpu))
    return sorted(wall)[len(wall) // 2], sorted(cpu)[len(cpu) // 2]


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


def capsule_linear_case(B=128, I=1152, J=10, D=16, D_in=8) -> Case:
    """capsules.layers.CapsuleLinear (Sabour's DigitCaps, W [I, J, D, D_in]) with dynamic routing: votes + routing."""
    layer = CapsuleLinear(I, D_in, J, D, routing="dynamic", backend="torch", iterations=3)
    u = torch.randn(B, I, D_in, generator=torch.Generator().manual_seed(0)).requires_grad_()

    def run(backward: bool) -> None:
        poses, acts = layer(u)
        backward_through(routing.RoutingResult(poses, acts, poses), backward, (u, *layer.parameters()))

    return Case("CapsuleLinear layer (votes + dynamic routing)", f"{B}x{I}x{D_in}->{J}x{D}", run)


def naive_capsule_linear_case(B=128, I=1152, J=10, D=16, D_in=8) -> Case:
    """The same layer written the way most public PyTorch implementations write it (naive.NaiveCapsuleLinear, our
    code): the side-by-side baseline on the same machine at the same moment."""
    torch.manual_seed(0)
    layer = NaiveCapsuleLinear(I, D_in, J, D, iterations=3)
    u = torch.randn(B, I, D_in, generator=torch.Generator().manual_seed(0)).requires_grad_()

    def run(backward: bool) -> None:
        v, lengths = layer(u)
        backward_through(routing.RoutingResult(v, lengths, v), backward, (u, *layer.parameters()))

    return Case("CapsuleLinear, naive PyTorch baseline (public pattern)", f"{B}x{I}x{D_in}->{J}x{D}", run)


def em_routing_case(N: int, I: int, J: int, D: int = 16, layout: str = "parent-major") -> Case:
    """EM routing alone on votes laid out as the capsule layers hand them (parent-major) or contiguous."""
    router = routing.create("em", backend="torch", iterations=3, out_caps=J)
    g = torch.Generator().manual_seed(0)
    if layout == "parent-major":
        votes = torch.randn(N, J, I, D, generator=g).transpose(1, 2).requires_grad_()
    else:
        votes = torch.randn(N, I, J, D, generator=g).requires_grad_()
    acts = torch.rand(N, I, generator=g).requires_grad_()
    return Case(f"em routing ({layout})", f"{N}x{I}x{J}x{D}",
                lambda backward: backward_through(router(votes, acts), backward, (votes, acts)))


def convcaps_em_case(batch=32) -> Case:
    """EM routing at the ConvCaps 6x6 -> 4x4, K=3, 16 -> 16 types shape: parent-major votes
    [batch*16, 144, 16, 16] with the layer's child_index [16, 144]."""
    child_index = window_child_index(6, 6, 16, 3, 1)
    P, I = child_index.shape
    router = routing.create("em", backend="torch", iterations=3, out_caps=16)
    g = torch.Generator().manual_seed(0)
    votes = torch.randn(batch * P, 16, I, 16, generator=g).transpose(1, 2).requires_grad_()
    acts = torch.rand(batch * P, I, generator=g).requires_grad_()
    return Case("em routing (ConvCaps child_index)", f"{batch * P}x{I}x16x16",
                lambda backward: backward_through(router(votes, acts, child_index=child_index), backward,
                                                  (votes, acts)))


def convcaps_layer_case(batch=32) -> Case:
    """capsules.layers.ConvCaps 6x6 -> 4x4, K=3, stride 1, 16 -> 16 types, EM routing: votes + routing."""
    layer = ConvCaps(16, 16, 3, stride=1, routing="em", backend="torch", iterations=3)
    g = torch.Generator().manual_seed(0)
    poses = torch.randn(batch, 6, 6, 16, 16, generator=g).requires_grad_()
    acts = torch.rand(batch, 6, 6, 16, generator=g).requires_grad_()

    def run(backward: bool) -> None:
        out_poses, out_acts = layer(poses, acts)
        backward_through(routing.RoutingResult(out_poses, out_acts, out_poses), backward,
                         (poses, acts, *layer.parameters()))

    return Case("ConvCaps layer (votes + em routing)", f"{batch}x6x6x16->4x4x16", run)


def all_cases() -> list[Case]:
    return [
        dynamic_routing_case("parent-major"),
        dynamic_routing_case("contiguous"),
        capsule_linear_case(),
        naive_capsule_linear_case(),
        em_routing_case(512, 144, 16),
        em_routing_case(512, 144, 16, layout="contiguous"),
        convcaps_em_case(),
        convcaps_layer_case(),
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
                    wall, cpu = time_ms(functools.partial(case.run, backward), args.repeats)
                rows.append({"case": case.name, "shape": case.shape, "mode": mode,
                             "wall_ms": round(wall, 1), "cpu_ms": round(cpu, 1)})
    print(f"device: {device_name()}, torch {torch.__version__}, commit {git_commit()}, medians of "
          f"{args.repeats} after a warm-up call, load average {os.getloadavg()[0]:.1f} at the end\n")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
