"""A small model registry: capsule models by name, each built with the routing algorithm asked for."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

import routing as routing_registry

_models: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


class UnknownModelError(KeyError):
    """A model name that is not registered (the message lists the registered ones)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


def register_model(name: str) -> Callable[[F], F]:
    """Decorator: register a model class (or factory) under `name`; registering a name twice is an error."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def decorate(factory: F) -> F:
        if name in _models:
            raise ValueError(f"model {name!r} is already registered ({_models[name].__qualname__})")
        _models[name] = factory
        return factory

    return decorate


def available_models() -> list[str]:
    """The registered model names."""
    return sorted(_models)


def model_options(name: str) -> list[str]:
    """The keyword arguments model `name`'s constructor accepts (for command lines that pass options through)."""
    if name not in _models:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(available_models()) or '(none)'}")
    return [p for p in inspect.signature(_models[name]).parameters if p != "self"]


def create_model(name: str, routing: str | None = None, **kwargs: Any) -> nn.Module:
    """Build model `name` with routing algorithm `routing` (a name from `routing.available()`; None keeps the
    model's default) and the model's keyword arguments, e.g. ``routing_options={"iterations": 2}``, ``classes=5``.
    """
    if name not in _models:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(available_models()) or '(none)'}")
    if routing is not None:
        kwargs["routing"] = routing
    check_model_arguments(name, kwargs)
    return _models[name](**kwargs)


def check_model_arguments(name: str, kwargs: dict[str, Any]) -> None:
    """Before anything is built: keyword arguments model `name` does not take (TypeError listing those it takes),
    a `routing` that is not a name, and `routing_options` that is not a mapping of that algorithm's options
    (TypeError/ValueError naming them; the sizes in_caps, out_caps and pose_dim are set by the model's layers)."""
    parameters = inspect.signature(_models[name]).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(kwargs) - set(parameters))
        if unknown:
            raise TypeError(f"model {name!r} has no option(s) {', '.join(unknown)}; it takes "
                            f"{', '.join(model_options(name))}")
    algorithm = kwargs.get("routing", parameters["routing"].default if "routing" in parameters else None)
    if algorithm is not None and not isinstance(algorithm, str):
        raise TypeError(f"routing must be the name of a routing algorithm (a str), got {algorithm!r}")
    options = kwargs.get("routing_options")
    if options is None:
        return
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise TypeError(f"routing_options must be a mapping of option names to values (for example "
                        f"{{'iterations': 2}}), got {options!r}")
    sizes = sorted(set(options) & set(routing_registry.SIZE_OPTIONS))
    if sizes:
        raise ValueError(f"routing_options {', '.join(sizes)}: the model's layers set these from their own sizes; "
                         f"leave them out")
    if algorithm is not None:
        accepted = {*routing_registry.options(algorithm), "backend"}
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError(f"routing_options {', '.join(unknown)}: not options of routing {algorithm!r}, which "
                             f"takes {', '.join(sorted(accepted - set(routing_registry.SIZE_OPTIONS)))}")
