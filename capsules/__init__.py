"""Capsule layers, models, losses and datasets built on the routing registry.

    import capsules
    capsules.models()                                              # ['capsnet', 'compact', 'matrix-capsnet', ...]
    model = capsules.create_model("matrix-capsnet", routing="dynamic", classes=5, in_channels=2)
    out = model(images, labels)                                    # CapsuleOutput(activations, poses, reconstruction)
    layer = capsules.ConvCaps(32, 32, kernel_size=3, stride=2, routing="em", iterations=3)

Layers take ``routing="<name>"`` plus that algorithm's options, so any registered algorithm runs in any
architecture. Datasets live in the subpackage `capsules.datasets` (imported on use).
"""

from capsules import losses, models
from capsules.layers import CapsuleLinear, ClassCaps, ConvCaps, PrimaryCaps, ReconstructionDecoder
from capsules.losses import (
    SpreadMarginSchedule,
    logit_cross_entropy,
    margin_loss,
    nll_loss,
    reconstruction_loss,
    spread_loss,
)
from capsules.models import (
    CapsuleOutput,
    UnknownModelError,
    available_models,
    create_model,
    model_options,
    register_model,
)

__all__ = [
    "CapsuleLinear",
    "CapsuleOutput",
    "ClassCaps",
    "ConvCaps",
    "PrimaryCaps",
    "ReconstructionDecoder",
    "SpreadMarginSchedule",
    "UnknownModelError",
    "available_models",
    "create_model",
    "losses",
    "logit_cross_entropy",
    "margin_loss",
    "nll_loss",
    "model_options",
    "models",
    "reconstruction_loss",
    "register_model",
    "spread_loss",
]
