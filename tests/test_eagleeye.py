"""EagleEye: strategy sampling (deterministic, FLOPs-corrected, random shape) and the search."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from compressor.errors import BudgetError, UsageError
from compressor.methods.eagleeye import default_ratio_max, sample_strategy


# ---- a fake channel graph of a plain conv chain, obeying the ChannelGraph contract --------------
@dataclass
class _Group:
    name: str
    size: int
    frozen: bool = False


@dataclass
class _Cost:
    macs: int
    params: int


class ChainGraph:
    """Convs 3x3 of the given widths on an 8x8 map; every output but the last is a group."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 24, 48, 10), frozen: tuple[str, ...] = ()) -> None:
        self.widths = widths
        self.groups = [_Group(f"g{i}", w, f"g{i}" in frozen) for i, w in enumerate(widths[:-1])]
        self.prunable = [g for g in self.groups if not g.frozen]
        self.full = self.cost_of_counts({})

    def cost_of_counts(self, counts: dict[str, int]) -> _Cost:
        w = [3] + [counts.get(f"g{i}", n) for i, n in enumerate(self.widths[:-1])] + [self.widths[-1]]
        macs = sum(a * b * 9 * 64 for a, b in zip(w[:-1], w[1:], strict=True))
        params = sum(a * b * 9 for a, b in zip(w[:-1], w[1:], strict=True))
        return _Cost(macs, params)

    def _counts(self, s: float, shape: dict[str, float], multiple: int) -> dict[str, int]:
        out = {}
        for g in self.prunable:
            keep = g.size - math.floor(min(s * shape[g.name], 1.0) * g.size)
            keep = max(multiple, int(round(keep / multiple)) * multiple) if multiple > 1 else max(1, keep)
            out[g.name] = min(keep, g.size)
        return out

    def counts_for_flops(self, fraction: float, shape: dict[str, float] | None = None, *, multiple: int = 1):
        shape = shape or {g.name: 1.0 for g in self.prunable}
        lo, hi = 0.0, 1.0 / max(min(shape.values()), 1e-6)
        target = fraction * self.full.macs
        for _ in range(60):
            mid = (lo + hi) / 2
            if self.cost_of_counts(self._counts(mid, shape, multiple)).macs > target:
                lo = mid
            else:
                hi = mid
        return self._counts(hi, shape, multiple)


def test_default_ratio_max_follows_the_official_settings() -> None:
    assert default_ratio_max(0.5) == pytest.approx(0.7)
    assert default_ratio_max(0.75) == pytest.approx(0.4)
    assert default_ratio_max(0.25) == pytest.approx(0.8)
    assert 0.4 < default_ratio_max(0.6) < 0.7
    assert default_ratio_max(0.1) == pytest.approx(0.8) and default_ratio_max(0.9) == pytest.approx(0.4)


def test_strategies_are_deterministic_given_seed_and_index() -> None:
    g = ChainGraph()
    a = sample_strategy(g, 0.5, seed=3, index=7)
    b = sample_strategy(g, 0.5, seed=3, index=7)
    assert a.counts == b.counts and a.drawn == b.drawn
    others = {tuple(sample_strategy(g, 0.5, seed=3, index=i).counts.values()) for i in range(10)}
    assert len(others) >= 8
    assert sample_strategy(g, 0.5, seed=4, index=7).drawn != a.drawn


@pytest.mark.parametrize("flops", [0.3, 0.5, 0.75])
def test_every_strategy_hits_the_flops_target(flops: float) -> None:
    g = ChainGraph()
    R = default_ratio_max(flops)
    for i in range(25):
        s = sample_strategy(g, flops, seed=0, index=i, tolerance=0.01)
        assert abs(s.flops - flops) <= 0.01 * flops
        assert s.macs == g.cost_of_counts(s.counts).macs
        assert all(1 <= s.counts[x.name] <= x.size for x in g.prunable)
        assert all(0.0 <= r <= R for r in s.drawn.values())
        assert s.attempts <= 3


def test_shape_is_random_not_uniform() -> None:
    g = ChainGraph(widths=(64, 64, 64, 64, 10))
    spreads = [np.std(list(sample_strategy(g, 0.5, seed=0, index=i).ratios().values())) for i in range(10)]
    assert np.mean(spreads) > 0.05
    # and the correction keeps the drawn ordering (one shared scale): more drawn -> more pruned
    s = sample_strategy(g, 0.5, seed=0, index=1)
    order = sorted(s.drawn, key=s.drawn.get)
    removed = [s.ratios()[k] for k in order]
    assert removed == sorted(removed)


def test_channel_multiple_and_tight_tolerance() -> None:
    g = ChainGraph(widths=(64, 96, 128, 64, 10))
    s = sample_strategy(g, 0.5, seed=1, index=0, multiple=8, tolerance=0.02)
    assert all(c % 8 == 0 for c in s.counts.values())
    assert abs(s.flops - 0.5) <= 0.01
    t = sample_strategy(g, 0.5, seed=1, index=0, tolerance=0.001)
    assert abs(t.flops - 0.5) <= 0.0005


def test_unreachable_targets_and_bad_options_are_errors() -> None:
    with pytest.raises(BudgetError, match="no prunable"):
        sample_strategy(ChainGraph(frozen=("g0", "g1", "g2", "g3")), 0.5)
    with pytest.raises(UsageError):
        sample_strategy(ChainGraph(), 0.5, ratio_max=1.5)
    with pytest.raises(UsageError):
        sample_strategy(ChainGraph(), 0.5, seed=-1)
    with pytest.raises(BudgetError, match="FLOPs target"):
        sample_strategy(ChainGraph(frozen=("g1", "g2", "g3")), 0.05, max_attempts=2)
