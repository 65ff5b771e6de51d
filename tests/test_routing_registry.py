"""The registry: names, backends, options, duplicates, and plugins through the `capsule_routing` entry points."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

import routing
from routing.result import RoutingResult


def test_builtin_algorithms_are_available():
    names = routing.available()
    assert {"dynamic", "em"} <= set(names)
    assert names == sorted(names)
    for name in ("dynamic", "em"):
        assert routing.backends(name)[0] == "torch"
        router = routing.create(name, backend="torch")
        assert isinstance(router, torch.nn.Module) and isinstance(router, routing.Router)
        assert (router.name, router.backend) == (name, "torch")


def test_options_reach_the_router():
    router = routing.create("dynamic", iterations=5, detach_inner=True)
    assert (router.iterations, router.detach_inner) == (5, True)
    em = routing.create("em", iterations=2, out_caps=7, final_lambda=0.02)
    assert (em.iterations, em.out_caps, em.final_lambda) == (2, 7, 0.02)


def test_unknown_names_and_backends_list_what_exists():
    with pytest.raises(KeyError, match=r"unknown routing 'nope'; available: .*dynamic.*em"):
        routing.create("nope")
    with pytest.raises(KeyError, match=r"routing 'dynamic' has no backend 'cuda-magic'; available: auto, torch"):
        routing.create("dynamic", backend="cuda-magic")


def test_unknown_options_name_the_accepted_ones():
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'iters' for routing 'dynamic'; accepted options: "
                                          r"iterations, detach_inner, eps"):
        routing.create("dynamic", iters=3)


class _Mean(routing.Router):
    """Toy algorithm: plain mean of the votes, uniform assignments."""

    def __init__(self, *, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def route(self, votes, activations=None):
        B, I, J, D = votes.shape
        poses = votes.mean(1) * self.scale
        return RoutingResult(poses, poses.norm(dim=-1), votes.new_full((B, I, J), 1 / J))


@pytest.fixture
def toy_name():
    yield "toy-mean"
    routing.unregister("toy-mean")


def test_register_a_new_algorithm_and_duplicates_are_errors(toy_name):
    routing.register(toy_name)(_Mean)
    assert toy_name in routing.available()
    result = routing.create(toy_name, scale=2.0)(torch.ones(2, 3, 4, 5))
    assert torch.equal(result.poses, torch.full((2, 4, 5), 2.0))
    with pytest.raises(ValueError, match="already has a 'torch' backend"):
        routing.register(toy_name)(_Mean)
    with pytest.raises(TypeError, match="subclass of routing.Router"):
        routing.register("not-a-router")(object)


def test_other_backends_need_the_reference_backend_first():
    with pytest.raises(ValueError, match="register the 'torch' backend of routing 'ghost' before"):
        routing.register("ghost", backend="triton")(_Mean)
    assert "ghost" not in routing.available()


def test_registered_algorithms_get_input_checks(toy_name):
    routing.register(toy_name)(_Mean)
    with pytest.raises(ValueError, match="4 dims"):
        routing.create(toy_name)(torch.ones(2, 3, 4))


def _install_fake_distribution(tmp_path, monkeypatch, name, target, module_source=None):
    """A dist-info folder on sys.path whose entry point `name` in group capsule_routing points at `target`."""
    dist = tmp_path / f"fake_routing_plugin_{name.replace('-', '_')}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-routing-plugin-{name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{routing.ENTRY_POINT_GROUP}]\n{name} = {target}\n")
    if module_source is not None:
        module = target.split(":")[0]
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(module_source))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()


def test_plugin_loaded_lazily_through_entry_point(tmp_path, monkeypatch):
    source = """
        import torch
        from routing import Router, RoutingResult

        class FirstChild(Router):
            def route(self, votes, activations=None):
                B, I, J, D = votes.shape
                return RoutingResult(votes[:, 0], votes[:, 0].norm(dim=-1), votes.new_full((B, I, J), 1 / J))
    """
    _install_fake_distribution(tmp_path, monkeypatch, "first-child", "fake_first_child:FirstChild", source)
    try:
        assert "first-child" in routing.available()
        assert "fake_first_child" not in sys.modules  # listed, not imported
        votes = torch.randn(2, 3, 4, 5)
        result = routing.create("first-child")(votes)
        assert torch.equal(result.poses, votes[:, 0])
        assert "fake_first_child" in sys.modules
    finally:
        routing.unregister("first-child")
        sys.modules.pop("fake_first_child", None)


def test_plugin_that_fails_to_load_is_named(tmp_path, monkeypatch):
    _install_fake_distribution(tmp_path, monkeypatch, "broken", "fake_broken:Thing", "raise RuntimeError('boom')\n")
    with pytest.raises(routing.PluginLoadError, match=r"routing plugin 'broken' .*fake_broken:Thing.* boom"):
        routing.create("broken")
    sys.modules.pop("fake_broken", None)


def test_plugin_pointing_at_something_else_is_named(tmp_path, monkeypatch):
    _install_fake_distribution(tmp_path, monkeypatch, "odd", "fake_odd:VALUE", "VALUE = 3\n")
    with pytest.raises(routing.PluginLoadError, match=r"routing plugin 'odd' .*neither registered"):
        routing.create("odd")
    sys.modules.pop("fake_odd", None)
