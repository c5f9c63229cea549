"""EagleEye's candidates on the real channel engine (a tiny net): the paper's sampler is pinned to
the strategies it drew before the guided sampler existed; guided mode starts from the uniform
plan and its local moves stay within the FLOPs tolerance."""

from __future__ import annotations

import pytest

from tests.dist_search_worker import run_tiny_search, tiny_setup

#: (flops, seed, index) -> kept channels, drawn by sample_strategy before the guided sampler (5a732cd)
PINS = {
    (0.5, 3, 0): {"stem.0": 11, "a.0": 9, "c.0": 3},
    (0.5, 3, 1): {"stem.0": 9, "a.0": 10, "c.0": 15},
    (0.5, 3, 5): {"stem.0": 11, "a.0": 8, "c.0": 11},
    (0.3, 0, 2): {"stem.0": 6, "a.0": 10, "c.0": 4},
    (0.7, 7, 4): {"stem.0": 10, "a.0": 13, "c.0": 18},
}


@pytest.mark.parametrize("key", sorted(PINS))
def test_paper_sampler_draws_the_pinned_strategies(key: tuple[float, int, int]) -> None:
    from compressor.methods.eagleeye import sample_strategy

    _, graph, _ = tiny_setup()
    flops, seed, index = key
    assert sample_strategy(graph, flops, seed=seed, index=index).counts == PINS[key]


def test_paper_mode_search_scores_exactly_the_pinned_candidates(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from compressor.io import read_jsonl

    f = tmp_path / "c.jsonl"
    run_tiny_search(candidates=6, sampling="paper", candidates_file=f)
    recs = {int(r["index"]): r["counts"] for r in read_jsonl(f)}
    assert recs[0] == PINS[(0.5, 3, 0)] and recs[1] == PINS[(0.5, 3, 1)] and recs[5] == PINS[(0.5, 3, 5)]


def test_guided_search_has_the_uniform_plan_and_local_moves(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from compressor.io import read_jsonl
    from compressor.methods.l1_uniform import l1_uniform

    _, graph, _ = tiny_setup()
    uniform = l1_uniform(None, graph, flops=0.5)
    f = tmp_path / "c.jsonl"
    plan = run_tiny_search(candidates=8, random_candidates=4, candidates_file=f)
    recs = {int(r["index"]): r for r in read_jsonl(f)}
    assert sorted(recs) == list(range(8))
    assert recs[0]["counts"] == {g: len(k) for g, k in uniform.groups.items()} | {
        g.name: g.size for g in graph.prunable if g.name not in uniform.groups
    }
    # the second half are local moves, not the paper's random draws
    from compressor.methods.eagleeye import sample_strategy

    assert all(recs[i]["counts"] != sample_strategy(graph, 0.5, seed=3, index=i).counts for i in range(4, 8))
    for r in recs.values():
        assert abs(r["flops"] - 0.5) <= 0.01 * 0.5 + 1e-9
    assert plan.info["sampling"] == "guided" and 1 <= plan.info["uniform_rank"] <= 8


@pytest.mark.parametrize("flops", [0.25, 0.5, 0.75])
def test_local_moves_stay_within_the_flops_tolerance(flops: float) -> None:
    from pathlib import Path

    from compressor.checkpoint import load_checkpoint
    from compressor.graph import build_graph
    from compressor.methods.eagleeye import perturb_strategy, sample_strategy, uniform_strategy

    model, meta = load_checkpoint(Path(__file__).parent.parent / "examples" / "resnet_mnist.pt")
    graph = build_graph(model, input_shape=(1, *meta["input_shape"]))
    parents = [uniform_strategy(graph, flops).counts, sample_strategy(graph, flops, seed=1, index=3).counts]
    seen = set()
    for i in range(12):
        s = perturb_strategy(graph, flops, parents[i % 2], seed=0, index=100 + i, sigma=0.1)
        assert abs(s.macs - flops * graph.full.macs) <= 0.01 * flops * graph.full.macs
        assert abs(graph.cost_of_counts(s.counts).macs - s.macs) == 0
        seen.add(tuple(sorted(s.counts.items())))
    assert len(seen) >= 10  # local moves differ from each other
