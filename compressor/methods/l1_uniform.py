"""The baseline: every prunable group pruned by the same ratio, L1-ranked channels.

The shared ratio is found by bisection so the slimmed model keeps the requested fraction of
MACs (within the cost model's precision, verified against the ground-truth counter in tests).
Data-free and deterministic: the data a run hands it is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compressor.errors import UsageError
from compressor.methods import register_method
from compressor.methods.spec import MethodContext, MethodSpec, option
from compressor.plan import Plan


@dataclass(frozen=True)
class L1UniformOptions:
    multiple: int = option(1, "Round kept widths to this channel multiple (1 = no rounding).")

    def __post_init__(self) -> None:
        if self.multiple < 1:
            raise UsageError(f"--multiple {self.multiple} must be at least 1")


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
    del model, data, context
    fraction = 0.5 if flops is None else float(flops)
    counts = graph.counts_for_flops(fraction, multiple=options.multiple)
    achieved = graph.cost_of_counts(counts).macs / graph.full.macs
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
