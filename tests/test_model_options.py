"""Bad options of models and layers fail at construction with a message naming the option (issue 16)."""

import pytest

import capsules
import routing
from capsules import ClassCaps, ConvCaps


@pytest.mark.parametrize("options, error, message", [
    (dict(routing_options=[("iterations", 2)]), TypeError, "routing_options must be a mapping"),
    (dict(routing_options="iterations=2"), TypeError, "routing_options must be a mapping"),
    (dict(routing_options={"out_caps": 3}), ValueError, "routing_options out_caps: the model's layers set these"),
    (dict(routing_options={"in_caps": 3, "pose_dim": 4}), ValueError, "routing_options in_caps, pose_dim"),
    (dict(routing_options={"final_lambda": 0.1}), ValueError,
     "routing_options final_lambda: not options of routing 'dynamic', which takes "
     + ", ".join(sorted(["backend", *routing.options("dynamic")]))),
    (dict(routing=3), TypeError, "routing must be the name of a routing algorithm"),
    (dict(foo=1), TypeError, "model 'compact' has no option\\(s\\) foo; it takes routing, routing_options"),
    (dict(channels=(0, 8, 8)), ValueError, r"expected positive integers, got channels\[0\]=0"),
    (dict(channels=(8, 8)), ValueError, "channels gives the widths of the 3 stem convolutions"),
    (dict(channels=8), ValueError, "channels gives the widths of the 3 stem convolutions"),
])
def test_compact_model_refuses_bad_options_at_construction(options, error, message):
    with pytest.raises(error, match=message):
        capsules.create_model("compact", **options)


@pytest.mark.parametrize("options, message", [
    (dict(in_channels=0), "in_channels=0"),
    (dict(classes=-1), "classes=-1"),
    (dict(image_size=True), "image_size=True"),
])
def test_capsnet_refuses_sizes_that_are_not_positive_integers(options, message):
    with pytest.raises(ValueError, match=f"expected positive integers, got {message}"):
        capsules.create_model("capsnet", **options)


def test_routing_options_of_the_models_own_routing_are_accepted():
    model = capsules.create_model("compact", routing="em", routing_options={"final_lambda": 0.1, "iterations": 2},
                                  channels=(4, 4, 4), types=1)
    assert model.classes_caps.router.iterations == 2


@pytest.mark.parametrize("layer", [
    lambda: ConvCaps(2, 2, 3, routing="em", out_caps=5),
    lambda: ConvCaps(2, 2, 3, routing="self-routing", in_caps=4),
    lambda: ClassCaps(2, 3, "em", pose_dim=4),
])
def test_layers_refuse_sizes_they_set_themselves(layer):
    with pytest.raises(ValueError, match="the layer sets .* from its own sizes .*; leave them out"):
        layer()
