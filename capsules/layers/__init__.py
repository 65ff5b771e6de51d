"""Capsule layers whose routing is chosen by name from the routing registry.

`PrimaryCaps` (convolution to vector or matrix capsules), `CapsuleLinear` (fully connected), `ConvCaps`
(convolutional, 4x4 pose matrices), `ClassCaps` (shared over positions, coordinate addition) and the
`ReconstructionDecoder`. Every routed layer takes ``routing="<name>"`` plus that algorithm's options.
"""

from capsules.layers.capsule_linear import CapsuleLinear
from capsules.layers.checks import check_labels
from capsules.layers.class_caps import ClassCaps, scaled_coordinates
from capsules.layers.conv_caps import ConvCaps
from capsules.layers.decoder import ReconstructionDecoder, mask_to_class
from capsules.layers.primary_caps import PrimaryCaps

__all__ = [
    "CapsuleLinear",
    "ClassCaps",
    "ConvCaps",
    "PrimaryCaps",
    "ReconstructionDecoder",
    "check_labels",
    "mask_to_class",
    "scaled_coordinates",
]
