"""The compiled forms ("variants") of the Triton kernels that the launchers choose, found by running the launchers.

A variant is what a GPU would compile for one launch: the kernel with its constexpr values (block sizes, flags),
the dtype of every pointer, the integer arguments Triton specialises at launch time (a value of 1 becomes a
constant, a multiple of 16 gets an alignment hint), and the launch options (num_warps). Two launches with the same
variant share one binary.

The variants are not written out by hand: each op package declares, next to its launchers, the launches that
reach them, and `capture` runs those launches with every kernel replaced by a recorder. The recorder applies
Triton's own launch-time specialisation (the binder a real launch uses, for the target's backend) and keeps the
distinct results; no kernel runs and no GPU is needed. So the variants are exactly what the launchers choose for
the declared shapes, dtypes and options, and they follow any change to a launcher's choices by themselves.

    kernels/<op>/variants.py   LAUNCHES: a tuple of `Launch`es: a name, the votes' dtype, and a function that
                               calls the op's public function forward and backward on small CPU tensors
    kernels/variants.py        (this module) `Launch`, `Variant`, `capture` and the shared shape classes

Adding entries (for a new kernel or a new launcher option): the launcher must launch through the module global
``wrap_triton(kernel)[grid](...)`` of a module under ``kernels`` (as kernels/dynamic/op.py does), since that name
is what `capture` replaces. Then add to the op's LAUNCHES a `Launch` per dtype and option that reaches the new
kernel or constexpr value: for example, for a launcher taking ``transforms=W``, a function that builds poses
[B, I, Din] and W [I, J, D, Din] and calls the public function with them, forward and backward. Shapes: use the
shape classes below (`PARENT_TILES`, `MODEL_SHAPES`) so that every block size the launcher can pick is reached.
A new op package adds its variants module to `OP_VARIANT_MODULES`. experiments.kernel_resources compiles every
captured variant for sm_80 and sm_90 and fails on spills; tests/test_kernel_compile.py checks the capture.

Why a few shapes cover the block sizes: the launchers pad J and D to powers of two and choose BLOCK_I (and, for
dynamic routing, the warps) from the padded J * D and the dtype; I only caps BLOCK_I from above (a small I gives a
smaller BLOCK_I at the same warps: fewer live values). So a launch with many children at each padded (J, D) reaches
the largest tile for that (J, D); `PARENT_TILES` lists the models' padded (J, D) and the corners of the range the
launchers accept (one parent of one value; the largest padded J * D, square and at both extreme aspect ratios).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from kernels.utils import MAX_PARENT_TILE

# Op packages whose variants modules declare LAUNCHES (kernels.<op>.variants).
OP_VARIANT_MODULES = ("kernels.dynamic.variants", "kernels.em.variants")

# The routed shapes (I, J, D) of the library's models: CapsNet's DigitCaps (1152 x 8D -> 10 x 16D) and the
# smallNORB matrix-capsule model (A = B = C = D = 32; ConvCaps: 3 x 3 x 32 children, 32 parents, 4 x 4 poses;
# class capsules: 4 x 4 x 32 children, 5 classes).
MODEL_SHAPES = {
    "capsnet-digitcaps": (1152, 10, 16),
    "smallnorb-convcaps": (288, 32, 16),
    "smallnorb-class": (512, 5, 16),
}


def _corner_tiles() -> dict[str, tuple[int, int]]:
    side = 1 << ((MAX_PARENT_TILE.bit_length() - 1) // 2)
    return {
        "one-value": (1, 1),
        "widest-parents": (MAX_PARENT_TILE, 1),
        "widest-poses": (1, MAX_PARENT_TILE),
        "largest-square": (side, MAX_PARENT_TILE // side),
    }


# (J, D) of the launch-space corners, each routed from `corner_children` children.
PARENT_TILES = _corner_tiles()


def corner_children(J: int, D: int) -> int:
    """Children for a corner launch: enough that BLOCK_I reaches its largest value for this (J, D) (the launchers'
    tiles hold at most 2048 values) with several sub-blocks, few enough that the votes stay small."""
    return max(2, 8192 // (J * D))


def fused_shapes(dtype: torch.dtype) -> dict[str, tuple[int, int, int]]:
    """(I, J, D) classes for the fused dense-layer launchers (kernels/linear_votes.py), which take a smaller range
    of padded J * D than the unfused ones (`max_fused_parents`): the models' shapes and the corners of that range."""
    from kernels.linear_votes import max_fused_parents  # imports triton, which this module's other users need not

    limit = max_fused_parents(dtype)
    side = 1 << ((limit.bit_length() - 1) // 2)
    corners = {"one-value": (1, 1), "widest-parents": (limit, 1), "widest-poses": (1, limit),
               "largest-square": (side, limit // side)}
    return {**MODEL_SHAPES, **{name: (corner_children(J, D), J, D) for name, (J, D) in corners.items()}}

TORCH_TO_TRITON = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}
DTYPES = tuple(TORCH_TO_TRITON)


@dataclass(frozen=True)
class Launch:
    """One way of calling an op: `run()` calls its public function forward and backward on CPU tensors."""

    name: str
    dtype: torch.dtype
    run: Callable[[], None]


@dataclass
class Variant:
    """One kernel specialisation, as Triton's launcher would compile it for `arch` (80 or 90).

    kernel: "module:function" of the @triton.jit kernel; signature: argument name -> Triton type ("*fp32", "i32",
    "constexpr"); constexprs: (argument index,) -> value; attrs: (argument index,) -> Triton attributes
    (alignment hints); options: the launch options (num_warps, num_stages, ...). launches: the `Launch` names
    that reach it.
    """

    kernel: str
    arch: int
    signature: dict[str, str]
    constexprs: dict[tuple[int, ...], Any]
    attrs: dict[tuple[int, ...], Any]
    options: dict[str, Any]
    dtype: str
    declared: tuple[str, ...] = ()  # the kernel's tl.constexpr parameters
    launches: list[str] = field(default_factory=list)

    def key(self) -> tuple:
        return (self.kernel, self.arch, tuple(self.signature.items()), tuple(sorted(self.constexprs.items())),
                repr(sorted(self.attrs.items())), tuple(sorted(self.options.items())))

    def declared_values(self) -> dict[str, Any]:
        """The values of the kernel's tl.constexpr parameters (block sizes and flags)."""
        names = list(self.signature)
        return {names[i]: v for (i,), v in sorted(self.constexprs.items()) if names[i] in self.declared}

    def specialised_values(self) -> dict[str, Any]:
        """The ordinary arguments Triton turned into constants at launch (value 1, or None for a pointer)."""
        names = list(self.signature)
        return {names[i]: v for (i,), v in sorted(self.constexprs.items()) if names[i] not in self.declared}

    def pointer_types(self) -> tuple[str, ...]:
        return tuple(kind for kind in self.signature.values() if kind.startswith("*"))

    def describe(self) -> str:
        """A readable name: the constexpr parameters and the warps."""
        text = " ".join(f"{name}={_show(value)}" for name, value in self.declared_values().items())
        return f"{text} num_warps={self.options.get('num_warps', 4)}"


def _show(value: Any) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


def all_launches() -> list[Launch]:
    """Every op's LAUNCHES, in OP_VARIANT_MODULES order."""
    return [launch for name in OP_VARIANT_MODULES for launch in importlib.import_module(name).LAUNCHES]


def _kernel_modules() -> list[Any]:
    """The loaded kernels.* modules that launch through a module global `wrap_triton`."""
    import sys

    return [module for name, module in list(sys.modules.items())
            if (name == "kernels" or name.startswith("kernels.")) and hasattr(module, "wrap_triton")]


class _Capture:
    """The variants found so far (one per target and distinct specialisation), and the per-kernel binders that
    compute a launch's specialisation the way Triton's launcher does."""

    def __init__(self, archs: tuple[int, ...]):
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend

        self.backends = {arch: make_backend(GPUTarget("cuda", arch, 32)) for arch in archs}
        self.binders: dict[tuple[int, int], Callable] = {}
        self.found: dict[tuple, Variant] = {}
        self.by_specialisation: dict[tuple, Variant] = {}  # what the binder returned -> the variant it gave

    def record(self, launch: Launch, kernel: Any, args: tuple, kwargs: dict) -> None:
        from triton.runtime.jit import JITFunction, create_function_from_signature

        if not isinstance(kernel, JITFunction):
            raise RuntimeError(f"kernel variants are captured from compiled kernels, got {type(kernel).__name__}: "
                               "import the kernels with TRITON_INTERPRET=0")
        for arch, backend in self.backends.items():
            binder = self.binders.get((id(kernel), arch))
            if binder is None:
                binder = create_function_from_signature(kernel.signature, kernel.params, backend)
                self.binders[id(kernel), arch] = binder
            bound, specialization, launch_options = binder(*args, **kwargs)
            seen = (id(kernel), arch, repr(specialization), repr(sorted(launch_options.items())))
            variant = self.by_specialisation.get(seen)
            if variant is None:  # _pack_args is the slow part: once per distinct specialisation
                options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization,
                                                                          launch_options)
                chosen = {name: value for name, value in kwargs.items() if name not in signature}
                declared = tuple(p.name for p in kernel.params if p.is_constexpr)
                variant = Variant(f"{kernel.fn.__module__}:{kernel.fn.__name__}", arch, signature, dict(constexprs),
                                  dict(attrs), chosen, TORCH_TO_TRITON[launch.dtype], declared)
                variant = self.by_specialisation[seen] = self.found.setdefault(variant.key(), variant)
            if launch.name not in variant.launches:
                variant.launches.append(launch.name)


@contextmanager
def recording(state: _Capture, launch: Launch) -> Iterator[None]:
    """Within the block, kernel launches through `wrap_triton` are recorded into `state` instead of running."""

    class Recorder:
        def __init__(self, kernel: Any):
            self.kernel = kernel

        def __getitem__(self, grid: Any) -> Callable[..., None]:
            return lambda *args, **kwargs: state.record(launch, self.kernel, args, kwargs)

    modules = _kernel_modules()
    saved = [module.wrap_triton for module in modules]
    for module in modules:
        module.wrap_triton = Recorder
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            module.wrap_triton = original


def capture(launches: list[Launch], archs: tuple[int, ...] = (80, 90)) -> list[Variant]:
    """Run each launch with its kernels recorded: every distinct variant for every target, in first-seen order.

    Needs TRITON_INTERPRET=0 when the kernel modules are first imported (the interpreter's kernels have no
    compiler signature). The launches' outputs are uninitialised memory: nothing is computed.
    """
    state = _Capture(archs)
    for launch in launches:
        with recording(state, launch):
            launch.run()
    return list(state.found.values())


def defined_kernels() -> set[str]:
    """"module:function" of every @triton.jit kernel (a name ending in _kernel) in the loaded kernels.* modules."""
    import sys

    from triton.runtime.jit import JITFunction

    return {f"{value.fn.__module__}:{value.fn.__name__}" for name, module in list(sys.modules.items())
            if name.startswith("kernels.") for value in vars(module).values()
            if isinstance(value, JITFunction) and value.fn.__name__.endswith("_kernel")}


def uncovered(variants: list[Variant], archs: tuple[int, ...] = (80, 90)) -> list[tuple[str, int, str]]:
    """(kernel, arch, dtype) that no captured variant covers, for every defined kernel, target and dtype."""
    seen = {(v.kernel, v.arch, v.dtype) for v in variants}
    return sorted((kernel, arch, dtype) for kernel in defined_kernels() for arch in archs
                  for dtype in TORCH_TO_TRITON.values() if (kernel, arch, dtype) not in seen)
