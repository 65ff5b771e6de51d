"""routing.testing.check_router on every registered algorithm and backend, and on deliberately wrong routers."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import routing
from kernels.utils import interpreter_enabled
from routing.linear_votes import vector_votes
from routing.testing import check_router

REGISTERED = [(name, backend) for name in routing.available() for backend in routing.backends(name)]


def _runnable(backend: str) -> bool:
    return backend == "torch" or torch.cuda.is_available() or interpreter_enabled()


@pytest.mark.parametrize(("name", "backend"), REGISTERED, ids=[f"{n}-{b}" for n, b in REGISTERED])
def test_every_registered_router_conforms(name, backend):
    if not _runnable(backend):
        pytest.skip(f"backend {backend!r} needs CUDA or TRITON_INTERPRET=1")
    check_router(name, backend)


@pytest.mark.parametrize(("name", "options"), [("dynamic", {"detach_inner": True, "iterations": 2}),
                                               ("dynamic", {"double_backward": True, "iterations": 2}),
                                               ("em", {"out_caps": 4, "final_lambda": 0.1})])
def test_routers_conform_with_non_default_options(name, options):
    check_router(name, **options)


# ---------------------------------------------------------------------------- deliberately wrong routers


class TinyRouting(routing.Router):
    """A short, correct dynamic routing (Sabour et al. Procedure 1) that the wrong routers below break."""

    normalisation = "parents"

    def __init__(self, *, iterations: int = 3):
        super().__init__()
        self.iterations = iterations

    def couplings(self, logits: Tensor) -> Tensor:
        return logits.softmax(dim=2)  # over parents

    def prepare(self, votes: Tensor) -> Tensor:
        return votes

    def sums(self, s: Tensor) -> Tensor:
        return s

    def route(self, votes: Tensor, activations: Tensor | None = None) -> routing.RoutingResult:
        votes = self.prepare(votes)
        a = votes.new_ones(votes.shape[:2]) if activations is None else activations
        logits = votes.new_zeros(votes.shape[:3])
        for r in range(self.iterations):
            c = self.couplings(logits)
            v = routing.squash(self.sums(((c * a.unsqueeze(2)).unsqueeze(3) * votes).sum(1)))
            if r < self.iterations - 1:
                logits = logits + (votes * v.unsqueeze(1)).sum(-1)
        return routing.RoutingResult(v, torch.linalg.vector_norm(v, dim=-1), c)


class SoftmaxOverChildren(TinyRouting):
    def couplings(self, logits: Tensor) -> Tensor:
        return logits.softmax(dim=1)


class MixesSamples(TinyRouting):
    def prepare(self, votes: Tensor) -> Tensor:
        return votes - 0.1 * votes.mean(0, keepdim=True)


class ReturnsFloat32(TinyRouting):
    def route(self, votes, activations=None):
        return routing.RoutingResult(*(t.float() for t in super().route(votes, activations)))


class IgnoresIterations(TinyRouting):
    def __init__(self, *, iterations: int = 3):
        super().__init__(iterations=1)


class _DoubledGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class WrongGradient(TinyRouting):
    def sums(self, s: Tensor) -> Tensor:
        return _DoubledGradient.apply(s)


class WrongTransformsPath(TinyRouting):
    def route_linear(self, poses, transforms, activations=None):
        return self.route(vector_votes(poses, 1.01 * transforms), activations)


class SkipsInputChecks(TinyRouting):
    def forward(self, votes, activations=None, *, transforms=None):
        if transforms is not None:
            return self.route_linear(votes, transforms, activations)
        return self.route(votes, activations)


class NotDeterministic(TinyRouting):
    def prepare(self, votes: Tensor) -> Tensor:
        return votes + 1e-3 * torch.rand_like(votes)


class NoNormalisationStated(TinyRouting):
    normalisation = "rows"


class _SquareWithFirstOrderBackward(torch.autograd.Function):
    """x^2 with a backward that is right but carries no graph: second-order gradients through it are 0."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x.detach() * grad


class WrongSecondOrder(TinyRouting):
    def sums(self, s: Tensor) -> Tensor:
        return s + 0.1 * _SquareWithFirstOrderBackward.apply(torch.tanh(s))


class OverflowsInFloat32(TinyRouting):
    def sums(self, s: Tensor) -> Tensor:
        norm2 = (s * s).sum(-1, keepdim=True)  # the old squash's |s|^2: inf from |s| ~ 2e19 in float32
        return s * (1 + norm2) / (1 + norm2)


@pytest.fixture
def registered():
    names = []

    def register(cls):
        name = f"test-{cls.__name__.lower()}"
        routing.register(name)(cls)
        names.append(name)
        return name

    yield register
    for name in names:
        routing.unregister(name)


def test_a_correct_router_passes(registered):
    check_router(registered(TinyRouting))


@pytest.mark.parametrize(("cls", "check"), [
    (SoftmaxOverChildren, "normalisation over parents"),
    (MixesSamples, "batch independence"),
    (ReturnsFloat32, "shapes and dtypes"),
    (IgnoresIterations, "the iteration count takes effect"),
    (WrongGradient, "float64 gradients against finite differences"),
    (WrongTransformsPath, "transforms path"),
    (SkipsInputChecks, "clear errors for bad input"),
    (NotDeterministic, "batch independence"),
    (NoNormalisationStated, "the normalisation attribute"),
    (WrongSecondOrder, "second-order gradients"),
    (OverflowsInFloat32, r"finite results for float32 votes of magnitude 1e\+30"),
])
def test_a_wrong_router_fails_the_check_it_breaks(registered, cls, check):
    name = registered(cls)
    with pytest.raises(AssertionError, match=f"check_router\\('{name}', backend='torch'\\) failed {check}"):
        check_router(name)
