"""A small model registry: capsule models by name, each built with the routing algorithm asked for."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

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
    return _models[name](**kwargs)
