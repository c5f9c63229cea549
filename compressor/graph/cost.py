"""The analytic cost model: MACs and parameters of a slimmed model without slimming it.

Each handled module describes its cost as :class:`CostTerm` s (its handler's ``cost`` hook): an
unpruned amount of MACs and parameters multiplied by the kept fraction of each label set it
*scales with*. A dense convolution scales with its input and its output channels, a depthwise
one with its output channels only, a BatchNorm's parameters with its channels. Whatever no term
describes (an unhandled op's FLOPs, a frozen module's weights) is a constant. The model is exact:
``graph.cost(plan)`` equals :func:`compressor.graph.count` of the slimmed model on every model
the tests and the fuzzer produce.

Also here: searching kept channel counts for a MACs target (:func:`counts_for_target`) and the
one routine that nudges counts towards a target (:func:`refine_counts`), shared by
``ChannelGraph.counts_for_flops`` and EagleEye's strategy sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch


@dataclass
class Cost:
    """Multiply-accumulates and parameters (``rows``: per module, from :func:`count`)."""

    macs: int
    params: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def ratio(self, other: Cost) -> float:
        return self.macs / other.macs if other.macs else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"macs": self.macs, "params": self.params}


@dataclass(frozen=True)
class CostTerm:
    """``macs`` and ``params`` of the unpruned module, times the kept fraction of each label set
    in ``scales_with`` (1-D label tensors; none: a constant)."""

    macs: float
    params: float
    scales_with: tuple[torch.Tensor, ...] = ()


class CostModel:
    """Cost terms over label classes, evaluated for a keep flag per class with sparse algebra."""

    def __init__(
        self,
        terms: Sequence[CostTerm],
        label_class: np.ndarray,
        n_classes: int,
        *,
        const_macs: int,
        total_params: int,
    ) -> None:
        """``const_macs``: MACs no term describes; ``total_params``: every parameter of the model."""
        rows: list[np.ndarray] = []
        arity = max((len(t.scales_with) for t in terms), default=0)
        index = np.zeros((len(terms), arity), dtype=np.int64)
        pad: list[tuple[int, int]] = []
        for i, t in enumerate(terms):
            for j in range(arity):
                if j < len(t.scales_with):
                    index[i, j] = len(rows)
                    rows.append(label_class[t.scales_with[j].numpy()])
                else:
                    pad.append((i, j))
        for i, j in pad:  # the last fraction is always 1
            index[i, j] = len(rows)
        if rows:
            r = np.concatenate([np.full(len(x), i) for i, x in enumerate(rows)])
            c = np.concatenate(rows)
            self._A = sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(len(rows), n_classes))
        else:
            self._A = sp.csr_matrix((0, n_classes))
        self._n = np.maximum(np.array([len(x) for x in rows], dtype=np.float64), 1)
        self._index = index
        self._macs = np.array([t.macs for t in terms], dtype=np.float64)
        self._params = np.array([t.params for t in terms], dtype=np.float64)
        self._const_macs = float(const_macs)
        self._const_params = float(total_params) - float(self._params.sum())
        self.full = Cost(int(const_macs + round(float(self._macs.sum()))), int(total_params))

    def cost_of_keep(self, keep: np.ndarray) -> Cost:
        """Cost when the classes flagged in ``keep`` (bool per class) are kept."""
        frac = np.append((self._A @ keep.astype(np.float64)) / self._n, 1.0)
        scale = frac[self._index].prod(axis=1) if self._index.shape[1] else np.ones(len(self._macs))
        macs = self._const_macs + float((self._macs * scale).sum())
        params = self._const_params + float((self._params * scale).sum())
        return Cost(int(round(macs)), int(round(params)))


def refine_counts(
    cost: Callable[[dict[str, int]], float],
    counts: Mapping[str, int],
    target: float,
    *,
    sizes: Mapping[str, int],
    step: Mapping[str, int] | int = 1,
    min_count: Mapping[str, int] | int = 1,
    tolerance: float = 0.002,
    max_moves: int = 200,
    choose: Literal["shape", "closest"] = "shape",
) -> dict[str, int]:
    """Move single groups by one step while that brings ``cost(counts)`` closer to ``target``.

    ``cost`` maps kept counts per group to MACs (``graph.cost_of_counts(c).macs``). A move changes
    one group's count by ``step`` (channels, or the rounding multiple) within
    ``[min_count, sizes]``, down when over the target and up when under. Stops within
    ``tolerance`` (relative) of the target, when no move brings it closer, or after ``max_moves``.
    ``choose`` picks the move: ``"shape"`` takes the first that helps in shape order (the
    least-pruned group gives channels up first, the most-pruned gains first: the shape of a
    shared ratio is kept); ``"closest"`` takes the move that lands nearest the target.
    """
    counts = dict(counts)

    def per(v: Mapping[str, int] | int, n: str) -> int:
        return v if isinstance(v, int) else v[n]

    cur = cost(counts)
    for _ in range(max_moves):
        if abs(cur - target) <= tolerance * target:
            break
        over = cur > target
        if choose == "shape":
            order = sorted(counts, key=lambda n: counts[n] / sizes[n], reverse=over)
        else:
            order = list(counts)
        best: tuple[float, dict[str, int], float] | None = None
        for n in order:
            k = counts[n] + (-per(step, n) if over else per(step, n))
            if not per(min_count, n) <= k <= sizes[n]:
                continue
            trial = {**counts, n: k}
            c = cost(trial)
            if abs(c - target) < (abs(cur - target) if best is None else best[0]):
                best = (abs(c - target), trial, c)
                if choose == "shape":
                    break
        if best is None:
            break
        _, counts, cur = best
    return counts


def counts_for_target(
    cost: Callable[[dict[str, int]], float],
    sizes: Mapping[str, int],
    rel: Mapping[str, float],
    target: float,
    *,
    multiple: int = 1,
    max_ratio: float = 0.95,
) -> dict[str, int]:
    """Kept channels per group so that ``cost(counts)`` ~= ``target`` (see ``ChannelGraph.counts_for_flops``).

    Pruning ratios ``s * rel[g]`` (capped at ``max_ratio``) share one scale ``s`` found by
    bisection, then :func:`refine_counts` closes the gap in shape order.
    """
    names = list(sizes)
    size = np.array([sizes[n] for n in names], dtype=np.float64)
    r_rel = np.array([rel[n] for n in names], dtype=np.float64)

    def counts_at(s: float) -> dict[str, int]:
        r = np.minimum(s * r_rel, max_ratio)
        kept = size - np.floor(r * size)
        if multiple > 1:
            kept = np.where(
                size >= 2 * multiple, np.maximum(np.round(kept / multiple) * multiple, multiple), kept
            )
        kept = np.clip(kept, 1, size)
        return {n: int(k) for n, k in zip(names, kept)}

    if not names or r_rel.max() <= 0:
        return {n: int(s) for n, s in zip(names, size)}
    hi = max_ratio / r_rel[r_rel > 0].min()
    if cost(counts_at(hi)) > target:
        return counts_at(hi)
    lo = 0.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if cost(counts_at(mid)) > target:
            lo = mid
        else:
            hi = mid
    a, b = counts_at(lo), counts_at(hi)
    ca, cb = cost(a), cost(b)
    best = a if abs(ca - target) < abs(cb - target) else b
    step = {n: (multiple if multiple > 1 and z >= 2 * multiple else 1) for n, z in sizes.items()}
    return refine_counts(cost, best, target, sizes=sizes, step=step, min_count=step, choose="shape")
