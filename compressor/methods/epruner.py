"""EPruner (Lin et al., IEEE TNNLS 2021): exemplar filters by Affinity Propagation.

Per prunable group of the channel graph (the EPruner paper and its official code):

1. one vector per channel: ``graph.channel_vectors(name)`` (a coupled group concatenates
   the filters of all its producing layers);
2. similarity ``s(i, j) = -||w_i - w_j||^2``;
3. preference ``beta * median``. ``median="column"`` (default, the official code): the
   per-column median of the full similarity matrix, diagonal zeros included, one preference
   per channel. ``median="global"`` (the paper's formula ``beta * median(S)``): one scalar,
   the median of the off-diagonal similarities;
4. Affinity Propagation (:mod:`compressor.ap`: damping 0.5, at most 200 iterations, stop after
   15 unchanged iterations; the same exemplars as scikit-learn);
5. the kept channels are the exemplars; slimming inherits their weights, biases and
   BatchNorm parameters and statistics.

Floor: when a FLOPs target is searched, no group keeps fewer than ``1 - max_ratio`` of its
channels (``max_ratio`` 0.9: at least 10%); a group AP cuts deeper is topped up with its
largest-L1 non-exemplar channels. A FLOPs target that cannot be reached with every pruned group
at its floor is a budget failure (exit 3) before any Affinity Propagation runs
(:mod:`compressor.methods.floor`). A ``beta`` given directly is the paper's plan as is, and a
latency budget is met as before (no floor).

``beta`` is given directly, or found by a bracketing search (:func:`find_beta`: bisection
safeguarded false position) so the slimmed network keeps ``flops`` of the full model's MACs
(analytic cost, ``graph.cost``) within ``tolerance`` (relative, 1% by default); when no beta
reaches the target (exemplar counts move in steps) the nearest achievable one is returned and
reported. Each group's similarity matrix (with scikit-learn's noise) is built once and AP
results are cached per (group, beta), so the search re-runs only new betas. No data, no
randomness: the same model gives the same plan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from compressor.ap import APProblem, APResult, neg_sq_distances
from compressor.errors import UsageError
from compressor.methods import check_flops, register_method
from compressor.methods.floor import check_max_ratio, clamp_counts, floor_counts, require_reachable
from compressor.methods.spec import MethodContext, MethodSpec, option
from compressor.plan import Plan

MEDIAN_RULES = ("column", "global")

#: Largest batch (betas x n x n) of one AP call, in elements (4 such float64 buffers live at once).
_BATCH_ELEMENTS = 1 << 22


def _median_rows(x: torch.Tensor) -> torch.Tensor:
    """numpy's median of each row (mean of the two middle values for an even count)."""
    n = x.shape[-1]
    lo = torch.kthvalue(x, (n - 1) // 2 + 1, dim=-1).values
    if n % 2:
        return lo
    hi = torch.kthvalue(x, n // 2 + 1, dim=-1).values
    return (lo + hi) / 2


def similarity_and_median(vectors: torch.Tensor, rule: str = "column") -> tuple[torch.Tensor, torch.Tensor]:
    """(S, median) for a group's channel vectors; ``median`` is (n,) for "column", () for "global"."""
    if rule not in MEDIAN_RULES:
        raise UsageError(f"unknown median rule {rule!r}; valid: {', '.join(MEDIAN_RULES)}")
    S = neg_sq_distances(vectors)
    n = S.shape[0]
    if rule == "column":
        med = _median_rows(S)  # S is exactly symmetric: column medians == row medians
    elif n > 1:
        med = _median_rows(S[~torch.eye(n, dtype=torch.bool, device=S.device)])
    else:
        med = torch.zeros((), dtype=S.dtype, device=S.device)
    return S, med


class ExemplarCache:
    """Similarity matrices and AP results per (group, beta) for one graph."""

    def __init__(
        self,
        graph: Any,
        names: Sequence[str],
        *,
        median: str = "column",
        damping: float = 0.5,
        max_iter: int = 200,
        convergence_iter: int = 15,
        device: str | torch.device = "cpu",
        floors: Mapping[str, int] | None = None,
    ) -> None:
        self.graph = graph
        self.names = list(names)
        self.floors = dict(floors or {})
        self.median = median
        self.ap_kw: dict[str, Any] = {
            "damping": damping,
            "max_iter": max_iter,
            "convergence_iter": convergence_iter,
        }
        self.device = torch.device(device)
        self._sim: dict[str, tuple[APProblem, torch.Tensor]] = {}
        self._res: dict[tuple[str, float], APResult] = {}
        self.ap_runs = 0
        self.ap_seconds = 0.0
        self.similarity_seconds = 0.0

    def problem(self, name: str) -> tuple[APProblem, torch.Tensor]:
        """The group's AP problem (similarities + noise, built once) and its median(s)."""
        if name not in self._sim:
            t0 = time.perf_counter()
            v = self.graph.channel_vectors(name).to(self.device)
            S, med = similarity_and_median(v, self.median)
            self._sim[name] = (APProblem(S), med)
            self.similarity_seconds += time.perf_counter() - t0
        return self._sim[name]

    def results(self, betas: Sequence[float]) -> dict[float, dict[str, APResult]]:
        """AP results of every group at every beta (cached; new betas of a group in batches)."""
        betas = [float(b) for b in betas]
        for name in self.names:
            todo = [b for b in dict.fromkeys(betas) if (name, b) not in self._res]
            if not todo:
                continue
            prob, med = self.problem(name)
            n = prob.n
            per = max(1, _BATCH_ELEMENTS // max(n * n, 1))
            for i in range(0, len(todo), per):
                chunk = todo[i : i + per]
                b = torch.tensor(chunk, dtype=med.dtype, device=med.device)
                pref = b[:, None] * med.expand(n)[None, :]
                t0 = time.perf_counter()
                out = prob.run(pref, **self.ap_kw)
                self.ap_seconds += time.perf_counter() - t0
                self.ap_runs += len(chunk)
                for beta, r in zip(chunk, out, strict=True):
                    self._res[(name, beta)] = r
        return {b: {name: self._res[(name, b)] for name in self.names} for b in betas}

    def keep(self, beta: float) -> dict[str, list[int]]:
        """The kept channels per group at ``beta``: AP's exemplars, raised to the group's floor by
        the largest-L1 channels that are not exemplars."""
        res = self.results([beta])[float(beta)]
        return {name: self._floored(name, r.exemplars.cpu().tolist()) for name, r in res.items()}

    def counts(self, beta: float) -> dict[str, int]:
        """Kept channel counts per group at ``beta``: AP's exemplar counts, at least the floor."""
        res = self.results([beta])[float(beta)]
        return {name: max(int(r.n_exemplars), self.floors.get(name, 1)) for name, r in res.items()}

    def _floored(self, name: str, kept: list[int]) -> list[int]:
        need = self.floors.get(name, 1) - len(kept)
        if need <= 0:
            return kept
        # L1 of the channel's vector: its producers' filters, as graph.importance() ranks them
        score = self.graph.channel_vectors(name).abs().sum(dim=1).cpu().tolist()
        have = set(kept)
        extra = [int(i) for i in sorted(range(len(score)), key=lambda i: -score[i]) if i not in have]
        return sorted(kept + extra[:need])


def _producers(group: Any) -> int:
    """Number of layers producing a group's channels (several: a residual sum ties them)."""
    return sum(1 for m in getattr(group, "members", None) or [] if len(m) > 1 and m[1] == "out")


def _fraction(graph: Any, keep: dict[str, list[int]]) -> float:
    return graph.cost(keep).macs / graph.full.macs


def _budget_fraction(graph: Any, budget: Any, keep: dict[str, list[int]]) -> float:
    """The plan's cost under ``budget`` (a :class:`CostBudget`; None: FLOPs); ``keep`` is floored."""
    if budget is None:
        return _fraction(graph, keep)
    return float(budget.cost({g: len(k) for g, k in keep.items()}))


def find_beta(
    fraction_at: Callable[[float], float],
    target: float,
    *,
    tolerance: float = 0.01,
    beta_max: float = 1024.0,
    beta_rtol: float = 1e-3,
    beta_min: float = 1e-3,
    max_steps: int = 40,
) -> tuple[float, float, list[tuple[float, float]]]:
    """Find beta > 0 so ``fraction_at(beta)`` (non-increasing in beta) is within ``tolerance``
    (relative) of ``target``.

    Brackets the target (beta 0 keeps everything; doubling from 1 upwards), then shrinks the
    bracket with safeguarded false position: interpolate linearly between the bracket ends,
    but bisect whenever the previous step did not at least halve the bracket, so the bracket
    always shrinks at least as fast as every other bisection step. Stops when a beta is within
    tolerance or the bracket is narrower than ``beta_rtol`` (relative) or beta would drop below ``beta_min``: the exemplar counts
    move in steps, so a target between two steps cannot be met exactly. Returns (beta,
    fraction, history); when no evaluated beta is within tolerance, the one whose fraction is
    nearest to the target.
    """
    hist: list[tuple[float, float]] = []

    def f(b: float) -> float:
        v = fraction_at(b)
        hist.append((b, v))
        return v

    def ok(v: float) -> bool:
        return abs(v - target) <= tolerance * target

    lo, f_lo = 0.0, 1.0  # beta -> 0: preference -> 0 above every similarity, every channel kept
    hi = 1.0
    f_hi = f(hi)
    while f_hi > target and not ok(f_hi) and hi < beta_max:
        lo, f_lo = hi, f_hi
        hi *= 2.0
        f_hi = f(hi)
    if not ok(f_hi) and f_hi < target:
        bisect_next = False
        for _ in range(max_steps):
            width = hi - lo
            if width <= beta_rtol * hi or hi <= beta_min:
                break
            if bisect_next or f_lo <= f_hi:
                mid = lo + width / 2
            else:
                t = (f_lo - target) / (f_lo - f_hi)
                mid = lo + min(max(t, 0.05), 0.95) * width
            v = f(mid)
            if ok(v):
                break
            if v > target:
                lo, f_lo = mid, v
            else:
                hi, f_hi = mid, v
            bisect_next = (hi - lo) > width / 2
    best = min(hist, key=lambda bv: (not ok(bv[1]), abs(bv[1] - target), bv[0]))
    return best[0], best[1], hist


@dataclass(frozen=True)
class EPrunerOptions:
    beta: float | None = option(
        None, "The preference factor (the paper uses 0.6 to 0.76), instead of --flops."
    )
    median: Literal["column", "global"] = option(
        "global",
        "Preference median: global (the paper's formula) or column (the official code, per channel).",
    )
    channels: Literal["l1", "exemplars"] = option(
        "l1",
        "Channels kept per group: exemplars (the paper: AP's exemplar filters) or l1 (AP sets how many "
        "channels a group keeps, the largest-L1 ones are kept; better sub-nets on the demo).",
    )
    tolerance: float = option(0.01, "Relative tolerance on the FLOPs target (0.01 = 1%).")
    multiple: int = option(
        1,
        "Round kept widths to this channel multiple (1 = no rounding; compress run passes the target's). "
        "With channels=l1, AP's per-group ratios are kept and rescaled to the target at that multiple.",
    )
    groups: list[str] | None = option(None, "Prune only these channel groups (comma-separated names).")
    coupled: bool = option(True, "Also prune groups with several producing layers (residual channels).")
    damping: float = option(0.5, "Affinity Propagation damping.")
    max_iter: int = option(200, "Affinity Propagation: most iterations.")
    convergence_iter: int = option(15, "Affinity Propagation: stop after this many unchanged iterations.")
    device: str = option("cpu", "Device that runs Affinity Propagation: cpu, auto, cuda or cuda:N.")
    max_ratio: float = option(
        0.9, "Largest share of any group's channels that may be cut (the floor keeps the rest)."
    )

    def __post_init__(self) -> None:
        check_max_ratio(self.max_ratio)
        if self.median not in MEDIAN_RULES:
            raise UsageError(f"unknown median rule {self.median!r}; valid: {', '.join(MEDIAN_RULES)}")
        if self.multiple < 1:
            raise UsageError(f"--multiple {self.multiple} must be at least 1")
        if self.channels not in ("l1", "exemplars"):
            raise UsageError(f"channels {self.channels!r} is not one of: l1, exemplars")
        if self.beta is not None and not (float(self.beta) > 0 and math.isfinite(float(self.beta))):
            raise UsageError(f"--beta {self.beta} must be a positive number (the paper uses 0.6 to 0.76)")
        if not 0 < self.tolerance < 1:
            raise UsageError(f"tolerance {self.tolerance} must be in (0, 1), e.g. 0.01 (1% of the target)")


def search(
    model: Any,
    graph: Any,
    *,
    flops: float | None,
    data: Any,
    seed: int,
    options: EPrunerOptions,
    context: MethodContext,
) -> Plan:
    """Kept channels = Affinity Propagation exemplars of each prunable group.

    ``options.beta`` (> 0) sets the preference directly; otherwise ``flops`` (fraction of MACs to
    keep) is met by searching beta (:func:`find_beta`). ``data`` and ``seed`` are unused (data-free,
    deterministic); ``groups`` restricts pruning to the named groups; ``coupled=False`` leaves
    whole every group with several producing layers (residual channels: the official code
    never prunes residual outputs of ImageNet ResNets).
    """
    del model, data, seed
    o = options
    budget = context.budget  # a cost other than FLOPs (predicted latency) replaces the FLOPs target
    if budget is not None and o.beta is None:
        flops = budget.fraction
    beta, median, tolerance, groups, coupled = o.beta, o.median, o.tolerance, o.groups, o.coupled
    damping, max_iter, convergence_iter, device = o.damping, o.max_iter, o.convergence_iter, o.device
    if beta is None and flops is None:
        raise UsageError("epruner needs --flops F (fraction of FLOPs to keep) or --beta B (e.g. 0.75)")
    check_flops(flops)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    prunable = {g.name: g for g in graph.prunable}
    if groups is not None:
        unknown = [n for n in groups if n not in prunable]
        if unknown:
            raise UsageError(
                f"group(s) {', '.join(unknown)} are not prunable groups; valid: {', '.join(prunable)}"
            )
        names = [n for n in prunable if n in set(groups)]
    else:
        names = list(prunable)
    if not coupled:
        names = [n for n in names if _producers(prunable[n]) <= 1]

    # a FLOPs target is met above the floors; a given beta is AP's plan as is, and another cost
    # (predicted latency) is met by the budget's own search, as before
    floored = beta is None and budget is None
    floors = {n: c for n, c in floor_counts(graph, o.max_ratio).items() if n in names} if floored else {}
    if beta is None and budget is None and flops is not None:  # unreachable above the floors: fail now
        require_reachable(graph, float(flops), o.max_ratio, "epruner", names=names)
    t0 = time.perf_counter()
    cache = ExemplarCache(
        graph,
        names,
        median=median,
        damping=damping,
        max_iter=max_iter,
        convergence_iter=convergence_iter,
        device=device,
        floors=floors,
    )
    info: dict[str, Any] = {
        "coupled": coupled,
        "median": median,
        "damping": damping,
        "max_iter": max_iter,
        "convergence_iter": convergence_iter,
    }
    if beta is not None:
        b = float(beta)
        frac = _fraction(graph, cache.keep(b)) if names else 1.0
        info["beta_given"] = True
        if flops is not None:
            info["flops_ignored"] = f"--beta {b} given: --flops {flops} was not used"
        flops_target = None
    else:
        assert flops is not None
        flops_target = float(flops)
        if not names:
            hist: list[tuple[float, float]] = []
            b, frac = 1.0, 1.0
        else:
            b, frac, hist = find_beta(
                lambda x: _budget_fraction(graph, budget, cache.keep(x)), flops_target, tolerance=tolerance
            )
        info["beta_given"] = False
        kind = "flops" if budget is None else budget.kind
        info["bisection"] = [{"beta": x, kind: v} for x, v in hist]
        info["within_tolerance"] = abs(frac - flops_target) <= tolerance * flops_target
        if not info["within_tolerance"]:
            info["note"] = (
                f"no beta keeps {flops_target:.4f} of the {kind} within {tolerance:.1%}; nearest achievable "
                f"{frac:.4f} at beta {b:.6g}"
            )
        if budget is not None:
            info["budget"] = {"kind": kind, "fraction": flops_target, "reached": frac}
            frac = _fraction(graph, cache.keep(b)) if names else 1.0
            flops_target = None
    res = cache.results([b])[b] if names else {}
    kept: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}
    for name, k in (cache.keep(b) if names else {}).items():
        n = prunable[name].size
        if len(k) < n:
            kept[name] = k
            sizes[name] = n
    info.update(
        {
            "beta": b,
            "flops": frac,
            "exemplars": {name: r.n_exemplars for name, r in res.items()},
            "max_ratio": o.max_ratio,
            "sizes": {name: prunable[name].size for name in names},
            "iterations": {name: r.n_iter for name, r in res.items()},
            "not_converged": [name for name, r in res.items() if not r.converged],
            "fallbacks": {name: r.fallback for name, r in res.items() if r.fallback},
            "ap_runs": cache.ap_runs,
            "ap_seconds": cache.ap_seconds,
            "similarity_seconds": cache.similarity_seconds,
            "seconds": time.perf_counter() - t0,
        }
    )
    info["channels"] = o.channels
    if o.channels == "l1":
        # AP decides each group's width; the channels kept are the largest-L1 ones
        counts = cache.counts(b) if names else {}
        shape = {n: 1.0 - c / prunable[n].size for n, c in counts.items()}
        rescale = bool(counts) and max(shape.values(), default=0.0) > 0
        if budget is not None and o.beta is None and rescale:
            # AP's shape of per-group ratios, at the channel multiple, under the budget's cost; then
            # raised to where the cost table says latency actually drops
            from compressor.latency import counts_for_cost

            counts = counts_for_cost(graph, budget.cost, budget.fraction, shape=shape, multiple=o.multiple)
            counts = budget.snapped(counts)
            info["budget"]["reached"] = float(budget.cost(counts))
            frac = info["flops"] = graph.cost_of_counts(counts).macs / graph.full.macs
        elif flops_target is not None and rescale and (o.multiple > 1 or not info["within_tolerance"]):
            # exemplar counts move in steps: keep AP's shape of per-group ratios, rescaled to the target
            counts = graph.counts_for_flops(
                flops_target, shape=shape, multiple=o.multiple, max_ratio=o.max_ratio
            )
            counts = clamp_counts(counts, floors)
            info["rescaled_to_target"] = graph.cost_of_counts(counts).macs / graph.full.macs
        plan = graph.plan_from_counts(counts, method="epruner", flops_target=flops_target)
        plan.input_shape = list(getattr(graph, "input_shape", []) or []) or None
        plan.info.update(info)
        return plan
    return Plan(
        method="epruner",
        groups=kept,
        group_sizes=sizes,
        seed=None,
        input_shape=list(getattr(graph, "input_shape", []) or []) or None,
        flops_target=flops_target,
        info=info,
    )


def describe(info: Mapping[str, Any]) -> str:
    """The report's search summary: the preference factor and where it came from."""
    if info.get("beta") is None:
        return ""
    return f"; Affinity Propagation exemplars with beta {info['beta']:.4g}" + (
        " (given)" if info.get("beta_given") else " (found by bisection on the FLOPs target)"
    )


epruner = register_method(
    MethodSpec(
        name="epruner",
        search=search,
        options=EPrunerOptions,
        summary="exemplar filters chosen by Affinity Propagation on the weights (no data)",
        describe=describe,
    )
)
