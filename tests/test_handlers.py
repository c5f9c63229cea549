"""Every registered layer handler slims equal to the masked original; the handler API itself."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn as nn

from compressor.graph import (
    CostTerm,
    LabelState,
    ModuleRecord,
    build_graph,
    count,
    handler_for,
    kept_positions,
    register_handler,
    registered_types,
    slim,
    unregister_handler,
)

# Input shape per spatial rank (0: features only, for Linear / LayerNorm).
SHAPES = {0: (2, 3), 1: (2, 3, 8), 2: (2, 3, 8, 8), 3: (2, 3, 4, 4, 4)}
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _producer(d: int, cin: int, cout: int) -> nn.Module:
    return nn.Linear(cin, cout) if d == 0 else CONV[d](cin, cout, 1)


def _sandwich(d: int, m: nn.Module, cout: int = 8, head: nn.Module | None = None) -> nn.Module:
    """stem (3 -> 8 channels) -> ``m`` -> head: ``m``'s channels are inner, hence prunable."""
    return nn.Sequential(_producer(d, 3, 8), m, head if head is not None else _producer(d, cout, 4))


# (module type) -> (rank, net factory, whether the module itself must come out narrower)
Case = tuple[int, Callable[[], nn.Module], bool]
CASES: dict[type[nn.Module], Case] = {}
for _d in (1, 2, 3):
    CASES[CONV[_d]] = (_d, lambda d=_d: _sandwich(d, CONV[d](8, 6, 3, padding=1), cout=6), True)
    CASES[CONVT[_d]] = (_d, lambda d=_d: _sandwich(d, CONVT[d](8, 6, 3, padding=1), cout=6), True)
    _bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[_d]
    CASES[_bn] = (_d, lambda bn=_bn, d=_d: _sandwich(d, bn(8)), True)
    _in = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[_d]
    CASES[_in] = (_d, lambda i=_in, d=_d: _sandwich(d, i(8, affine=True)), True)
CASES[nn.SyncBatchNorm] = (2, lambda: _sandwich(2, nn.SyncBatchNorm(8)), True)
CASES[nn.Linear] = (0, lambda: _sandwich(0, nn.Linear(8, 6), cout=6), True)
CASES[nn.GroupNorm] = (2, lambda: _sandwich(2, nn.GroupNorm(4, 8)), True)
CASES[nn.LayerNorm] = (0, lambda: _sandwich(0, nn.LayerNorm(8)), True)
CASES[nn.PReLU] = (2, lambda: _sandwich(2, nn.PReLU(8)), True)
CASES[nn.Threshold] = (2, lambda: _sandwich(2, nn.Threshold(0.1, -0.5)), False)
CASES[nn.Flatten] = (2, lambda: _sandwich(2, nn.Flatten(), head=nn.Linear(8 * 64, 4)), False)
# Unflatten reshapes to literal sizes: the channels through it freeze, the stem's still prune
CASES[nn.Unflatten] = (
    1,
    lambda: nn.Sequential(
        nn.Conv1d(3, 8, 1), nn.ReLU(), nn.Conv1d(8, 8, 1), nn.Unflatten(2, (2, 4)), nn.Conv2d(8, 4, 1)
    ),
    False,
)
CASES[nn.ChannelShuffle] = (2, lambda: _sandwich(2, nn.ChannelShuffle(2)), False)
CASES[nn.Softmax] = (2, lambda: _sandwich(2, nn.Softmax(dim=-1)), False)
CASES[nn.LogSoftmax] = (2, lambda: _sandwich(2, nn.LogSoftmax(dim=-1)), False)
CASES[nn.Upsample] = (2, lambda: _sandwich(2, nn.Upsample(scale_factor=2)), False)
CASES[nn.UpsamplingNearest2d] = (2, lambda: _sandwich(2, nn.UpsamplingNearest2d(scale_factor=2)), False)
CASES[nn.UpsamplingBilinear2d] = (2, lambda: _sandwich(2, nn.UpsamplingBilinear2d(scale_factor=2)), False)
for _name, _arg in (
    ("MaxPool", 2),
    ("AvgPool", 2),
    ("AdaptiveAvgPool", 2),
    ("AdaptiveMaxPool", 2),
    ("LPPool", None),
    ("ZeroPad", 1),
    ("ConstantPad", None),
    ("ReflectionPad", 1),
    ("ReplicationPad", 1),
):
    for _d in (1, 2, 3):
        _t = getattr(nn, f"{_name}{_d}d", None)
        if _t is None:
            continue
        if _name == "LPPool":
            _make: Callable[[], nn.Module] = lambda t=_t: t(2, 2)  # noqa: E731
        elif _name == "ConstantPad":
            _make = lambda t=_t: t(1, 0.5)  # noqa: E731
        else:
            _make = lambda t=_t, a=_arg: t(a)  # noqa: E731
        CASES[_t] = (_d, lambda d=_d, make=_make: _sandwich(d, make()), False)


def _case(t: type[nn.Module]) -> Case:
    """The test net for ``t``; parameter-free elementwise modules go between two 1x1 convs."""
    if t in CASES:
        return CASES[t]
    h = handler_for(t())
    assert h is not None and h.slim_fn is None, f"add a test net for {t.__name__} to CASES"
    d = int(t.__name__[-2]) if t.__name__[-2:] in ("1d", "3d") else 2
    return (d, lambda: _sandwich(d, t()), False)


def _randomize(model: nn.Module, seed: int) -> None:
    """Weights and statistics far from their defaults, so that every slicing mistake shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if name.endswith("weight") else 1.0))
            if name.endswith("weight") and p.dim() == 1:
                p.add_(1.5)  # norm scales and PReLU slopes: positive, unequal
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def _pruned_pair(t: type[nn.Module]) -> tuple[nn.Module, object, object, tuple[int, ...], nn.Module]:
    """(graph, plan, plan keeping other channels in the same counts, input shape, slim model)."""
    d, make, _ = _case(t)
    model = make().eval()
    _randomize(model, seed=len(t.__name__))
    shape = SHAPES[d]
    graph = build_graph(model, input_shape=shape)
    assert graph.prunable, f"{t.__name__}: nothing to prune in its test net"
    rng = np.random.default_rng(0)
    counts = {g.name: max(1, g.size // 2) for g in graph.prunable}
    imp = {g.name: rng.random(g.size) for g in graph.prunable}
    plan = graph.plan_from_counts(counts, method="test", importance=imp)
    other = graph.plan_from_counts(counts, method="test", importance={k: -v for k, v in imp.items()})
    return graph, plan, other, shape, slim(model, plan, graph=graph)


@pytest.mark.parametrize("module_type", registered_types(), ids=lambda t: t.__name__)
def test_every_handler_slims_equal_to_masked_original(module_type: type[nn.Module]) -> None:
    graph, plan, other, shape, small = _pruned_pair(module_type)
    x = torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(1))
    ref = graph.masked_forward(plan, x)
    got = small(x)
    assert (ref != 0).all(), "the masked original's outputs must be non-zero for the check to mean much"
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert graph.verify(small, plan) < 1e-4
    assert count(small, graph.input_shape).macs == graph.cost(plan).macs
    assert sum(p.numel() for p in small.parameters()) == graph.cost(plan).params
    # the handled module really was cut where the test expects it
    if _case(module_type)[2]:
        orig_m, slim_m = graph.model[1], small[1]
        assert sum(p.numel() for p in slim_m.parameters()) < sum(p.numel() for p in orig_m.parameters())
    # the check is not vacuous: the same widths keeping other channels fail it
    assert graph.verify(small, other) > 1e-2


@pytest.mark.parametrize("module_type", [nn.Conv2d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm])
def test_broken_slim_hook_is_caught(module_type: type[nn.Module]) -> None:
    """A slim hook that keeps the wrong channels yields a model the equivalence check rejects."""
    h = handler_for(_case(module_type)[1]()[1])
    assert h is not None and h.slim_fn is not None
    good = h.slim_fn

    def shuffled(m: nn.Module, rec: ModuleRecord, keep: torch.Tensor) -> None:
        good(m, rec, keep)
        for p in m.parameters(recurse=False):  # keep the widths, scramble which channel is which
            with torch.no_grad():
                p.copy_(p.flip(0))

    register_handler(
        module_type,
        propagate=h.propagate_fn,
        slim=shuffled,
        cost=h.cost_fn,
        filters=h.filters_fn,
        masked_forward=h.masked_forward_fn,
        replace=True,
    )
    try:
        graph, plan, _, _, small = _pruned_pair(module_type)
        assert graph.verify(small, plan) > 1e-2
    finally:
        register_handler(
            module_type,
            propagate=h.propagate_fn,
            slim=h.slim_fn,
            cost=h.cost_fn,
            filters=h.filters_fn,
            masked_forward=h.masked_forward_fn,
            replace=True,
        )
    assert handler_for(_case(module_type)[1]()[1]) == h


class Scale(nn.Module):
    """A per-channel scale: a layer type the engine does not know until a handler is registered."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s.view(1, -1, 1, 1)


def _prop_scale(
    st: LabelState, name: str, m: nn.Module, ids_in: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    rec = st.record(name, "scale")
    rec.labels = st.channel_labels(ids_in, 1, name)
    return ids_in


def _slim_scale(m: nn.Module, rec: ModuleRecord, keep: torch.Tensor) -> None:
    assert rec.labels is not None and isinstance(m, Scale)
    m.s = nn.Parameter(m.s.detach()[kept_positions(rec.labels, keep)].clone())


def _cost_scale(m: nn.Module, rec: ModuleRecord) -> list[CostTerm]:
    assert rec.labels is not None and isinstance(m, Scale)
    return [CostTerm(0, m.s.numel(), (rec.labels,))]


def test_register_handler_plugs_in_a_new_layer_type() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), Scale(8), nn.Conv2d(8, 4, 1)).eval()
    register_handler(Scale, propagate=_prop_scale, slim=_slim_scale, cost=_cost_scale)
    try:
        graph = build_graph(model, input_shape=(1, 3, 8, 8))
        assert graph.records["1"].kind == "scale"  # a leaf with its own record, not traced through
        plan = graph.plan_from_counts({g.name: 3 for g in graph.prunable}, method="t")
        small = slim(model, plan, graph=graph)
        assert small[1].s.shape == (3,)
        assert graph.verify(small, plan) < 1e-5
        assert sum(p.numel() for p in small.parameters()) == graph.cost(plan).params
        with pytest.raises(ValueError, match="already registered"):
            register_handler(Scale, propagate=_prop_scale)
    finally:
        unregister_handler(Scale)
    assert handler_for(Scale(2)) is None


def test_register_handler_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_handler(int, propagate=_prop_scale)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="propagate must be callable"):
        register_handler(Scale, propagate=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="slim must be callable"):
        register_handler(Scale, propagate=_prop_scale, slim=3)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="no channel handler"):
        unregister_handler(Scale)
