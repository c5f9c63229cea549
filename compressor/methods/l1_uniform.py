"""The baseline: every prunable group pruned by the same ratio, L1-ranked channels.

The shared ratio is found by bisection so the slimmed model keeps the requested fraction of
MACs (within the cost model's precision, verified against the ground-truth counter in tests).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from compressor.graph import ChannelGraph
from compressor.methods import register_method
from compressor.plan import Plan


@register_method("l1-uniform")
def l1_uniform(
    model: nn.Module,
    graph: ChannelGraph,
    *,
    flops: float | None = 0.5,
    data: Any = None,
    seed: int = 0,
    multiple: int = 1,
    **options: Any,
) -> Plan:
    """Prune every prunable group by one ratio so that ``flops`` of the MACs remain."""
    fraction = 0.5 if flops is None else float(flops)
    counts = graph.counts_for_flops(fraction, multiple=multiple)
    achieved = graph.cost_of_counts(counts).macs / graph.full.macs
    return graph.plan_from_counts(
        counts,
        method="l1-uniform",
        seed=seed,
        flops_target=fraction,
        flops_achieved=achieved,
        multiple=multiple,
    )
