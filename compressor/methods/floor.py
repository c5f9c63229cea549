"""Per-group floors: the fewest channels a method may leave in a prunable group.

Every method cuts at most ``max_ratio`` of a group's channels (its *floor* keeps the rest, at
least one channel). A FLOPs target that cannot be reached with every prunable group cut to its
floor (most channels frozen, so the few prunable groups would have to be gutted) is a budget
failure (:class:`~compressor.errors.BudgetError`, exit 3) saying what the deepest allowed plan
reaches, never a model that silently kept most of its FLOPs. Defaults, per method:

* l1-uniform: ``max_ratio`` 0.8 (every group keeps at least 20%: one shared ratio, no search
  to reject a gutted group);
* eagleeye: ``max_ratio`` 0.95 (at least 5%: the cap its sampler always had, so its pinned
  strategies are unchanged; every candidate is scored on data, and one that guts a group
  scores badly);
* epruner: ``max_ratio`` 0.9 (at least 10%: Affinity Propagation decides each group's width
  from the filters alone, nothing scores a gutted group).
* halp: ``min_keep`` 0.2 (at least 20%, as l1-uniform: its greedy knapsack removes the channels
  of least importance per unit of cost saved, and without a floor it gutted the costliest groups).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from compressor.errors import BudgetError, UsageError

#: how far above the FLOPs target (absolute) the deepest allowed plan may land before it fails
TOLERANCE = 0.02


def check_max_ratio(max_ratio: float) -> None:
    """A usage error unless ``max_ratio`` is in (0, 1)."""
    if not 0.0 < float(max_ratio) < 1.0:
        raise UsageError(
            f"max_ratio {max_ratio} is outside (0, 1): it is the largest share of a group's channels that "
            "may be cut"
        )


def floor_counts(graph: Any, max_ratio: float) -> dict[str, int]:
    """The fewest channels each prunable group may keep: ``ceil((1 - max_ratio) * size)``, at least 1."""
    return {
        g.name: max(1, min(int(g.size), math.ceil((1.0 - max_ratio) * int(g.size) - 1e-9)))
        for g in graph.prunable
    }


def clamp_counts(counts: Mapping[str, int], floors: Mapping[str, int]) -> dict[str, int]:
    """``counts`` with every group raised to its floor."""
    return {g: max(int(c), int(floors.get(g, 1))) for g, c in counts.items()}


def deepest_fraction(graph: Any, max_ratio: float, names: Iterable[str] | None = None) -> float:
    """The FLOPs fraction left with every prunable group (of ``names``, None: all) cut to its
    floor: the least any plan above the floors reaches."""
    floors = floor_counts(graph, max_ratio)
    if names is not None:
        wanted = set(names)
        floors = {g: c for g, c in floors.items() if g in wanted}
    keep = {g: list(range(c)) for g, c in floors.items()}  # a group's channels cost alike
    return float(graph.cost(keep).macs / max(graph.full.macs, 1))


def require_reachable(
    graph: Any, fraction: float, max_ratio: float, method: str, *, names: Iterable[str] | None = None
) -> None:
    """Raise :class:`BudgetError` when ``fraction`` of the FLOPs cannot be reached with every
    prunable group (of ``names``, None: all) cut no deeper than its floor."""
    names = list(names) if names is not None else None
    if fraction >= 1.0:
        return
    if not graph.prunable or (names is not None and not list(names)):
        raise BudgetError(
            "the model has no prunable channel group (every group is frozen), so no FLOPs target below 1 "
            "can be met; see 'compress profile' for why each group is frozen"
        )
    best = deepest_fraction(graph, max_ratio, names)
    if best > fraction + TOLERANCE:
        frozen = sum(g.size for g in getattr(graph, "frozen", []))
        total = sum(g.size for g in getattr(graph, "groups", graph.prunable)) or 1
        raise BudgetError(
            f"{method} reached {best:.3f} of the FLOPs, not the target {fraction:g} (+-{TOLERANCE}): even "
            f"with every prunable group cut to its floor ({1 - max_ratio:.0%} of its channels kept) and "
            f"{frozen / total:.0%} of the channels frozen; see 'compress profile' for why, or allow deeper "
            "cuts with --option max_ratio=R"
        )
