"""The baseline: every prunable group pruned by the same ratio, L1-ranked channels.

The shared ratio is found by bisection so the slimmed model keeps the requested fraction of
MACs (within the cost model's precision, verified against the ground-truth counter in tests).
Data-free and deterministic: the data a run hands it is ignored.

Floor: no group is cut below ``1 - max_ratio`` of its channels (default: every group keeps at
least 20%). When the target cannot be reached above that floor (most channels frozen, so the
few prunable groups would have to be gutted), the search fails with a budget error (exit 3)
saying what was reached, instead of returning a model that silently kept most of its FLOPs: a
miss of more than 0.02 that deeper cuts would fix, or any miss of more than 0.1. A small miss
only because widths round to the channel multiple is not one: the plan records the FLOPs it
reaches and the run's budget check reports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compressor.errors import BudgetError, UsageError
from compressor.methods import register_method
from compressor.methods.spec import MethodContext, MethodSpec, option
from compressor.plan import Plan


@dataclass(frozen=True)
class L1UniformOptions:
    multiple: int = option(1, "Round kept widths to this channel multiple (1 = no rounding).")
    max_ratio: float = option(
        0.8, "Largest share of any group's channels that may be cut (the floor keeps the rest)."
    )

    def __post_init__(self) -> None:
        if self.multiple < 1:
            raise UsageError(f"--multiple {self.multiple} must be at least 1")
        if not 0.0 < self.max_ratio < 1.0:
            raise UsageError(
                f"max_ratio {self.max_ratio} is outside (0, 1): it is the largest share of a group's "
                "channels that may be cut"
            )


#: how far above the FLOPs target a plan may land before it is a budget failure
TOLERANCE = 0.02


def _floor_binds(graph: Any, fraction: float, achieved: float, options: L1UniformOptions) -> bool:
    """Whether a miss of the target is a budget failure: more than ``GROSS_MISS`` above it
    whatever the cause (frozen channels), or a smaller miss that cuts below the floor would fix
    (not one that only the channel multiple's rounding causes)."""
    if achieved > fraction + GROSS_MISS:
        return True
    deep = graph.counts_for_flops(fraction, multiple=options.multiple, max_ratio=0.95)
    deeper = graph.cost_of_counts(deep).macs / graph.full.macs
    return deeper < achieved - TOLERANCE


#: a miss this far above the target is always a budget failure
GROSS_MISS = 0.1


def search(
    model: Any,
    graph: Any,
    *,
    flops: float | None,
    data: Any,
    seed: int,
    options: L1UniformOptions,
    context: MethodContext,
) -> Plan:
    """Prune every prunable group by one ratio so that ``flops`` of the MACs remain (0.5 if None)."""
    del model, data
    budget = context.budget if context is not None else None
    if budget is not None and budget.kind != "flops":  # one ratio meeting another cost (latency)
        from compressor.latency import counts_for_cost

        counts = counts_for_cost(graph, budget.cost, budget.fraction, multiple=options.multiple)
        counts = budget.snapped(counts)  # channels that cost nothing (up to the runtime's next step)
        achieved = graph.cost_of_counts(counts).macs / graph.full.macs
        return graph.plan_from_counts(
            counts, method="l1-uniform", seed=seed, flops_achieved=achieved, multiple=options.multiple,
            budget={"kind": budget.kind, "fraction": budget.fraction, "reached": budget.cost(counts)},
        )  # fmt: skip
    fraction = 0.5 if flops is None else float(flops)
    if budget is not None:
        fraction = budget.fraction
    if not graph.prunable and fraction < 1.0:
        raise BudgetError(
            "the model has no prunable channel group (every group is frozen), so no FLOPs target below 1 "
            "can be met; see 'compress profile' for why each group is frozen"
        )
    counts = graph.counts_for_flops(fraction, multiple=options.multiple, max_ratio=options.max_ratio)
    achieved = graph.cost_of_counts(counts).macs / graph.full.macs
    if achieved > fraction + TOLERANCE and _floor_binds(graph, fraction, achieved, options):
        frozen = sum(g.size for g in graph.frozen)
        total = sum(g.size for g in graph.groups) or 1
        raise BudgetError(
            f"l1-uniform reached {achieved:.3f} of the FLOPs, not the target {fraction:g} (+-{TOLERANCE}): "
            f"every prunable group is already cut to its floor ({1 - options.max_ratio:.0%} of its channels "
            f"kept) and {frozen / total:.0%} of the channels are frozen; see 'compress profile' for why, "
            "or allow deeper cuts with --option max_ratio=R"
        )
    return graph.plan_from_counts(
        counts,
        method="l1-uniform",
        seed=seed,
        flops_target=fraction,
        flops_achieved=achieved,
        multiple=options.multiple,
    )


l1_uniform = register_method(
    MethodSpec(
        name="l1-uniform",
        search=search,
        options=L1UniformOptions,
        summary="the baseline: one pruning ratio for every group, channels ranked by L1 norm (no data)",
    )
)
