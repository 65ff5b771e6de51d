"""The layers whose traffic is modelled, each built for a backend ("triton" or "torch") at a batch size.

    dense              CapsuleLinear 1152 x 8D -> 10 x 16D, dynamic routing, 3 iterations (CapsNet's DigitCaps);
                       real batch 128
    em-convcaps1       ConvCaps 32 -> 32 types, 3 x 3, stride 2, EM, on the smallNORB model's 14 x 14 grid
    em-convcaps2       ConvCaps 32 -> 32 types, 3 x 3, stride 1, EM, on its 6 x 6 grid
    em-class           ClassCaps 32 types on 4 x 4 -> 5 classes, EM, coordinate addition
                       (the EM cases: the smallNORB matrix-capsule model, A = B = C = D = 32; real batch 64)

Launch split: the kernels' split of each sample's children over programs depends on the batch (the launchers aim
at a number of programs per GPU). `launch_split` fixes it to what an H100 would use at the real batch, for every
batch, so that a small batch moves exactly its share of the real batch's bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import MethodType

import torch
from torch import Tensor, nn

from capsules import CapsuleLinear, ClassCaps, ConvCaps
from routing.router import Router

H100_SMS = 132


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    real_batch: int
    build: Callable[[str, int], tuple[nn.Module, tuple[Tensor | None, ...]]]
    backends: tuple[str, ...] = ("triton", "torch")  # "triton-unfused" too where the layer fuses the votes


def _poses(shape: tuple[int, ...], seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).requires_grad_()


def _activations(shape: tuple[int, ...], seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g).mul(0.8).add(0.1).requires_grad_()


def dense(backend: str, batch: int):
    """backend "triton-unfused": the Triton backend routing votes formed first by PyTorch (the router's default
    route_linear), instead of its kernels that form them inside."""
    torch.manual_seed(0)
    layer = CapsuleLinear(1152, 8, 10, 16, routing="dynamic", backend=backend.removesuffix("-unfused"), iterations=3)
    if backend.endswith("-unfused"):
        layer.router.route_linear = MethodType(Router.route_linear, layer.router)
    return layer, (_poses((batch, 1152, 8), 1), None)


def _conv_caps(stride: int, grid: int):
    def build(backend: str, batch: int):
        torch.manual_seed(0)
        layer = ConvCaps(32, 32, 3, stride, routing="em", backend=backend)
        return layer, (_poses((batch, grid, grid, 32, 16), 1), _activations((batch, grid, grid, 32), 2))
    return build


def em_class(backend: str, batch: int):
    torch.manual_seed(0)
    layer = ClassCaps(32, 5, "em", coordinate_addition=True, backend=backend)
    return layer, (_poses((batch, 4, 4, 32, 16), 1), _activations((batch, 4, 4, 32), 2))


CASES = {case.name: case for case in (
    Case("dense", "CapsuleLinear 1152 x 8D -> 10 x 16D, dynamic, 3 iterations", 128, dense,
         ("triton", "triton-unfused", "torch")),
    Case("em-convcaps1", "ConvCaps 32 -> 32, 3x3/2, EM, 14x14 -> 6x6", 64, _conv_caps(2, 14)),
    Case("em-convcaps2", "ConvCaps 32 -> 32, 3x3/1, EM, 6x6 -> 4x4", 64, _conv_caps(1, 6)),
    Case("em-class", "ClassCaps 32 x 4x4 -> 5 classes, EM", 64, em_class),
)}


@contextmanager
def launch_split(batch: int, real_batch: int) -> Iterator[None]:
    """Make the launchers split each sample's children as they would on an H100 at `real_batch`: the programs they
    aim at scale with the batch (kernels.dynamic.op: PROGRAMS_PER_SM per SM; kernels.em.op: TARGET_PROGRAMS)."""
    import kernels.dynamic.op as dynamic_op
    import kernels.em.op as em_op

    saved = dynamic_op._target_programs, em_op.TARGET_PROGRAMS
    scale = batch / real_batch
    dynamic_op._target_programs = lambda device: max(1, round(dynamic_op.PROGRAMS_PER_SM * H100_SMS * scale))
    em_op.TARGET_PROGRAMS = max(1, round(em_op.TARGET_PROGRAMS * scale))
    try:
        yield
    finally:
        dynamic_op._target_programs, em_op.TARGET_PROGRAMS = saved
