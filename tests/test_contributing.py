"""The recipe in CONTRIBUTING.md works as written: its method file registers, runs through the
registry and the CLI's option parsing, and produces a plan that slims equal to the masked original."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

from compressor.errors import UsageError
from compressor.graph import build_graph, slim
from compressor.methods import METHODS, get_method, list_methods

CONTRIBUTING = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def _recipe() -> str:
    text = CONTRIBUTING.read_text(encoding="utf-8")
    m = re.search(r"<!-- recipe: method -->\s*```python\n(.*?)```", text, re.S)
    assert m, "CONTRIBUTING.md lost its method recipe"
    return m.group(1)


@pytest.fixture
def recipe_method():
    list_methods()  # the built-in methods first
    name = "compressor.methods.l2_uniform_recipe"
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    try:
        exec(compile(_recipe(), "CONTRIBUTING.md", "exec"), module.__dict__)
        yield get_method("l2-uniform")
    finally:
        sys.modules.pop(name, None)
        if "l2-uniform" in METHODS:
            METHODS.unregister("l2-uniform")


def test_recipe_method_registers_and_slims_exactly(recipe_method) -> None:
    """The recipe's method is listed, hits the FLOPs target and its plan slims exactly."""
    from tests.nets import Residual

    assert "l2-uniform" in list_methods()
    torch.manual_seed(0)
    model = Residual().eval()
    graph = build_graph(model, input_shape=(1, 3, 16, 16))
    plan = recipe_method(model, graph, flops=0.5, progress=False)
    assert plan.method == "l2-uniform"
    assert abs(graph.cost(plan).macs / graph.full.macs - 0.5) < 0.08
    for name, kept in plan.groups.items():  # the largest-L2 channels are the ones kept
        l2 = graph.channel_vectors(name).norm(dim=1)
        assert set(kept) == set(torch.argsort(l2, descending=True)[: len(kept)].tolist())
    small = slim(model, plan, graph=graph)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert float(model(x).abs().min()) > 0
    assert graph.verify(small, plan, [x]) < 1e-4


def test_recipe_options_are_typed_and_checked(recipe_method) -> None:
    """Its options come from the dataclass: parsed from KEY=VALUE, bad values rejected."""
    assert recipe_method.parse_option("multiple=8") == ("multiple", 8)
    with pytest.raises(UsageError, match="at least 1"):
        recipe_method.make_options({"multiple": 0})
    with pytest.raises(UsageError, match="valid: multiple"):
        recipe_method.parse_option("nope=1")
