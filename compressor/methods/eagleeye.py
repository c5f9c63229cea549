"""EagleEye (Li et al., ECCV 2020): random pruning strategies ranked by adaptive-BN accuracy.

1. Strategy: a pruning ratio per prunable group of the channel graph, drawn uniformly from
   ``[0, R]``, then corrected by one shared scale (bisection inside
   ``graph.counts_for_flops``) so the sub-net keeps the requested FLOPs fraction within
   ``tolerance`` (relative; 1% by default) while keeping the random shape. No rejection
   sampling. Channels kept inside a group: largest L1 norm (summed over a coupled group's
   members). Candidate ``i`` is drawn from an RNG seeded with ``(seed, i)``. Floor: no
   candidate cuts a group by more than ``max_ratio`` (0.95, the sampler's cap: it keeps at
   least 5% of its channels); a FLOPs target unreachable above the floors is a budget failure (exit 3) before
   any data is loaded (:mod:`compressor.methods.floor`).
2. Score: slim the candidate, recompute its BatchNorm statistics on cached calibration batches
   from the training split (:func:`compressor.bn.adaptive_bn`), then top-1 accuracy (full
   precision) on the cached search-validation split (``data.val``: evaluation transforms,
   never the test split, never training augmentation).
3. Search: :func:`compressor.search_loop.run_search` (candidate and/or time budget, every candidate
   appended to ``candidates.jsonl`` as scored so a rerun resumes, sharded under torchrun).
4. Finalists (``top_k`` > 1): the best score, the candidates whose score is within one standard
   error of it (the score cannot tell them apart) and the uniform plan are each fine-tuned for
   ``finetune_epochs`` on the training split less ``finetune_holdout`` images, scored on those
   held-out images, and the best after fine-tuning is kept (:func:`finalists`). The paper's
   rule (the best score) is ``top_k=1``; ``top_k_rule="best"`` fine-tunes the K best scores.

The model and the data are loaded once per search; calibration and validation batches are
cached as tensors on the device, so a candidate costs its slimming plus its forward passes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from compressor.errors import BudgetError, DataError, UsageError
from compressor.methods import check_flops, register_method
from compressor.methods.floor import check_max_ratio, clamp_counts, floor_counts, require_reachable
from compressor.methods.spec import CostBudget, MethodContext, MethodSpec, SearchCost, option

#: Official upper bounds R of the sampled ratios (the EagleEye paper's code): ResNet-50 keeping 75%/50%/25%
#: of the FLOPs used 0.4/0.7/0.8 (MobileNetV1 at 50%: 0.7). Other targets interpolate linearly.
OFFICIAL_RATIO_MAX = ((0.25, 0.8), (0.5, 0.7), (0.75, 0.4))

#: Calibration split: the training split with evaluation transforms (deterministic, so caching
#: its batches is sound, and the statistics match what the network sees when deployed).
DEFAULT_CALIB_SPLIT = "train_eval"


def default_ratio_max(flops: float) -> float:
    """R for a FLOPs fraction, interpolated from the official settings (clamped at the ends)."""
    xs = [x for x, _ in OFFICIAL_RATIO_MAX]
    ys = [y for _, y in OFFICIAL_RATIO_MAX]
    return float(np.interp(float(flops), xs, ys))


# ---------------------------------------------------------------------------------------------
# strategy generation
# ---------------------------------------------------------------------------------------------
@dataclass
class Strategy:
    """One candidate: kept channel counts per prunable group and what they cost."""

    index: int
    drawn: dict[str, float]
    counts: dict[str, int]
    flops: float  # MACs of the sub-net / MACs of the full model
    macs: int
    params: int
    attempts: int = 1
    sizes: dict[str, int] = field(default_factory=dict)
    cost: float | None = None  # the budget's cost (e.g. predicted latency fraction), when not FLOPs

    def ratios(self) -> dict[str, float]:
        """Fraction of channels removed per group (after the FLOPs correction)."""
        return {g: 1.0 - self.counts[g] / self.sizes[g] for g in self.counts}


def _topk_line(i: int, k: int, rec: dict[str, Any], acc: float, elapsed: float) -> None:
    """One stderr line per finalist fine-tuned, with the time left."""
    import sys

    eta = elapsed / i * (k - i)
    print(
        f"  finalist fine-tune {i}/{k}: candidate #{int(rec['index'])} score {float(rec['score']):.2f} -> "
        f"{acc:.2f}% after fine-tuning ({elapsed:.0f} s, about {eta:.0f} s left)",
        file=sys.stderr,
        flush=True,
    )


def _within(macs: float, target: float, tolerance: float) -> bool:
    return abs(macs - target) <= tolerance * target


def _fit(
    graph: Any,
    flops: float,
    shape: dict[str, float] | None,
    sizes: dict[str, int],
    *,
    index: int,
    attempt: int,
    tolerance: float,
    multiple: int,
    max_ratio: float = 0.95,
) -> Strategy:
    """The strategy with per-group pruning ratios proportional to ``shape`` (None: uniform) that
    keeps ``flops`` of the MACs: one shared scale (``graph.counts_for_flops``), then single
    channel steps (:func:`compressor.graph.cost.refine_counts`) for a rounding miss. No group is
    cut by more than ``max_ratio`` of its channels (its floor, :mod:`compressor.methods.floor`)."""
    full = float(graph.full.macs)
    floors = floor_counts(graph, max_ratio)
    counts = {
        k: int(v)
        for k, v in graph.counts_for_flops(flops, shape=shape, multiple=multiple, max_ratio=max_ratio).items()
    }
    counts = clamp_counts({g: counts.get(g, sizes[g]) for g in sizes}, floors)
    # a rounding miss: one step of `multiple` channels at a time, in the group whose change
    # lands closest to the target, until within tolerance (at most 4 moves per group)
    from compressor.graph.cost import refine_counts  # lazy: torch

    counts = refine_counts(
        lambda c: graph.cost_of_counts(c).macs,
        counts,
        float(flops) * full,
        sizes=sizes,
        step=multiple,
        min_count={g: floors.get(g, 1) for g in sizes},
        tolerance=tolerance,
        max_moves=4 * len(counts) + 4,
        choose="closest",
    )
    cost = graph.cost_of_counts(counts)
    return Strategy(
        index=index,
        drawn=dict(shape) if shape is not None else {g: 1.0 for g in sizes},
        counts=counts,
        flops=cost.macs / full,
        macs=int(cost.macs),
        params=int(cost.params),
        attempts=attempt,
        sizes=sizes,
    )


def _sizes(graph: Any) -> dict[str, int]:
    return {g.name: int(g.size) for g in graph.prunable}


def uniform_strategy(
    graph: Any,
    flops: float,
    *,
    index: int = 0,
    tolerance: float = 0.01,
    multiple: int = 1,
    max_ratio: float = 0.95,
) -> Strategy:
    """The l1-uniform baseline's plan as a candidate: one pruning ratio for every group."""
    return _fit(
        graph, flops, None, _sizes(graph), index=index, attempt=1, tolerance=tolerance, multiple=multiple,
        max_ratio=max_ratio,
    )  # fmt: skip


def perturb_strategy(
    graph: Any,
    flops: float,
    parent: Mapping[str, int],
    *,
    seed: int,
    index: int,
    sigma: float = 0.1,
    tolerance: float = 0.01,
    multiple: int = 1,
    max_attempts: int = 5,
    max_ratio: float = 0.95,
) -> Strategy:
    """A local move around ``parent`` (kept counts per group): each group's pruning ratio plus
    Gaussian noise of ``sigma`` (clipped to [0, ``max_ratio``]), rescaled to the FLOPs target like a random
    draw. Deterministic in ``(seed, index)``; a draw that misses the tolerance is repeated (up to
    ``max_attempts``), and the nearest one under the budget is kept otherwise."""
    sizes = _sizes(graph)
    base = {g: 1.0 - int(parent.get(g, sizes[g])) / sizes[g] for g in sizes}
    rng = np.random.default_rng([int(seed), int(index), 1])
    target = float(flops) * float(graph.full.macs)
    best: Strategy | None = None
    for attempt in range(1, max_attempts + 1):
        noise = rng.normal(0.0, sigma, size=len(sizes))
        shape = {g: float(np.clip(base[g] + e, 0.0, max_ratio)) for g, e in zip(sizes, noise, strict=True)}
        if max(shape.values()) <= 0.0:
            continue
        cand = _fit(
            graph, flops, shape, sizes, index=index, attempt=attempt, tolerance=tolerance, multiple=multiple,
            max_ratio=max_ratio,
        )  # fmt: skip
        if _within(cand.macs, target, tolerance):
            return cand
        if cand.macs <= target * (1 + tolerance) and (
            best is None or abs(cand.macs - target) < abs(best.macs - target)
        ):
            best = cand
    if best is None:
        return uniform_strategy(
            graph, flops, index=index, tolerance=tolerance, multiple=multiple, max_ratio=max_ratio
        )
    return best


def sample_strategy(
    graph: Any,
    flops: float,
    *,
    seed: int = 0,
    index: int = 0,
    ratio_max: float | None = None,
    tolerance: float = 0.01,
    multiple: int = 1,
    max_attempts: int = 20,
    budget: CostBudget | None = None,
    max_ratio: float = 0.95,
) -> Strategy:
    """Candidate ``index`` of the search with ``seed``: deterministic, within ``tolerance`` of ``flops``.

    ``budget`` (a cost other than FLOPs, e.g. predicted latency): the draw is rescaled to meet
    ``budget.fraction`` of that cost instead (:func:`sample_under_budget`).

    Ratios are drawn uniformly from ``[0, R]`` per prunable group and rescaled by one common
    factor to hit the target (``graph.counts_for_flops(flops, shape=ratios)``); a miss left by
    rounding is fixed by moving single channel steps. Only if that still misses (a draw the
    target cannot reach with that shape) is the draw repeated, up to ``max_attempts`` times.
    When no draw lands within the tolerance, the nearest strategy under the budget is returned
    (its ``flops`` says what was reached); :class:`BudgetError` only when every draw is over it.
    """
    if seed < 0 or index < 0:
        raise UsageError(f"--seed {seed} must be a non-negative integer")
    R = default_ratio_max(flops) if ratio_max is None else float(ratio_max)
    if not (0.0 < R <= 1.0):
        raise UsageError(
            f"--ratio-max {ratio_max} is outside (0, 1]: it is the largest pruning ratio drawn per group"
        )
    groups = list(graph.prunable)
    if not groups:
        raise BudgetError(
            "the model has no prunable channel group (every group is frozen), so no FLOPs target below 1 "
            "can be met; see 'compress profile' for why each group is frozen"
        )
    if budget is not None and budget.kind != "flops":
        return sample_under_budget(graph, budget, seed=seed, index=index, ratio_max=R, multiple=multiple,
                                   tolerance=tolerance, max_attempts=max_attempts)  # fmt: skip
    sizes = {g.name: int(g.size) for g in groups}
    full = float(graph.full.macs)
    target = float(flops) * full
    rng = np.random.default_rng([int(seed), int(index)])
    best: Strategy | None = None
    for attempt in range(1, max_attempts + 1):
        drawn = {name: float(r) for name, r in zip(sizes, rng.uniform(0.0, R, size=len(sizes)), strict=True)}
        cand = _fit(
            graph, flops, drawn, sizes, index=index, attempt=attempt, tolerance=tolerance, multiple=multiple,
            max_ratio=max_ratio,
        )  # fmt: skip
        if _within(cand.macs, target, tolerance):
            return cand
        if best is None or abs(cand.macs - target) < abs(best.macs - target):
            best = cand
    assert best is not None
    if best.macs <= target * (1 + tolerance):
        # coarse groups (a small net) cannot land within the tolerance, but this strategy is
        # under the FLOPs budget: the nearest achievable, reported as its flops
        return best
    raise BudgetError(
        f"candidate {index}: no pruning strategy within {tolerance:.1%} of the FLOPs target {flops} after "
        f"{max_attempts} draws (closest: {best.flops:.4f}); loosen --tolerance or choose another --flops"
    )


def sample_under_budget(
    graph: Any,
    budget: CostBudget,
    *,
    seed: int,
    index: int,
    ratio_max: float,
    multiple: int = 1,
    tolerance: float = 0.01,
    max_attempts: int = 20,
) -> Strategy:
    """As :func:`sample_strategy`, for any cost: ratios drawn uniformly from ``[0, R]``, one shared
    scale so ``budget.cost`` stays within ``budget.fraction`` (``counts_for_cost``), then snapped to
    where the cost steps up. A draw below ``(1 - 5 * tolerance)`` of the budget (coarse steps) is
    drawn again; the nearest under the budget is returned after ``max_attempts``."""
    from compressor.latency import counts_for_cost

    sizes = {g.name: int(g.size) for g in graph.prunable}
    full = float(graph.full.macs)
    rng = np.random.default_rng([int(seed), int(index)])
    best: Strategy | None = None
    for attempt in range(1, max_attempts + 1):
        drawn = {
            n: float(r) for n, r in zip(sizes, rng.uniform(0.0, ratio_max, size=len(sizes)), strict=True)
        }
        counts = counts_for_cost(graph, budget.cost, budget.fraction, shape=drawn, multiple=multiple)
        counts = {g: int(counts.get(g, sizes[g])) for g in sizes}
        counts = budget.snapped(counts)
        c = float(budget.cost(counts))
        macs = graph.cost_of_counts(counts)
        cand = Strategy(
            index, drawn, counts, macs.macs / full, int(macs.macs), int(macs.params), attempt, sizes, c
        )
        ok = c <= budget.fraction * (1 + tolerance)
        if ok and c >= budget.fraction * (1 - 5 * tolerance):
            return cand
        if ok and (best is None or c > (best.cost or 0.0)):
            best = cand
    if best is not None:
        return best
    raise BudgetError(
        f"candidate {index}: no pruning strategy meets {budget.fraction:g} of the {budget.kind} after "
        f"{max_attempts} draws; choose a larger budget"
    )


# ---------------------------------------------------------------------------------------------
# candidate scoring
# ---------------------------------------------------------------------------------------------
def _inputs_targets(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise DataError(f"expected (inputs, targets) batches, got {type(batch).__name__}")


def cache_batches(
    dataset: Any,
    *,
    batch_size: int,
    n_batches: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    device: Any = "cpu",
    with_targets: bool = True,
) -> list[Any]:
    """Load ``n_batches`` batches (all if None) of ``dataset`` once, as tensors on ``device``."""
    import torch
    from torch.utils.data import DataLoader

    try:
        n = len(dataset)
    except TypeError:
        n = None
    if n == 0:
        raise DataError("the dataset is empty; a search needs calibration and validation images")
    g = torch.Generator()
    g.manual_seed(int(seed))
    drop_last = bool(shuffle and n is not None and n >= batch_size)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=g, drop_last=drop_last, num_workers=0
    )
    out: list[Any] = []
    for batch in loader:
        x, y = _inputs_targets(batch)
        x = x.to(device)
        out.append((x, y.to(device)) if with_targets else x)
        if n_batches is not None and len(out) >= n_batches:
            break
    return out


class Scorer:
    """Builds candidates from one loaded model and scores them on cached batches."""

    def __init__(self, model: Any, graph: Any, calib: list[Any], val: list[Any], device: Any) -> None:
        self.model = model
        self.graph = graph
        self.calib = calib
        self.val = val
        self.device = device

    def build(self, plan: Any) -> Any:
        from compressor.bn import adaptive_bn
        from compressor.graph import slim

        sub = slim(self.model, plan, graph=self.graph)
        return adaptive_bn(sub, self.calib, device=self.device)

    def accuracy(self, model: Any) -> float:
        """Top-1 (percent, full precision) on the cached validation batches."""
        import torch

        was = model.training
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in self.val:
                correct += int((model(x).argmax(1) == y).sum())
                total += int(y.numel())
        model.train(was)
        return 100.0 * correct / max(total, 1)


def _subset(dataset: Any, n: int | None, seed: int) -> Any:
    if n is None or n >= len(dataset):
        return dataset
    import torch
    from torch.utils.data import Subset

    g = torch.Generator()
    g.manual_seed(int(seed))
    return Subset(dataset, torch.randperm(len(dataset), generator=g)[:n].tolist())


def _resolve_data(data: Any, meta: Mapping[str, Any] | None) -> Any:
    if data is None:
        raise UsageError(
            "eagleeye scores candidates on data: pass --data (mnist5k, cifar10:DIR, imagefolder:DIR); "
            "the checkpoint's meta names its dataset when it has one"
        )
    if isinstance(data, str):
        from compressor.data import load_data

        return load_data(data, meta=dict(meta) if meta is not None else None)
    return data


def finalists(
    ranked: list[dict[str, Any]],
    *,
    top_k: int,
    rule: str,
    z: float,
    n_val: int,
    uniform_index: int | None = None,
) -> list[dict[str, Any]]:
    """The candidates worth a short fine-tune, best score first (none when ``top_k`` is 1).

    ``best``: the ``top_k`` best scores. ``uncertain``: the best score, then every candidate whose
    score is within ``z`` standard errors of it, at most ``top_k`` in all, plus the uniform plan
    (candidate ``uniform_index``) wherever it ranked. The standard error is the binomial one of
    the best score on ``n_val`` images, ``sqrt(p (1 - p) / n_val)``: candidates closer than that
    are not told apart by the score, so the fine-tune decides between them; the uniform plan is
    the baseline a search has to beat, so it is always a finalist. A single finalist needs no
    fine-tune and none is returned.
    """
    if top_k <= 1 or len(ranked) <= 1:
        return []
    if rule == "best":
        return list(ranked[:top_k])
    best = float(ranked[0]["score"])
    p = min(max(best / 100.0, 0.0), 1.0)
    se = 100.0 * float(np.sqrt(p * (1.0 - p) / max(n_val, 1)))
    out = [r for r in ranked if float(r["score"]) >= best - z * se][:top_k]
    if uniform_index is not None and all(int(r["index"]) != uniform_index for r in out):
        out += [r for r in ranked if int(r["index"]) == uniform_index]
    return out if len(out) > 1 else []


def _finetune_split(bundle: Any, holdout: int, seed: int) -> tuple[Any, int]:
    """The data of the finalists' fine-tunes: ``holdout`` training images (at most half the
    split, drawn with ``seed``) scored with evaluation transforms and left out of the fine-tune's
    training images (none when ``holdout`` is 0 or the split is too small: then ``data.val``
    scores them), and the number held out. The test split is emptied: a search never reads it."""
    import dataclasses
    from types import SimpleNamespace

    from torch.utils.data import Subset

    n = len(bundle.train)
    k = min(int(holdout), n // 2)
    parts: dict[str, Any] = {"test": []}
    if k < 1 or len(bundle.train_eval) != n:
        k = 0
    else:
        order = np.random.default_rng([int(seed), 17]).permutation(n)
        held, kept = sorted(order[:k].tolist()), sorted(order[k:].tolist())
        parts.update(train=Subset(bundle.train, kept), val=Subset(bundle.train_eval, held))
    if dataclasses.is_dataclass(bundle) and not isinstance(bundle, type):
        return dataclasses.replace(bundle, **parts), k
    # a bundle-like object: what a fine-tune reads of it
    keep = {a: getattr(bundle, a) for a in ("name", "num_classes", "train", "val") if a not in parts}
    return SimpleNamespace(**keep, **parts), k


# ---------------------------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EagleEyeOptions:
    candidates: int | None = option(
        None, "Candidates to score (default 100 when no time budget is given; resumed ones count)."
    )
    time_budget: float | None = option(None, "Seconds of search (stops after the candidate in progress).")
    calib_batches: int = option(20, "Training batches that recompute each candidate's BatchNorm statistics.")
    batch_size: int = option(64, "Calibration batch size.")
    val_images: int | None = option(None, "Score on this many search-validation images (default: all).")
    calib_split: Literal["train_eval", "train"] = option(
        DEFAULT_CALIB_SPLIT, "Calibration split: train_eval (evaluation transforms) or train (augmented)."
    )
    ratio_max: float | None = option(
        None, "R, the largest pruning ratio drawn per group (default: the paper's for the FLOPs target)."
    )
    tolerance: float = option(0.01, "Relative tolerance on the FLOPs target (0.01 = 1%).")
    max_ratio: float = option(
        0.95, "Largest share of any group's channels a candidate may cut (the floor keeps the rest)."
    )
    multiple: int = option(1, "Round kept widths to this channel multiple.")
    top_k: int = option(
        3,
        "Finalists: at most K candidates by score are fine-tuned briefly and the best after fine-tuning "
        "is kept (1: the best score, as in the paper).",
    )
    top_k_rule: Literal["uncertain", "best"] = option(
        "uncertain",
        "uncertain: the finalists are the best score, the candidates whose score is within "
        "uncertainty_z standard errors of it (at most top_k in all), and the uniform plan; best: the "
        "top_k scores.",
    )
    uncertainty_z: float = option(
        1.0, "uncertain: how many standard errors of the best score a finalist may be below it."
    )
    finetune_holdout: int = option(
        2000,
        "Training images held out of the finalists' fine-tunes and used to score them (at most half "
        "the training split; 0: fine-tune on all of it and score on data.val).",
    )
    finetune_epochs: int = option(1, "Epochs of each finalist's fine-tune.")
    device: str = option("auto", "Device that scores candidates: auto, cpu, cuda or cuda:N.")
    sampling: Literal["guided", "paper"] = option(
        "guided",
        "paper: every candidate drawn at random (the paper); guided: candidate 0 is the uniform plan, "
        "then random draws up to random_candidates, then rounds of random_candidates local moves, each "
        "around the best three candidates of the rounds before.",
    )
    random_candidates: int = option(
        20, "guided: candidates of the first (random) round and of each local round."
    )
    local_sigma: float = option(0.1, "guided: standard deviation of a local move's per-group ratio change.")

    def __post_init__(self) -> None:
        if self.candidates is not None and self.candidates < 1:
            raise UsageError(f"--candidates {self.candidates} must be at least 1")
        if self.calib_batches < 1:
            raise UsageError(f"--calib-batches {self.calib_batches} must be at least 1")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size} must be at least 1")
        if not (0.0 < self.tolerance < 1.0):
            raise UsageError(f"--tolerance {self.tolerance} must be in (0, 1), e.g. 0.01 for 1%")
        if self.calib_split not in ("train_eval", "train"):
            raise UsageError(f"calib_split {self.calib_split!r} is not one of: train_eval, train")
        check_max_ratio(self.max_ratio)
        if self.top_k < 1:
            raise UsageError(f"--top-k {self.top_k} must be at least 1")
        if self.top_k_rule not in ("uncertain", "best"):
            raise UsageError(f"top_k_rule {self.top_k_rule!r} is not one of: uncertain, best")
        if not self.uncertainty_z >= 0:
            raise UsageError(f"uncertainty_z {self.uncertainty_z} must be 0 or more")
        if self.finetune_holdout < 0:
            raise UsageError(f"finetune_holdout {self.finetune_holdout} must be 0 or more")
        if self.finetune_epochs < 1:
            raise UsageError(f"finetune_epochs {self.finetune_epochs} must be at least 1")
        if self.multiple < 1:
            raise UsageError(f"--multiple {self.multiple} must be at least 1")
        if self.sampling not in ("guided", "paper"):
            raise UsageError(f"sampling {self.sampling!r} is not one of: guided, paper")
        if self.random_candidates < 1:
            raise UsageError(f"random_candidates {self.random_candidates} must be at least 1")
        if not self.local_sigma > 0:
            raise UsageError(f"local_sigma {self.local_sigma} must be positive")


def search(
    model: Any,
    graph: Any,
    *,
    flops: float | None,
    data: Any,
    seed: int,
    options: EagleEyeOptions,
    context: MethodContext,
) -> Any:
    """Search ``options.candidates`` random strategies (default 100 when no budget is given) at ``flops``.

    ``data``: a DataBundle (or a spec string for :func:`compressor.data.load_data`, loaded with
    ``context.meta``); calibration batches come from ``data.<calib_split>`` (``train_eval``:
    training split, evaluation transforms; ``train``: with training augmentation), the score from
    ``data.val``. ``top_k > 1`` fine-tunes the best ``top_k`` candidates for ``finetune_epochs``
    epochs (:func:`compressor.train.finetune`) and keeps the best after fine-tuning.
    Returns a :class:`~compressor.plan.Plan`; ``plan.info`` holds the score, the candidate index,
    the FLOPs reached and the search's statistics.
    """
    import torch

    from compressor.device import init_distributed, resolve_device
    from compressor.search_loop import run_search, search_id

    o = options
    budget = context.budget
    if flops is None and budget is None:
        raise UsageError(
            "eagleeye needs a FLOPs target: pass --flops F (fraction of the original FLOPs, e.g. 0.5)"
        )
    check_flops(flops)
    if budget is not None and budget.kind == "flops":
        flops, budget = budget.fraction, None
    if budget is not None:
        flops = budget.fraction  # sets R and names the search; the constraint is the budget's cost
    assert flops is not None  # given, or set from the budget above
    candidates, time_budget, calib_batches, batch_size = (
        o.candidates,
        o.time_budget,
        o.calib_batches,
        o.batch_size,
    )
    calib_split, val_images, tolerance, multiple, top_k = (
        o.calib_split,
        o.val_images,
        o.tolerance,
        o.multiple,
        o.top_k,
    )
    if candidates is None and time_budget is None:
        candidates = 100
    R = default_ratio_max(flops) if o.ratio_max is None else float(o.ratio_max)
    if budget is None:  # before any data is loaded: an unreachable target fails at once
        require_reachable(graph, float(flops), o.max_ratio, "eagleeye")
    bundle = _resolve_data(data, context.meta)
    dev = resolve_device(o.device)
    dev = init_distributed(dev).device(dev)

    t0 = time.perf_counter()
    model = model.eval()
    calib_ds = getattr(bundle, calib_split, None)
    if calib_ds is None:
        raise DataError(f"the data has no {calib_split!r} split to calibrate BatchNorm on")
    calib = cache_batches(
        calib_ds,
        batch_size=batch_size,
        n_batches=calib_batches,
        shuffle=True,
        seed=seed,
        device=dev,
        with_targets=False,
    )
    val = cache_batches(_subset(bundle.val, val_images, seed), batch_size=max(batch_size, 256), device=dev)
    scorer = Scorer(model, graph, calib, val, dev)
    data_seconds = time.perf_counter() - t0

    key = search_id(
        {
            "method": "eagleeye",
            "seed": seed,
            "flops": float(flops),
            "ratio_max": R,
            "tolerance": tolerance,
            "multiple": multiple,
            "calib_batches": calib_batches,
            "batch_size": batch_size,
            "calib_split": calib_split,
            "val_images": val_images,
            "data": getattr(bundle, "name", None),
            "groups": [[g.name, int(g.size)] for g in graph.prunable],
            "macs": int(graph.full.macs),
            **({"max_ratio": o.max_ratio} if o.max_ratio != 0.95 else {}),
            **({"budget": [budget.kind, budget.fraction]} if budget is not None else {}),
            **(
                {}
                if o.sampling == "paper" or budget is not None
                else {"sampling": [o.sampling, o.random_candidates, o.local_sigma]}
            ),
        }
    )

    importance = graph.importance()  # L1 per channel, computed once for the whole search

    def plan_of(counts: dict[str, int]) -> Any:
        return graph.plan_from_counts(
            {k: int(v) for k, v in counts.items()}, method="eagleeye", seed=seed, importance=importance
        )

    # guided sampling (the uniform plan, random draws, then local moves around the best) is
    # defined over FLOPs; under another cost budget the draws are the paper's, rescaled to it
    guided = o.sampling == "guided" and budget is None
    block = o.random_candidates
    parents: dict[int, list[dict[str, int]]] = {}  # round -> the best three of the rounds before

    def strategy(i: int) -> Strategy:
        if guided and i == 0:
            return uniform_strategy(
                graph, flops, index=0, tolerance=tolerance, multiple=multiple, max_ratio=o.max_ratio
            )
        if guided and i >= block:
            around = parents[i // block]
            return perturb_strategy(
                graph, flops, around[i % len(around)], seed=seed, index=i, sigma=o.local_sigma,
                tolerance=tolerance, multiple=multiple, max_ratio=o.max_ratio,
            )  # fmt: skip
        return sample_strategy(
            graph,
            flops,
            seed=seed,
            index=i,
            ratio_max=R,
            tolerance=tolerance,
            multiple=multiple,
            budget=budget,
            max_ratio=o.max_ratio,
        )

    def evaluate(i: int) -> dict[str, Any]:
        s = strategy(i)
        sub = scorer.build(plan_of(s.counts))
        score = scorer.accuracy(sub)
        return {
            "score": score,
            "flops": s.flops,
            "macs": s.macs,
            "params": s.params,
            "ratios": s.ratios(),
            "counts": s.counts,
            "drawn": s.drawn,
            "attempts": s.attempts,
            **({budget.kind: s.cost} if budget is not None else {}),
        }

    def run(n: int | None, seconds: float | None) -> Any:
        with torch.no_grad():
            return run_search(
                evaluate,
                candidates=n,
                time_budget=seconds,
                candidates_file=context.candidates_file,
                search_key=key,
                progress=context.progress,
                description=f"eagleeye @ {flops:g} {budget.kind if budget is not None else 'FLOPs'}",
            )

    if guided:
        # rounds of `block` candidates: the uniform plan and random draws, then local moves
        # around the best three of the rounds before (index-deterministic, so a rerun resumes)
        records: dict[int, dict[str, Any]] = {}
        t_start, result, evaluated = time.perf_counter(), None, 0
        for r in itertools.count():
            end = (r + 1) * block if candidates is None else min((r + 1) * block, candidates)
            left = None if time_budget is None else time_budget - (time.perf_counter() - t_start)
            if left is not None and left <= 0 and records:
                break
            if r:
                done = sorted(records.values(), key=lambda x: (-float(x["score"]), int(x["index"])))
                parents[r] = [dict(x["counts"]) for x in done[:3]]
            part = run(end, left)
            records.update({int(x["index"]): x for x in part.records})
            evaluated += part.evaluated
            result = part
            if part.stopped_by == "time" or (candidates is not None and end >= candidates):
                break
        assert result is not None
        result.records = [records[k] for k in sorted(records)]
        result.seconds = time.perf_counter() - t_start
        result.evaluated, result.resumed = evaluated, len(records) - evaluated
    else:
        result = run(candidates, time_budget)
    ranked = result.ranked()
    if not ranked:
        raise BudgetError(
            "the search scored no candidate within its budget; raise --time-budget or --candidates"
        )

    chosen = ranked[0]
    finetuned: list[dict[str, Any]] = []
    n_val = sum(int(y.numel()) for _, y in val)
    finals = finalists(
        ranked,
        top_k=top_k,
        rule=o.top_k_rule,
        z=o.uncertainty_z,
        n_val=n_val,
        uniform_index=0 if guided else None,
    )
    holdout = 0
    if len(finals) > 1:
        from compressor.train import finetune

        ft_data, holdout = _finetune_split(bundle, o.finetune_holdout, seed)
        ft_scorer = scorer if not holdout else Scorer(
            model, graph, calib, cache_batches(ft_data.val, batch_size=max(batch_size, 256), device=dev), dev
        )  # fmt: skip
        t0, k = time.perf_counter(), len(finals)
        for i, rec in enumerate(finals):
            sub = scorer.build(plan_of(rec["counts"]))
            res = finetune(sub, ft_data, epochs=o.finetune_epochs, device=str(dev), seed=seed, progress=False)
            ft = ft_scorer.accuracy(res.model.to(dev))
            finetuned.append({"index": int(rec["index"]), "score": float(rec["score"]), "finetuned": ft})
            if context.progress:
                _topk_line(i + 1, k, rec, ft, time.perf_counter() - t0)
        best_ft = max(finetuned, key=lambda r: (r["finetuned"], -r["index"]))
        chosen = next(r for r in ranked if int(r["index"]) == best_ft["index"])

    plan = plan_of(chosen["counts"])
    plan.flops_target = float(flops) if budget is None else None
    if budget is not None:
        plan.info["budget"] = {
            "kind": budget.kind,
            "fraction": budget.fraction,
            "reached": chosen.get(budget.kind),
        }
    if plan.input_shape is None and getattr(graph, "input_shape", None) is not None:
        plan.input_shape = [int(s) for s in graph.input_shape]
    plan.info.update(
        {
            "score": float(chosen["score"]),
            "score_metric": "top1 after adaptive BN on data.val (percent)",
            "candidate": int(chosen["index"]),
            "flops": float(chosen["flops"]),
            "macs": int(chosen["macs"]),
            "params": int(chosen["params"]),
            "ratio_max": R,
            "tolerance": tolerance,
            "calib_batches": len(calib),
            "calib_split": calib_split,
            "batch_size": batch_size,
            "val_images": n_val,
            "candidates_scored": len(result.records),
            "candidates_resumed": result.resumed,
            "stopped_by": result.stopped_by,
            "search_seconds": result.seconds,
            "data_seconds": data_seconds,
            "world_size": result.world_size,
            "best_candidates": [
                {"index": int(r["index"]), "score": float(r["score"]), "flops": float(r["flops"])}
                for r in ranked[: max(top_k, 5)]
            ],
            "search_key": key,
            "sampling": o.sampling,
        }
    )
    uni = [n for n, r in enumerate(ranked) if int(r["index"]) == 0]
    if guided and uni:
        plan.info.update({"uniform_rank": uni[0] + 1, "uniform_score": float(ranked[uni[0]]["score"])})
    if finetuned:
        plan.info["finetuned"] = finetuned
        plan.info["finetune_epochs"] = o.finetune_epochs
        plan.info["finalists_rule"] = o.top_k_rule
        plan.info["finetune_scored_on"] = (
            f"{holdout} held-out training images" if holdout else f"{n_val} search-validation images"
        )
    return plan


# ---------------------------------------------------------------------------------------------
# what the method adds to a run's report and dry run
# ---------------------------------------------------------------------------------------------
def describe(info: Mapping[str, Any]) -> str:
    """The report's search summary: how candidates were scored and why the chosen one won."""
    if info.get("score") is None:
        return ""
    nb = info.get("calib_batches")
    text = (
        f", scored by top-1 after adaptive BN ({nb} calibration batch{'es' if nb != 1 else ''}) on "
        f"{info.get('val_images')} search-validation images; chosen #{info.get('candidate')} "
        f"(score {info['score']:.2f}%"
    )
    topk = [t for t in info.get("finetuned") or [] if isinstance(t, dict)]
    ep = info.get("finetune_epochs")
    return text + (
        f", the best of {len(topk)} finalists after {ep} epoch{'s' if ep != 1 else ''} of fine-tuning each, "
        f"scored on {info.get('finetune_scored_on') or 'the search-validation images'})"
        if topk
        else ", the best score)"
    )


def estimate(options: EagleEyeOptions, cost: SearchCost) -> tuple[float, str]:
    """Seconds of the search: each candidate's calibration and scoring passes on the slimmed
    model (~``flops`` of the full model's time), plus the finalists' fine-tunes."""
    n = options.candidates if options.candidates is not None else 100
    per_img = cost.seconds_per_image
    per_cand = (options.calib_batches * options.batch_size + cost.n_val) * per_img * cost.flops + 0.05
    finals = options.top_k + 1 if options.top_k > 1 else 0  # at most top_k by score and the uniform plan
    seconds = n * per_cand + finals * options.finetune_epochs * cost.n_train * per_img * 3 * cost.flops
    what = (
        f"eagleeye: {n} candidates at {cost.flops:g} FLOPs, adaptive BN on {options.calib_batches} "
        f"batches, scored on {cost.n_val} images"
    )
    return seconds, what


eagleeye = register_method(
    MethodSpec(
        name="eagleeye",
        search=search,
        options=EagleEyeOptions,
        summary="random per-layer strategies ranked by accuracy after adaptive BN (needs data)",
        needs_data=True,
        scores_candidates=True,
        score_label="adaptive-BN top-1, search-val (%)",
        describe=describe,
        estimate=estimate,
    )
)
