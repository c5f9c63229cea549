"""EagleEye: strategy sampling (deterministic, FLOPs-corrected, random shape) and the search."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn

from compressor.errors import BudgetError, UsageError
from compressor.methods.eagleeye import default_ratio_max, sample_strategy


# ---- a real channel graph of a plain conv chain (the engine, not a re-implementation) -----------
def ChainGraph(widths: tuple[int, ...] = (16, 32, 24, 48, 10)) -> Any:  # noqa: N802 - reads as the old fake
    """The real channel graph of 3x3 convs (ReLU between) of the given widths on an 8x8 map: every
    output but the last (the network output) is a prunable group, named by the engine."""
    from compressor.graph import build_graph

    layers: list[nn.Module] = []
    for a, b in zip((3, *widths[:-1]), widths, strict=True):
        layers += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU()]
    torch.manual_seed(0)
    return build_graph(nn.Sequential(*layers[:-1]).eval(), input_shape=(1, 3, 8, 8))


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
        sample_strategy(ChainGraph(widths=(10,)), 0.5)  # the only conv is the output
    with pytest.raises(UsageError, match=r"outside \(0, 1\]"):
        sample_strategy(ChainGraph(), 0.5, ratio_max=1.5)
    with pytest.raises(UsageError, match="seed"):
        sample_strategy(ChainGraph(), 0.5, seed=-1)
    with pytest.raises(BudgetError, match="FLOPs target"):  # one group of 16: at best 13/208 of the FLOPs
        sample_strategy(ChainGraph(widths=(16, 10)), 0.05, max_attempts=2)


# ---- the method on the real channel graph (tiny net, synthetic data) ------------------------------
def _fixtures():  # type: ignore[no-untyped-def]
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "dist_search_worker", Path(__file__).parent / "dist_search_worker.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Guarded:
    """A DataBundle whose test split and augmented train split must not be touched by a search."""

    def __init__(self, data) -> None:  # type: ignore[no-untyped-def]
        self._d = data
        self.name, self.train_eval, self.val = data.name, data.train_eval, data.val

    @property
    def test(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the search read the test split")

    @property
    def train(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the search calibrated on augmented images")


def test_search_returns_a_plan_at_the_flops_target(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from compressor.graph import slim
    from compressor.io import read_jsonl
    from compressor.methods.eagleeye import eagleeye

    fx = _fixtures()
    model, graph, data = fx.tiny_setup()
    f = tmp_path / "c.jsonl"
    plan = eagleeye(
        model,
        graph,
        flops=0.5,
        data=_Guarded(data),
        seed=3,
        candidates=5,
        top_k=1,  # the finalists' fine-tunes train on data.train (the next test); the scoring must not
        calib_batches=2,
        batch_size=16,
        device="cpu",
        progress=False,
        candidates_file=f,
    )
    assert plan.method == "eagleeye" and plan.seed == 3 and plan.flops_target == 0.5
    assert set(plan.groups) <= {g.name for g in graph.prunable}
    assert abs(graph.cost(plan).macs / graph.full.macs - 0.5) <= 0.005
    recs = read_jsonl(f)
    assert [r["index"] for r in recs] == list(range(5))
    for r in recs:
        assert {"index", "ratios", "flops", "params", "score", "seconds"} <= set(r)
        assert abs(r["flops"] - 0.5) <= 0.005 and 0.0 <= r["score"] <= 100.0
    best = max(recs, key=lambda r: (r["score"], -r["index"]))
    assert plan.info["candidate"] == best["index"] and plan.info["score"] == best["score"]
    for g, c in best["counts"].items():
        assert (len(plan.groups[g]) if g in plan.groups else graph.group(g).size) == c
    # the plan applies and the slimmed net runs
    import torch

    out = slim(model, plan, graph=graph)(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 4)


def test_search_is_deterministic_and_resumes_to_the_same_plan(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from compressor.io import read_jsonl

    fx = _fixtures()
    a = fx.run_tiny_search(candidates=6)
    f = tmp_path / "c.jsonl"
    fx.run_tiny_search(candidates=3, candidates_file=f)
    assert len(read_jsonl(f)) == 3
    b = fx.run_tiny_search(candidates=6, candidates_file=f)
    assert len(read_jsonl(f)) == 6 and b.info["candidates_resumed"] == 3
    assert a.groups == b.groups and a.info["candidate"] == b.info["candidate"]


def test_top_k_finetune_picks_the_best_after_finetuning() -> None:
    fx = _fixtures()
    plan = fx.run_tiny_search(candidates=4, top_k=2, top_k_rule="best", finetune_epochs=1)
    ft = plan.info["finetuned"]
    assert len(ft) == 2
    best = max(ft, key=lambda r: (r["finetuned"], -r["index"]))
    assert plan.info["candidate"] == best["index"]


def test_search_needs_data_and_a_flops_target() -> None:
    from compressor.methods.eagleeye import eagleeye

    fx = _fixtures()
    model, graph, data = fx.tiny_setup()
    with pytest.raises(UsageError, match="--data"):
        eagleeye(model, graph, flops=0.5, data=None, candidates=1, progress=False)
    with pytest.raises(UsageError, match="--flops"):
        eagleeye(model, graph, flops=None, data=data, candidates=1, progress=False)
    with pytest.raises(UsageError):
        eagleeye(model, graph, flops=0.5, data=data, candidates=1, calib_batches=0, progress=False)
