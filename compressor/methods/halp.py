"""HALP-style pruning (Shen et al., NeurIPS 2022): channel importance per unit of cost saved.

HALP ranks channels by importance and chooses what to keep as a knapsack under a latency budget,
with each channel's latency taken from a lookup table. Here, data-free and deterministic:

1. importance: the L1 norm of each channel's filters (summed over a coupled group's producers),
   divided by its group's mean so groups of different scale compare;
2. cost: the run's budget (:class:`~compressor.methods.spec.CostBudget`): predicted latency
   from the target's latency table (:mod:`compressor.latency`) with ``compress run --latency``,
   else FLOPs;
3. greedy knapsack: from the full model, repeatedly remove the cheapest block of channels, the
   one that loses least importance per unit of cost saved, where a block is the next
   ``multiple`` channels of a group, extended (up to ``lookahead`` blocks) until the cost actually
   drops (latency moves in steps), until the plan meets the budget; then give back single blocks
   while it still does. Channels kept inside a group: the most important. Floor: every group keeps
   at least ``min_keep`` (20%) of its channels, as l1-uniform; with a 5% floor the knapsack cut
   the demo models' costliest groups (the stem, a projection) to one or two channels and lost
   up to 39 points of top-1 against l1-uniform after fine-tuning (docs/search_quality.md). A FLOPs target unreachable
   above the floor is a budget failure (exit 3). A latency budget unreachable above it lets the
   floor give way (down to one step per group) rather than miss: latency moves in the runtime's
   channel steps, so a group at its 20% floor can cost what the whole group costs (4 of 16
   channels on a 16-channel block), and the budget is the deploy requirement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from compressor.errors import UsageError
from compressor.methods import check_flops, register_method
from compressor.methods.floor import require_reachable
from compressor.methods.spec import CostBudget, MethodContext, MethodSpec, flops_budget, option
from compressor.plan import Plan


@dataclass(frozen=True)
class HalpOptions:
    multiple: int = option(1, "Remove channels in blocks of this multiple (the target's channel multiple).")
    lookahead: int = option(4, "Most blocks removed at once to reach a step where the cost drops.")
    min_keep: float = option(
        0.2,
        "Smallest fraction of a group's channels kept (the floor, as l1-uniform's: the knapsack sees each "
        "channel's importance, not that a layer left with a few channels is a bottleneck).",
    )

    def __post_init__(self) -> None:
        if self.multiple < 1:
            raise UsageError(f"--multiple {self.multiple} must be at least 1")
        if self.lookahead < 1:
            raise UsageError(f"lookahead {self.lookahead} must be at least 1")
        if not 0.0 < self.min_keep <= 1.0:
            raise UsageError(f"min_keep {self.min_keep} must be in (0, 1]")


def _importance(graph: Any) -> dict[str, np.ndarray]:
    """Per group, its channels' L1 importance sorted high to low, over the group's mean."""
    out = {}
    for name, v in graph.importance().items():
        v = np.sort(np.asarray(v, dtype=np.float64))[::-1]
        out[name] = v / max(float(v.mean()), 1e-12)
    return out


def _best_move(
    counts: dict[str, int], budget: CostBudget, imp: dict[str, np.ndarray], floor: dict[str, int],
    step: dict[str, int], lookahead: int, cur: float,
) -> tuple[str, int] | None:  # fmt: skip
    """(group, new count) of the removal losing least importance per unit of cost saved."""
    best: tuple[float, str, int] | None = None
    for g, k in counts.items():
        for n in range(1, lookahead + 1):
            new = k - n * step[g]
            if new < floor[g]:
                break
            saved = cur - budget.cost({**counts, g: new})
            if saved > 1e-9:
                lost = float(imp[g][new:k].sum())
                key = lost / saved
                if best is None or key < best[0]:
                    best = (key, g, new)
                break
    return None if best is None else (best[1], best[2])


def greedy_counts(graph: Any, budget: CostBudget, options: HalpOptions) -> tuple[dict[str, int], float, bool]:
    """Kept counts per prunable group meeting ``budget`` by the greedy knapsack, their cost, and
    whether the floor gave way (a latency budget unreachable above ``min_keep``: the knapsack
    then goes on down to one step per group)."""
    from compressor.latency import refine_under

    imp = _importance(graph)
    sizes = {g.name: int(g.size) for g in graph.prunable}
    m = options.multiple
    step = {g: (m if m > 1 and s >= 2 * m else 1) for g, s in sizes.items()}
    floor = {g: max(step[g], int(np.ceil(options.min_keep * s))) for g, s in sizes.items()}
    counts = dict(sizes)
    cur = float(budget.cost(counts))
    relaxed = False
    while cur > budget.fraction:
        move = _best_move(counts, budget, imp, floor, step, options.lookahead, cur)
        if move is None and budget.kind != "flops" and floor != step:
            # a latency budget the floor keeps out of reach: the floor gives way to one step
            floor, relaxed = dict(step), True
            continue
        if move is None:
            break
        counts[move[0]] = move[1]
        cur = float(budget.cost(counts))
    if cur <= budget.fraction:
        counts = refine_under(counts, budget.cost, budget.fraction, sizes, m)
        counts = budget.snapped(counts)  # channels that cost nothing (up to the runtime's next step)
        cur = float(budget.cost(counts))
    return counts, cur, relaxed


def search(
    model: Any,
    graph: Any,
    *,
    flops: float | None,
    data: Any,
    seed: int,
    options: HalpOptions,
    context: MethodContext,
) -> Plan:
    """Greedy knapsack of channel importance under the run's budget (predicted latency, else FLOPs)."""
    del model, data
    budget = context.budget
    if budget is None:
        check_flops(flops)
        budget = flops_budget(graph, 0.5 if flops is None else float(flops))
    if budget.kind == "flops" and options.min_keep < 1.0:  # an unreachable target fails at once
        require_reachable(graph, budget.fraction, 1.0 - options.min_keep, "halp")
    counts, reached, relaxed = greedy_counts(graph, budget, options)
    full = float(graph.full.macs)
    achieved = graph.cost_of_counts(counts).macs / full
    info: dict[str, Any] = {
        "budget": {"kind": budget.kind, "fraction": budget.fraction, "reached": reached},
        "flops": achieved,
        "met": reached <= budget.fraction * (1 + 1e-6),
        "floor_relaxed": relaxed,
    }
    return graph.plan_from_counts(
        counts,
        method="halp",
        seed=seed,
        flops_target=budget.fraction if budget.kind == "flops" else None,
        **info,
    )


def describe(info: Mapping[str, Any]) -> str:
    """The report's search summary."""
    b = info.get("budget") or {}
    if not b:
        return ""
    relaxed = ", below its min_keep floor to meet it" if info.get("floor_relaxed") else ""
    return (
        f", greedy knapsack of L1 importance per unit of {b.get('kind')} saved "
        f"(reached {b.get('reached', 0):.3f}{relaxed})"
    )


halp = register_method(
    MethodSpec(
        name="halp",
        search=search,
        options=HalpOptions,
        summary="channel importance per unit of predicted latency saved, greedy knapsack (no data)",
        describe=describe,
    )
)
