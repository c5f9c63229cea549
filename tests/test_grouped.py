"""Grouped convolutions cut within groups (groups kept, the same positions removed from every
group) or in whole groups, chosen per conv: ShuffleNetV1 units become prunable, ResNeXt and
RegNet are cut finer than whole groups, and every slim model equals its masked original, passes
the outside check, costs what the counter counts and reloads from a checkpoint."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.errors import UsageError
from compressor.graph import build_graph, count, slim
from compressor.testing.outside_check import outside_check, randomize

SHAPE = (1, 3, 8, 8)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    """ShuffleNetV1 unit: grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1, residual."""

    def __init__(self, c: int, mid: int, g: int) -> None:
        super().__init__()
        self.g = g
        self.gconv1 = nn.Conv2d(c, mid, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.gconv2 = nn.Conv2d(mid, c, 1, groups=g, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = channel_shuffle(F.relu(self.bn1(self.gconv1(x))), self.g)
        y = self.bn3(self.gconv2(self.bn2(self.dw(y))))
        return F.relu(x + y)


class ShuffleV1Net(nn.Module):
    """A stem, two ShuffleNetV1 units and a classifier."""

    def __init__(self, g: int = 2, c: int = 16, mid: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.units = nn.Sequential(ShuffleV1Unit(c, mid, g), ShuffleV1Unit(c, mid, g))
        self.fc = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.units(self.stem(x)).mean((2, 3)))


def _random_plans(graph, n: int, seed: int = 0):
    """Plans keeping random channels (not just top-L1) of every prunable group."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        counts = {g.name: int(rng.integers(1, g.size + 1)) for g in graph.prunable}
        imp = {g.name: rng.random(g.size) for g in graph.prunable}
        yield graph.plan_from_counts(counts, method="test", importance=imp)


def _check_exact(model: nn.Module, graph, plan, shape: tuple[int, ...]) -> nn.Module:
    """Slim == masked original, the outside check passes, the cost model equals the counter."""
    small = slim(model, plan, graph=graph)
    assert graph.verify(small, plan) < 1e-5
    res = outside_check(model, small, input_shape=shape)
    assert res.ok, res.reason
    truth = count(small, shape)
    est = graph.cost(plan)
    assert est.macs == pytest.approx(truth.macs, rel=1e-6, abs=2)
    assert est.params == truth.params
    return small


@pytest.mark.parametrize(("g", "c", "mid"), [(2, 16, 16), (4, 32, 32), (3, 24, 24)])
def test_shufflenet_v1_units_become_prunable(g: int, c: int, mid: int) -> None:
    model = randomize(ShuffleV1Net(g, c, mid), SHAPE)
    whole = build_graph(model, input_shape=SHAPE, grouped="whole")
    shared = next(x for x in whole.groups if ("units.0.gconv2", "out") in x.members)
    assert shared.size == 1  # whole groups + shuffle: every channel is one class
    graph = build_graph(model, input_shape=SHAPE)
    assert set(graph.grouped.values()) == {"within"} and len(graph.grouped) == 4
    # the residual stream: a class per position in a group, c / g of them
    stream = next(x for x in graph.groups if ("units.0.gconv2", "out") in x.members)
    assert not stream.frozen and stream.size == c // g
    if (mid // g) % g == 0:  # the bottleneck survives the shuffle when its groups split evenly
        mid_group = next(x for x in graph.groups if ("units.0.gconv1", "out") in x.members)
        assert mid_group.size == (mid // g) // g
    for plan in _random_plans(graph, 3):
        assert plan.info["grouped_convs"] == graph.grouped
        small = _check_exact(model, graph, plan, SHAPE)
        for name in graph.grouped:
            conv = small.get_submodule(name)
            assert conv.groups == g  # groups kept, the same count removed from each
    plan = graph.plan_from_counts({stream.name: stream.size // 2}, method="t")
    small = _check_exact(model, graph, plan, SHAPE)
    assert small.units[0].gconv2.out_channels == c // 2 and small.units[0].gconv2.groups == g


def test_shufflenet_v1_slim_that_breaks_a_group_is_caught() -> None:
    """verify and the outside check fail when the kept positions differ between groups."""
    model = randomize(ShuffleV1Net(2, 16, 16), SHAPE)
    graph = build_graph(model, input_shape=SHAPE)
    stream = next(x for x in graph.groups if ("units.0.gconv2", "out") in x.members)
    plan = graph.plan_from_counts({stream.name: 4}, method="t")
    small = slim(model, plan, graph=graph)
    with torch.no_grad():  # group 1 of the first unit's input reads other positions than group 0
        w = small.units[0].gconv1.weight
        half = w.shape[0] // 2
        w[half:] = w[half:].flip(1)
    assert graph.verify(small, plan) > 1e-3
    assert not outside_check(model, small, input_shape=SHAPE).ok


def test_a_collapsed_whole_group_conv_is_redone_within_groups() -> None:
    """8 groups of 2: the size rule says whole groups, the shuffle collapses them: within."""
    model = randomize(ShuffleV1Net(8, 16, 16), SHAPE)
    graph = build_graph(model, input_shape=SHAPE)
    assert set(graph.grouped.values()) == {"within"}
    assert any(("units.0.gconv2", "out") in x.members for x in graph.prunable)
    for plan in _random_plans(graph, 2):
        _check_exact(model, graph, plan, SHAPE)


def _grouped_layers(d: int, transposed: bool) -> nn.Module:
    """stem -> grouped conv (4 groups of 3 inputs, 2 outputs: within groups) -> BN -> head."""
    conv = {
        (1, False): nn.Conv1d,
        (2, False): nn.Conv2d,
        (3, False): nn.Conv3d,
        (1, True): nn.ConvTranspose1d,
        (2, True): nn.ConvTranspose2d,
    }[(d, transposed)]
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[d]
    head = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[d]
    return nn.Sequential(
        head(3, 12, 1), conv(12, 8, 3, padding=1, groups=4, bias=True), bn(8), nn.ReLU(), head(8, 4, 1)
    )


@pytest.mark.parametrize(("d", "transposed"), [(1, False), (2, False), (3, False), (1, True), (2, True)])
def test_within_group_cost_equals_counter(d: int, transposed: bool) -> None:
    shape = {1: (1, 3, 8), 2: (1, 3, 6, 6), 3: (1, 3, 4, 4, 4)}[d]
    model = randomize(_grouped_layers(d, transposed), shape)
    graph = build_graph(model, input_shape=shape)
    assert graph.grouped == {"1": "within"}
    for plan in _random_plans(graph, 4, seed=d):
        small = _check_exact(model, graph, plan, shape)
        assert small[1].groups == 4
        assert graph.cost(plan).macs < graph.full.macs or not plan.groups


def test_grouped_option_is_checked() -> None:
    with pytest.raises(UsageError, match="grouped='sideways'.*auto, whole, within"):
        build_graph(ShuffleV1Net(), input_shape=SHAPE, grouped="sideways")


def _resnext() -> nn.Module:
    import torchvision

    return torchvision.models.resnext50_32x4d()


def _regnet() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("regnetx_002", pretrained=False)


@pytest.mark.parametrize("factory", [_resnext, _regnet], ids=["resnext50_32x4d", "regnetx_002"])
def test_resnext_and_regnet_cut_finer_than_whole_groups(factory: Callable[[], nn.Module]) -> None:
    shape = (1, 3, 32, 32)
    model = randomize(factory(), shape)
    graph = build_graph(model, input_shape=shape)
    assert "within" in graph.grouped.values() and "whole" in graph.grouped.values()
    plan = graph.plan_from_counts(graph.counts_for_flops(0.5), method="l1-uniform")
    assert abs(graph.cost(plan).ratio(graph.full) - 0.5) <= 0.02
    small = _check_exact(model, graph, plan, shape)
    finer = [
        name
        for name, how in graph.grouped.items()
        if how == "within"
        and small.get_submodule(name).groups == model.get_submodule(name).groups
        and small.get_submodule(name).out_channels < model.get_submodule(name).out_channels
    ]
    assert finer, "no grouped conv kept all its groups with fewer channels per group"


def test_within_group_checkpoint_reloads_in_a_fresh_process() -> None:
    from compressor.checkpoint import load_checkpoint, save_checkpoint
    from compressor.testing.zoo_check import roundtrip

    shape = (1, 3, 32, 32)
    model = randomize(_resnext(), shape)
    graph = build_graph(model, input_shape=shape)
    plan = graph.plan_from_counts(graph.counts_for_flops(0.5), method="l1-uniform")
    small = slim(model, plan, graph=graph)
    within = [n for n, how in graph.grouped.items() if how == "within"]
    assert within
    res = roundtrip(small, "torchvision.models:resnext50_32x4d", shape)
    assert res["ok"], res
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:  # and in this process: the groups come back
        ck = Path(tmp) / "s.pt"
        save_checkpoint(small, ck, meta={"arch": "torchvision.models:resnext50_32x4d"})
        back, _ = load_checkpoint(ck)
    for n in within:
        a, b = small.get_submodule(n), back.get_submodule(n)
        assert (b.groups, b.in_channels, b.out_channels) == (a.groups, a.in_channels, a.out_channels)
        assert b.groups == model.get_submodule(n).groups


def test_plan_file_records_the_structure(tmp_path) -> None:
    """The saved plan names each grouped conv's structure; reloaded, it still applies."""
    from compressor.plan import Plan

    model = randomize(ShuffleV1Net(2, 16, 16), SHAPE)
    graph = build_graph(model, input_shape=SHAPE)
    plan = graph.plan_from_counts(graph.counts_for_flops(0.6), method="l1-uniform")
    back = Plan.load(plan.save(tmp_path / "plan.json"))
    assert back.info["grouped_convs"] == {
        "units.0.gconv1": "within",
        "units.0.gconv2": "within",
        "units.1.gconv1": "within",
        "units.1.gconv2": "within",
    }
    _check_exact(model, graph, back, SHAPE)
    whole = build_graph(model, input_shape=SHAPE, grouped="whole")
    with pytest.raises(UsageError, match="cuts grouped conv 'units.0.gconv1' within groups"):
        whole.keep_classes(back)
