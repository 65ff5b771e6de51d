"""The routing registry: algorithms by name, backends per algorithm, and third-party plugins.

Built-in algorithms register themselves on import with ``@register(name)`` (the reference PyTorch backend) and
``@register(name, backend="triton")`` (an accelerated backend: a subclass of the PyTorch router that overrides
``route`` and falls back to it where ``backend="auto"`` and the kernel cannot run). Installed packages add
algorithms through the entry-point group ``capsule_routing``; a plugin is imported only when its name is first
asked for.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

from routing.router import Router

ENTRY_POINT_GROUP = "capsule_routing"
REFERENCE_BACKEND = "torch"
# Options that size a router's learned parameters, which the capsule layers pass where an algorithm takes them:
# in_caps (distinct children), out_caps (parent types), pose_dim (the size D of a vote and of a parent's pose).
SIZE_OPTIONS = ("in_caps", "out_caps", "pose_dim")
# "auto" picks the first registered backend in this order; accelerated routers fall back to the reference one
# on inputs they cannot handle (for example Triton on CPU tensors).
AUTO_ORDER = ("triton", REFERENCE_BACKEND)

_routers: dict[str, dict[str, type[Router]]] = {}

R = TypeVar("R", bound=type[Router])


class UnknownRoutingError(KeyError):
    """An algorithm or backend name that is not registered (message lists what is)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


class PluginLoadError(ImportError):
    """A `capsule_routing` entry point that could not be imported or did not provide a router."""


def register(name: str, backend: str = REFERENCE_BACKEND) -> Callable[[R], R]:
    """Class decorator: register a `Router` subclass as algorithm `name`, backend `backend`.

    The reference backend ("torch") must be registered before any other backend of the same algorithm, and
    other backends must accept the same options (subclassing the reference router gives that for free).
    Registering the same (name, backend) twice is an error.
    """
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"routing name must be a non-empty string other than 'auto', got {name!r}")
    if not isinstance(backend, str) or not backend or backend == "auto":
        raise ValueError(f"backend must be a non-empty string other than 'auto', got {backend!r}")

    def decorate(cls: R) -> R:
        if not (inspect.isclass(cls) and issubclass(cls, Router)):
            raise TypeError(f"@register({name!r}) expects a subclass of routing.Router, got {cls!r}")
        backends = _routers.get(name, {})
        if backend in backends:
            raise ValueError(
                f"routing {name!r} already has a {backend!r} backend ({backends[backend].__qualname__}); "
                f"cannot register {cls.__qualname__} under the same name"
            )
        if backend != REFERENCE_BACKEND and REFERENCE_BACKEND not in backends:
            raise ValueError(
                f"register the {REFERENCE_BACKEND!r} backend of routing {name!r} before its {backend!r} backend"
            )
        _routers[name] = {**backends, backend: cls}
        return cls

    return decorate


def unregister(name: str) -> None:
    """Remove algorithm `name` and all its backends (used by tests and plugin development)."""
    _routers.pop(name, None)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load_plugin(name: str) -> None:
    entry_point = _entry_points().get(name)
    if entry_point is None:
        return
    try:
        loaded = entry_point.load()
    except Exception as exc:  # any import-time failure of third-party code
        raise PluginLoadError(
            f"routing plugin {name!r} (entry point {entry_point.value!r} in group {ENTRY_POINT_GROUP!r}) "
            f"failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    if name in _routers:
        return
    if inspect.isclass(loaded) and issubclass(loaded, Router):
        register(name)(loaded)
        return
    raise PluginLoadError(
        f"routing plugin {name!r} (entry point {entry_point.value!r}) loaded, but it neither registered "
        f"routing {name!r} nor pointed at a routing.Router subclass (got {loaded!r})"
    )


def available() -> list[str]:
    """Names of every routing algorithm: built-in, registered at run time, and installed plugins (not loaded)."""
    return sorted(set(_routers) | set(_entry_points()))


def backends(name: str) -> list[str]:
    """The backends registered for algorithm `name`, reference backend first."""
    table = _lookup(name)
    return sorted(table, key=lambda b: (b != REFERENCE_BACKEND, b))


def _lookup(name: str) -> dict[str, type[Router]]:
    if name not in _routers:
        _load_plugin(name)
    if name not in _routers:
        raise UnknownRoutingError(f"unknown routing {name!r}; available: {', '.join(available()) or '(none)'}")
    return _routers[name]


def _accepted_options(cls: type[Router]) -> list[str]:
    return [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def options(name: str) -> list[str]:
    """The options algorithm `name` takes (its reference backend's keyword arguments), for example
    ['iterations', 'detach_inner', 'eps'] for "dynamic"; non-iterative algorithms take no `iterations`."""
    return _accepted_options(_lookup(name)[REFERENCE_BACKEND])


def option_defaults(name: str) -> dict[str, Any]:
    """The default value of each option of algorithm `name` that has one (for example {"iterations": 3, ...})."""
    parameters = inspect.signature(_lookup(name)[REFERENCE_BACKEND].__init__).parameters
    return {n: p.default for n, p in parameters.items() if n != "self" and p.default is not p.empty}


def size_options(name: str) -> set[str]:
    """Which of SIZE_OPTIONS algorithm `name` takes."""
    return set(SIZE_OPTIONS) & set(options(name))


def sized_options(name: str, votes_shape: tuple[int, ...], **options: Any) -> dict[str, Any]:
    """`options` plus the size options algorithm `name` takes (in_caps, out_caps, pose_dim: routing.SIZE_OPTIONS)
    read from votes_shape (B, I, J, D) unless `options` sets them, as a capsule layer passes them."""
    if len(tuple(votes_shape)) != 4:
        raise ValueError(f"sized_options: votes_shape must be (B, I, J, D), got {tuple(votes_shape)}")
    given = dict(zip(("in_caps", "out_caps", "pose_dim"), tuple(votes_shape)[1:], strict=True))
    return {**{k: v for k, v in given.items() if k in size_options(name)}, **options}


def _check_options(name: str, cls: type[Router], options: dict[str, Any]) -> None:
    accepted = _accepted_options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for routing {name!r}; "
            f"accepted options: {', '.join(accepted) or '(none)'}"
        )


def create(name: str, *, backend: str = "auto", **options: Any) -> Router:
    """Build the router for algorithm `name`.

    backend: "auto" (the fastest registered backend, falling back to the reference one where it cannot run),
    "torch" (pure PyTorch, runs anywhere), or another registered backend such as "triton" (which then refuses
    inputs it cannot handle with a ValueError instead of falling back).
    options: the algorithm's keyword options (for example iterations=3); unknown options are a ValueError, and each
    router checks its options' types (TypeError) and ranges (ValueError), naming the option (routing.option_checks).
    """
    table = _lookup(name)
    if backend == "auto":
        chosen = next(b for b in (*AUTO_ORDER, *sorted(table)) if b in table)
    elif backend in table:
        chosen = backend
    else:
        raise UnknownRoutingError(
            f"routing {name!r} has no backend {backend!r}; available: auto, {', '.join(backends(name))}"
        )
    cls = table[chosen]
    _check_options(name, cls, options)
    router = cls(**options)
    router.name = name
    router.backend = chosen
    router.fallback = backend == "auto"
    return router
