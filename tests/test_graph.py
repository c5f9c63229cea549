"""The channel engine: every slimmed model equals its masked original; costs match the counter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from compressor.errors import TraceError, UsageError
from compressor.graph import ModuleRecord, build_graph, count, handler_for, slim
from tests.nets import TOPOLOGIES, Untraceable

SHAPE = (1, 3, 16, 16)


def random_plan(graph, rng: np.random.Generator, method: str = "test"):
    counts = {g.name: int(rng.integers(1, g.size + 1)) for g in graph.prunable}
    imp = {g.name: rng.random(g.size) for g in graph.prunable}  # random channels, not just top-L1
    return graph.plan_from_counts(counts, method=method, importance=imp)


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters so that slicing mistakes show."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        if isinstance(getattr(m, "bias", None), nn.Parameter) and getattr(m, "weight", None) is not None:
            with torch.no_grad():
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_slim_equals_masked(name: str) -> None:
    torch.manual_seed(0)
    model = TOPOLOGIES[name]().eval()
    randomize_bn(model)
    graph = build_graph(model, input_shape=SHAPE)
    assert graph.prunable, f"{name}: nothing prunable"
    rng = np.random.default_rng(0)
    for trial in range(4):
        plan = random_plan(graph, rng)
        small = slim(model, plan, graph=graph)
        assert graph.verify(small, plan) < 1e-5, f"{name} trial {trial}"
        # the analytic cost model agrees with the ground-truth counter
        truth = count(small, SHAPE)
        est = graph.cost(plan)
        assert est.macs == pytest.approx(truth.macs, rel=1e-6, abs=2)
        assert est.params == truth.params
        # and the slim model really is smaller
        if plan.groups:
            assert truth.params < count(model, SHAPE).params
    # the original is untouched
    assert graph.verify(model, {}) < 1e-6


def test_pruning_changes_output_unless_masked() -> None:
    """verify() can fail: a wrongly sliced model is detected."""
    model = TOPOLOGIES["residual"]().eval()
    randomize_bn(model)
    graph = build_graph(model, input_shape=SHAPE)
    g = graph.prunable[0]
    plan = graph.plan_from_counts({g.name: g.size // 2}, method="t")
    small = slim(model, plan, graph=graph)
    other = graph.plan_from_counts(
        {g.name: g.size // 2}, method="t", importance={g.name: -graph.importance()[g.name]}
    )
    assert graph.verify(small, plan) < 1e-5
    assert graph.verify(small, other) > 1e-3


def test_residual_groups_are_coupled() -> None:
    graph = build_graph(TOPOLOGIES["residual"]().eval(), input_shape=SHAPE)
    by_member = {m: g for g in graph.groups for m, role in g.members if role == "out"}
    assert by_member["proj.0"] is by_member["b2.0"]  # summed by the residual add
    assert by_member["stem.0"] is by_member["a2.0"]
    assert by_member["a1.0"] is not by_member["stem.0"]
    assert by_member["head"].frozen and by_member["head"].reason == "network output"


def test_grouped_conv_pruned_by_whole_groups() -> None:
    graph = build_graph(TOPOLOGIES["grouped"]().eval(), input_shape=SHAPE, grouped="whole")
    assert graph.grouped == {"group.0": "whole"}
    g = next(g for g in graph.groups if ("group.0", "out") in g.members)
    assert g.size == 4  # 16 channels in 4 groups -> 4 prunable units
    plan = graph.plan_from_counts({g.name: 3}, method="t")
    assert plan.info["grouped_convs"] == {"group.0": "whole"}
    small = slim(graph.model, plan, graph=graph)
    assert small.group[0].groups == 3 and small.group[0].out_channels == 12
    assert graph.verify(small, plan) < 1e-5


def test_grouped_conv_pruned_within_groups() -> None:
    """4 groups of 4: within groups (4 + 4 classes) beats whole groups (4) and is chosen."""
    graph = build_graph(TOPOLOGIES["grouped"]().eval(), input_shape=SHAPE)
    assert graph.grouped == {"group.0": "within"}
    out = next(g for g in graph.groups if ("group.0", "out") in g.members)
    inp = next(g for g in graph.groups if ("group.0", "in") in g.members)
    assert out is not inp and out.size == 4 and inp.size == 4  # a class per position in a group
    plan = graph.plan_from_counts({out.name: 3, inp.name: 2}, method="t")
    assert plan.info["grouped_convs"] == {"group.0": "within"}
    small = slim(graph.model, plan, graph=graph)
    conv = small.group[0]
    assert (conv.groups, conv.in_channels, conv.out_channels) == (4, 8, 12)
    assert tuple(conv.weight.shape[:2]) == (12, 2)
    assert graph.verify(small, plan) < 1e-5
    # a plan made for whole groups does not apply to a graph cut within groups
    whole = build_graph(graph.model, input_shape=SHAPE, grouped="whole")
    g = next(g for g in whole.groups if ("group.0", "out") in g.members)
    with pytest.raises(UsageError, match="whole groups but this graph cuts it within"):
        graph.keep_classes(whole.plan_from_counts({g.name: 3}, method="t"))


def test_flatten_linear_slices_features() -> None:
    model = TOPOLOGIES["flatten_linear"]().eval()
    graph = build_graph(model, input_shape=SHAPE)
    g = next(g for g in graph.groups if ("features.2.0", "out") in g.members)
    plan = graph.plan_from_counts({g.name: 5}, method="t")
    small = slim(model, plan, graph=graph)
    assert small.classifier[0].in_features == 5 * 16
    assert graph.verify(small, plan) < 1e-5


def test_unknown_op_is_frozen_and_named() -> None:
    model = TOPOLOGIES["unknown_op"]().eval()
    graph = build_graph(model, input_shape=SHAPE)
    frozen = {g.name: g.reason for g in graph.frozen}
    assert "b.0" in frozen and "custom_op" in frozen["b.0"]
    assert {g.name for g in graph.prunable} >= {"a.0", "c.0"}


def test_untraceable_model_names_the_operation() -> None:
    with pytest.raises(TraceError) as e:
        build_graph(Untraceable(), input_shape=SHAPE)
    assert "x.sum() > 0" in str(e.value)


def test_unknown_leaf_module_frozen() -> None:
    class Odd(nn.Module):  # a leaf the engine has no handler for
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flip(1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.odd, self.b = nn.Conv2d(3, 6, 1), Odd(), nn.Conv2d(6, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.odd(self.a(x))).flatten(1)

    graph = build_graph(Net().eval(), input_shape=SHAPE, leaf_modules=[Odd])
    g = graph.group("a")
    assert g.frozen and "Odd" in g.reason


def test_plan_errors_are_usage_errors() -> None:
    graph = build_graph(TOPOLOGIES["residual"]().eval(), input_shape=SHAPE)
    with pytest.raises(UsageError, match="no channel group"):
        graph.keep_classes({"nope": [0]})
    g = graph.prunable[0]
    with pytest.raises(UsageError, match="keeps no channel"):
        graph.keep_classes({g.name: []})
    with pytest.raises(UsageError, match="frozen"):
        graph.keep_classes({graph.frozen[0].name: [0]})


def test_counts_for_flops_hits_target() -> None:
    import torchvision

    model = torchvision.models.resnet18(num_classes=10).eval()
    graph = build_graph(model, input_shape=(1, 3, 32, 32))
    for frac in (0.75, 0.5, 0.3):
        plan = graph.plan_from_counts(graph.counts_for_flops(frac), method="t")
        small = slim(model, plan, graph=graph)
        assert count(small, (1, 3, 32, 32)).macs / graph.full.macs == pytest.approx(frac, abs=0.01)


def test_rounding_to_channel_multiple() -> None:
    import torchvision

    model = torchvision.models.resnet18(num_classes=10).eval()
    graph = build_graph(model, input_shape=(1, 3, 32, 32))
    counts = graph.counts_for_flops(0.5, multiple=8)
    assert all(c % 8 == 0 for c in counts.values())


def test_channel_vectors_and_importance() -> None:
    model = TOPOLOGIES["residual"]().eval()
    graph = build_graph(model, input_shape=SHAPE)
    g = graph.group("stem.0")  # stem conv + a2 conv, coupled by the add
    vec = graph.channel_vectors(g.name)
    assert vec.shape == (8, 3 * 9 + 8 * 9)
    imp = graph.importance()[g.name]
    expected = model.stem[0].weight.abs().sum((1, 2, 3)) + model.a2[0].weight.abs().sum((1, 2, 3))
    assert np.allclose(imp, expected.detach().double().numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    "module",
    [nn.Conv2d(3, 4, 3), nn.Linear(3, 4), nn.BatchNorm2d(4), nn.LayerNorm(4)],
    ids=lambda m: type(m).__name__,
)
def test_handlers_reject_wrong_module_type(module: nn.Module) -> None:
    """A slim handler given a module of the wrong kind fails loudly instead of mis-slicing."""
    h = handler_for(module)
    assert h is not None and h.module_type is type(module)
    rec = ModuleRecord(
        "x", "conv", in_labels=torch.arange(3), out_labels=torch.arange(3, 7), labels=torch.arange(4)
    )
    with pytest.raises(TypeError, match="handler for"):
        h.slim(nn.ReLU(), rec, torch.ones(7, dtype=torch.bool))


def test_rejected_input_shape_is_usage_error() -> None:
    with pytest.raises(UsageError, match="rejects input shape"):
        build_graph(TOPOLOGIES["residual"]().eval(), input_shape=(1, 1, 16, 16))


class ReshapeByOtherCount(nn.Module):
    """``sr(x).reshape(B, C, -1)`` with ``C`` read from ``x`` (timm's PVT-v2 / Twins attention):
    the reshape lays out sr's output by x's channel count, so neither count may change."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.sr = nn.Conv2d(8, 8, 2, stride=2)
        self.head = nn.Linear(8, 4)
        self.b = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        B, C, H, W = x.shape
        y = self.sr(x).reshape(B, C, -1).mean(-1)
        return self.head(y) + self.b(x).mean((2, 3))[:, :4]


def test_a_reshape_by_another_tensors_channel_count_freezes_both_tensors() -> None:
    from compressor.graph import slim

    model = ReshapeByOtherCount().eval()
    graph = build_graph(model, input_shape=(1, 3, 8, 8))
    assert graph.group("a").frozen and graph.group("sr").frozen
    assert "shaped by another tensor's channel count" in str(graph.group("sr").reason)
    plan = graph.plan_from_counts(graph.counts_for_flops(0.6), method="t")
    small = slim(model, plan, graph=graph)
    small(torch.randn(2, 3, 8, 8))  # runs: the reshape still fits


class WritesIntoSlice(nn.Module):
    """``x[:, :, 1:, 1:] = ...`` (timm's MViTv2 adds relative positions this way)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        y = self.b(x)
        y[:, :, 1:, 1:] = y[:, :, 1:, 1:] + self.c(x)[:, :, 1:, 1:]
        return self.head(torch.relu(y))


def test_an_in_place_write_into_a_slice_traces_and_freezes_what_it_touches() -> None:
    from compressor.testing.outside_check import outside_check, randomize

    shape = (1, 3, 6, 6)
    model = randomize(WritesIntoSlice().eval(), shape)
    graph = build_graph(model, input_shape=shape)
    # b's and c's outputs (one group: they are added) are what the write touches
    assert graph.group("b").frozen and "in-place write into part of a tensor" in str(graph.group("b").reason)
    assert not graph.group("a").frozen  # what feeds the write is still cut
    plan = graph.plan_from_counts(graph.counts_for_flops(0.8), method="t")
    small = slim(model, plan, graph=graph)
    assert small.a.out_channels < 8
    assert graph.verify(small, plan) < 1e-4
    assert outside_check(model, small, input_shape=shape).ok


class RepeatsChannels(nn.Module):
    """Every channel repeated twice in place before a conv reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)).repeat_interleave(2, dim=1))


def test_repeat_interleave_is_followed_along_the_batch_and_the_channels() -> None:
    from compressor.testing.outside_check import outside_check, randomize

    # along the batch (one query per image, repeated over its windows): nothing freezes
    windowed = build_graph(TOPOLOGIES["windowed"]().eval(), input_shape=SHAPE)
    assert [g.name for g in windowed.frozen] == ["head"]
    assert not windowed.group("query").frozen
    # along the channels: both copies of a channel are kept or cut together
    shape = (1, 3, 6, 6)
    model = randomize(RepeatsChannels().eval(), shape)
    graph = build_graph(model, input_shape=shape)
    assert not graph.group("a").frozen
    plan = graph.plan_from_counts({"a": 4}, method="t")
    small = slim(model, plan, graph=graph)
    assert small.a.out_channels == 4 and small.b.in_channels == 8
    assert graph.verify(small, plan) < 1e-5
    assert outside_check(model, small, input_shape=shape).ok


class ClassToken(nn.Module):
    """A ViT's tokens: a learned class token put before the patch tokens, position embeddings
    added, a layer norm and an MLP over the channels, the class token and the mean patch read
    by the head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.randn(1, 10, 8))
        self.norm = nn.LayerNorm(8)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = x + self.fc2(torch.relu(self.fc1(self.norm(x))))
        return self.head(x[:, 0] + x[:, 1:].mean(1))


def test_a_class_token_concatenated_before_the_patches_leaves_the_embedding_prunable() -> None:
    from compressor.testing.outside_check import outside_check, randomize

    shape = (1, 3, 6, 6)
    model = randomize(ClassToken().eval(), shape)
    graph = build_graph(model, input_shape=shape)
    assert [g.name for g in graph.frozen] == ["head"]
    plan = graph.plan_from_counts({"patch": 5, "fc1": 7}, method="t")
    small = slim(model, plan, graph=graph)
    assert small.cls_token.shape == (1, 1, 5) and small.pos_embed.shape == (1, 10, 5)
    assert small.norm.normalized_shape == (5,)
    assert graph.verify(small, plan) < 1e-5
    assert outside_check(model, small, input_shape=shape).ok
    assert graph.cost(plan).macs == count(small, shape).macs
