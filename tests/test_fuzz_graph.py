"""The channel graph against random small CNNs (compressor.testing.fuzz): slimmed == masked original, or frozen.

A failure prints the seed and the generated source; reproduce with
``python -c "from compressor.testing.fuzz import reproduce; print(reproduce(SEED))"``.
Many more networks: ``python benchmarks/fuzz_graph.py`` (1,000).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

from compressor.plan import Plan
from compressor.testing.fuzz import INPUT_SHAPE, build_net, check_net, net_source

DEFAULT_SEEDS = list(range(24))


def _ops(seed: int) -> list[str]:
    return net_source(seed).splitlines()[0].split("Ops: ")[1].rstrip('."').split(", ")


# -- the generator ---------------------------------------------------------------------------------
def test_generator_is_deterministic() -> None:
    assert net_source(5) == net_source(5)
    assert net_source(5) != net_source(6)
    a, b = build_net(5), build_net(5)
    x = torch.randn(2, *INPUT_SHAPE[1:])
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    # The global RNG is left alone (the generator forks it).
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_net(9)
    assert torch.equal(torch.rand(3), expected)


def test_generated_nets_run_and_trace() -> None:
    x = torch.randn(2, *INPUT_SHAPE[1:])
    for seed in range(40):
        net = build_net(seed)
        assert not net.training
        with torch.no_grad():
            y = net(x)
            assert y.ndim == 2 and y.shape[0] == 2 and torch.isfinite(y).all(), seed
            gm = fx.symbolic_trace(net)
            assert torch.allclose(gm(x), y, atol=1e-6), seed


def test_generator_covers_the_topologies() -> None:
    seen: Counter[str] = Counter()
    for seed in range(200):
        seen.update(_ops(seed))
    for op in (
        "residual",
        "concat",
        "split",
        "depthwise",
        "grouped",
        "se",
        "pool",
        "bn",
        "add_earlier",
        "shuffle_unit",
    ):
        assert seen[op] >= 10, (op, seen[op])
    for head in ("head:gap", "head:flatten", "head:mlp", "head:conv"):
        assert seen[head] >= 5, (head, seen[head])
    unusual = {k for k in seen if k.startswith("unusual:")}
    assert len(unusual) >= 15, sorted(unusual)
    src = "\n".join(net_source(s) for s in range(200))
    for pattern in (
        "groups=",
        "torch.cat(",
        "torch.split(",
        "chunk(",
        "torch.sigmoid(",
        "nn.Linear(",
        "torch.flatten(",
    ):
        assert pattern in src, pattern


def test_bn_statistics_are_not_trivial() -> None:
    """Slimming the wrong BN channels must be visible: every channel has its own statistics."""
    net = build_net(1)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        assert bn.running_var.unique().numel() == bn.num_features
        assert bn.weight.unique().numel() == bn.num_features


# -- the engine under fuzz ------------------------------------------------------------------------
def _describe(seed: int, res: object) -> str:
    return f"seed {seed} failed: {res}\n--- reproduction ---\n{net_source(seed)}"


@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
def test_fuzz_slimmed_equals_masked_original(seed: int) -> None:
    res = check_net(seed, plans=3)
    assert res.traced, _describe(seed, res.failures)
    assert res.ok, _describe(seed, res.failures)
    if res.n_prunable:
        assert res.plans_verified >= 1


def test_fuzz_most_nets_have_prunable_groups() -> None:
    """The fuzzer is only useful if the engine prunes most of what it generates."""
    results = [check_net(s, plans=1) for s in range(30, 45)]
    assert sum(r.n_prunable > 0 for r in results) >= 10
    assert sum(r.plans_verified for r in results) >= 10


def test_verify_is_not_vacuous() -> None:
    """A slimmed model with one wrong weight must be reported by graph.verify."""
    from compressor.graph import build_graph, slim

    checked = 0
    for seed in range(60):
        net = build_net(seed)
        graph = build_graph(net, input_shape=INPUT_SHAPE)
        if not graph.prunable:
            continue
        rng = random.Random(seed)
        g = graph.prunable[0]
        kept = sorted(rng.sample(range(g.size), max(1, g.size // 2)))
        plan = Plan(
            method="fuzz", groups={g.name: kept}, group_sizes={g.name: g.size}, input_shape=list(INPUT_SHAPE)
        )
        small = slim(net, plan, graph=graph)
        x = torch.randn(2, *INPUT_SHAPE[1:])
        assert graph.verify(small, plan, inputs=[x]) < 1e-4  # relative to the output scale already
        last = [m for m in small.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None][
            -1
        ]
        with torch.no_grad():
            last.bias.add_(
                0.5
            )  # the classifier's bias: shifts the output by 0.5 (a mean over pixels keeps it)
        assert graph.verify(small, plan, inputs=[x]) > 1e-2, seed  # 100x the tolerance
        checked += 1
        if checked == 3:
            break
    assert checked == 3


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(10))
def test_fuzz_many(chunk: int) -> None:
    bad = []
    for seed in range(100 + chunk * 30, 100 + (chunk + 1) * 30):
        res = check_net(seed, plans=3)
        if not res.ok:
            bad.append((seed, [f.kind for f in res.failures]))
    assert not bad, bad


# -- minimal reproductions of what the fuzzer found --------------------------------------------
class CatDepthwise(nn.Module):
    """Two producers concatenated into a depthwise conv: one group spans both (fuzz seeds 33, 47...)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dw(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))


class CatGrouped(nn.Module):
    """Two producers concatenated into a grouped conv whose conv-groups are the producers (seed 9)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.g = nn.Conv2d(8, 4, 1, groups=2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.g(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))


@pytest.mark.parametrize("cls", [CatDepthwise, CatGrouped])
def test_a_plan_never_empties_one_producer_of_a_group(cls: type[nn.Module]) -> None:
    """Keeping one channel of a group that spans two producers: refused (UsageError) or exact."""
    from compressor.errors import UsageError
    from compressor.graph import build_graph, count, slim

    torch.manual_seed(0)
    model = cls().eval()
    graph = build_graph(model, input_shape=INPUT_SHAPE)
    x = torch.randn(2, *INPUT_SHAPE[1:])
    checked = 0
    for g in graph.prunable:
        for i in range(g.size):
            plan = Plan(method="test", groups={g.name: [i]}, group_sizes={g.name: g.size})
            try:
                small = slim(model, plan, graph=graph)
            except UsageError:
                continue  # refusing the plan, with a message, is fine
            assert all(0 not in p.shape for p in small.parameters()), (g.name, i, small)
            assert graph.verify(small, plan, inputs=[x]) < 1e-5, (g.name, i)
            assert graph.cost(plan).macs == count(small, INPUT_SHAPE).macs, (g.name, i)
            checked += 1
    assert graph.prunable
