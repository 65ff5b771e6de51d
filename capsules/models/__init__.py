"""Capsule models by name: ``capsules.create_model(name, routing=..., **kwargs)``; ``capsules.models()`` lists them.

"capsnet" (Sabour et al. 2017), "matrix-capsnet" and "matrix-capsnet-small" (Hinton et al. 2018), "compact"
(a small MNIST model for CPU training), and "cnn-baseline" (the compact model without capsules or routing, sized to
a parameter count: the study's no-routing baseline). Every capsule model takes ``routing`` (a name from
``routing.available()``) and ``routing_options`` (a dict for ``routing.create``); every model returns a
`CapsuleOutput`.

This module is callable: ``capsules.models()`` is `available_models()`, while ``capsules.models.CapsNet`` and
friends stay reachable as attributes.
"""

import sys
import types

from capsules.models import capsnet as _capsnet  # noqa: F401  (registers "capsnet")
from capsules.models import cnn_baseline as _cnn_baseline  # noqa: F401  (registers "cnn-baseline")
from capsules.models import compact as _compact  # noqa: F401  (registers "compact")
from capsules.models import matrix_capsnet as _matrix_capsnet  # noqa: F401  (registers "matrix-capsnet*")
from capsules.models.capsnet import CapsNet
from capsules.models.cnn_baseline import CNNBaseline
from capsules.models.compact import CompactCapsNet
from capsules.models.matrix_capsnet import MatrixCapsNet
from capsules.models.output import CapsuleOutput
from capsules.models.registry import (
    UnknownModelError,
    available_models,
    create_model,
    model_options,
    register_model,
)

__all__ = [
    "CNNBaseline",
    "CapsNet",
    "CapsuleOutput",
    "CompactCapsNet",
    "MatrixCapsNet",
    "UnknownModelError",
    "available_models",
    "create_model",
    "model_options",
    "register_model",
]


class _CallableModule(types.ModuleType):
    """`capsules.models()` lists the registered models; the package's attributes are unchanged."""

    def __call__(self) -> list[str]:
        return available_models()


sys.modules[__name__].__class__ = _CallableModule
