"""The channel graph of a model: coupled-channel groups, importance, plans, costs and the masked
reference a slimmed model is verified against.

Union-find over the label pairs recorded by the propagation pass gives *classes* (labels that are
one channel: they live or die together); label spaces tie classes into *groups* (the channels of
the same producers). A plan keeps classes of groups.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from compressor.errors import UsageError
from compressor.graph.cost import Cost, CostModel, CostTerm, counts_for_target
from compressor.graph.groups import Group, partition
from compressor.graph.labels import LabelState, ModuleRecord, tensors
from compressor.graph.propagate import Propagation, fetch_attr
from compressor.graph.registry import handler_for
from compressor.plan import Plan

PlanLike = Plan | dict[str, Sequence[int]]


class ChannelGraph:
    """Coupled-channel groups of a model, with an analytic cost model and plan helpers.

    >>> g = build_graph(torchvision.models.resnet18(), input_shape=(1, 3, 64, 64))
    >>> plan = g.plan_from_counts(g.counts_for_flops(0.5), method="l1-uniform")
    >>> small = slim(model, plan, graph=g)
    """

    def __init__(
        self,
        model: nn.Module,
        gm: fx.GraphModule,
        st: LabelState,
        input_shape: tuple[int, ...],
        unhandled_macs: int,
    ) -> None:
        """``unhandled_macs``: MACs the pass counted outside the handlers' cost terms."""
        self.model = model
        self.gm = gm
        self.input_shape = tuple(input_shape)
        self.state = st
        self.records = st.records
        self.n_labels = st.n
        part = partition(st)
        self.partition = part
        self.label_class = part.label_class
        self.n_classes = part.n_classes
        self.groups = part.groups
        self.class_group_index = part.class_group_index
        self.class_pos = part.class_pos
        self._at_risk = part.at_risk
        self._by_name = {g.name: g for g in self.groups}
        #: per grouped conv with a choice, how it is cut: "whole" or "within" groups
        self.grouped: dict[str, str] = {
            r.name: r.extra["grouped"] for r in st.records.values() if "grouped" in r.extra
        }
        self._cost_model = CostModel(
            self._cost_terms(),
            self.label_class,
            self.n_classes,
            const_macs=unhandled_macs,
            total_params=sum(p.numel() for p in model.parameters()),
        )
        self.full = self._cost_model.full
        self._scores: np.ndarray | None = None
        self._rank_cache: dict[str, np.ndarray] | None = None

    def _cost_terms(self) -> list[CostTerm]:
        """Every handled module's cost terms, then the traced parameters' (one per element)."""
        modules = dict(self.model.named_modules())
        terms: list[CostTerm] = []
        for rec in self.records.values():
            m = modules[rec.name]
            h = handler_for(m)
            if h is not None:
                terms.extend(h.cost(m, rec))
        for key, s in self.state.spaces.items():
            if key[0] == "param" and isinstance(t := fetch_attr(self.model, key[1]), nn.Parameter):
                terms.append(CostTerm(0, t.numel(), (torch.arange(s.start, s.start + s.size),)))
        return terms

    # ---------------------------------------------------------------- groups
    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if not g.frozen and g.size > 1]

    @property
    def frozen(self) -> list[Group]:
        return [g for g in self.groups if g.frozen]

    def group(self, name: str) -> Group:
        try:
            return self._by_name[name]
        except KeyError:
            raise UsageError(
                f"the model has no channel group {name!r}; groups: {', '.join(list(self._by_name)[:12])} ..."
            ) from None

    def summary(self) -> list[dict[str, Any]]:
        return [g.to_dict() for g in self.groups]

    # ---------------------------------------------------------------- importance
    def _producer_rows(self) -> Iterable[tuple[ModuleRecord, torch.Tensor]]:
        """(record, filters as rows (out_channels, D)) of every producer whose handler has filters."""
        modules = dict(self.model.named_modules())
        for rec in self.records.values():
            if rec.out_labels is None:
                continue
            m = modules[rec.name]
            h = handler_for(m)
            w = h.filters(m, rec) if h is not None else None
            if w is not None:
                yield rec, w

    def _class_scores(self) -> np.ndarray:
        if self._scores is None:
            score = np.zeros(self.n_classes, dtype=np.float64)
            for rec, w in self._producer_rows():
                assert rec.out_labels is not None
                np.add.at(
                    score, self.label_class[rec.out_labels.numpy()], w.abs().sum(1).double().cpu().numpy()
                )
            self._scores = score
        return self._scores

    def importance(self) -> dict[str, np.ndarray]:
        """L1 norm of each channel's filters, summed over a coupled group's producers."""
        score = self._class_scores()
        return {g.name: score[g.classes] for g in self.prunable}

    def channel_vectors(self, name: str) -> torch.Tensor:
        """(size, D): per channel of group ``name``, its producers' filters concatenated (EPruner)."""
        g = self.group(name)
        gi = self.groups.index(g)
        parts = []
        for rec, w in self._producer_rows():
            assert rec.out_labels is not None
            cls = self.label_class[rec.out_labels.numpy()]
            sel = self.class_group_index[cls] == gi
            if not sel.any():
                continue
            pos = self.class_pos[cls[sel]]
            rows = w[torch.from_numpy(np.nonzero(sel)[0])].double()
            counts = np.bincount(pos, minlength=g.size)
            if (counts == counts[0]).all() and counts[0] > 0:
                order = np.argsort(pos, kind="stable")
                parts.append(rows[torch.from_numpy(order)].reshape(g.size, -1))
            else:
                acc = torch.zeros(g.size, rows.shape[1], dtype=torch.float64)
                acc.index_add_(0, torch.from_numpy(pos), rows)
                parts.append(acc)
        if not parts:
            raise UsageError(f"group {name!r} has no producing layer with weights")
        return torch.cat(parts, dim=1).float()

    # ---------------------------------------------------------------- plans
    def keep_classes(self, plan: PlanLike) -> np.ndarray:
        """Keep flag per class for ``plan`` (checked against the groups: UsageError when it does not fit)."""
        keep = np.ones(self.n_classes, dtype=bool)
        groups = plan.groups if isinstance(plan, Plan) else plan
        if isinstance(plan, Plan):
            self._check_grouped(plan)
            for name, size in plan.group_sizes.items():
                if name in self._by_name and self._by_name[name].size != size:
                    raise UsageError(
                        f"plan group {name!r} has {size} channels but the model's has {self._by_name[name].size}: "
                        "the plan was made for another model"
                    )
        for name, kept in groups.items():
            g = self.group(name)
            if g.frozen:
                raise UsageError(f"plan prunes group {name!r}, which is frozen ({g.reason})")
            idx = np.asarray(sorted(set(int(i) for i in kept)), dtype=np.int64)
            if len(idx) == 0:
                raise UsageError(f"plan keeps no channel of group {name!r}; keep at least one")
            if idx.min() < 0 or idx.max() >= g.size:
                raise UsageError(
                    f"plan keeps channel index out of range for group {name!r}: indices must be in 0..{g.size - 1}"
                )
            keep[g.classes] = False
            keep[g.classes[idx]] = True
        return self._keep_producers(keep)

    def _check_grouped(self, plan: Plan) -> None:
        """A plan records how each grouped conv was cut; the graph must cut it the same way."""
        recorded = (plan.info or {}).get("grouped_convs") or {}
        if not isinstance(recorded, dict):
            return
        for name, how in recorded.items():
            if name in self.grouped and self.grouped[name] != how:
                raise UsageError(
                    f"the plan cuts grouped conv {name!r} {how} groups but this graph cuts it "
                    f"{self.grouped[name]} groups: build the graph with grouped={how!r} or make a new plan"
                )

    def _keep_producers(self, keep: np.ndarray) -> np.ndarray:
        """A plan never empties a layer: a producer that would lose every output channel (a
        concatenation feeding a depthwise conv can put all kept channels on one side) keeps its
        most important one."""
        if self._at_risk:
            score = self._class_scores()
            for pcls in self._at_risk:
                if not keep[pcls].any():
                    keep[pcls[np.argmax(score[pcls])]] = True
        return keep

    def keep_labels(self, plan: PlanLike) -> torch.Tensor:
        """Keep flag per label for ``plan``."""
        return torch.from_numpy(self.keep_classes(plan)[self.label_class])

    def plan_from_counts(
        self,
        counts: dict[str, int],
        *,
        method: str,
        seed: int | None = None,
        importance: dict[str, np.ndarray] | None = None,
        flops_target: float | None = None,
        **info: Any,
    ) -> Plan:
        """Keep the ``counts[name]`` most important channels of each listed group."""
        imp = importance if importance is not None else self.importance()
        groups: dict[str, list[int]] = {}
        sizes: dict[str, int] = {}
        for name, k in counts.items():
            g = self.group(name)
            k = int(min(max(k, 1), g.size))
            if k == g.size:
                continue
            order = np.argsort(-np.asarray(imp[name]), kind="stable")
            groups[name] = sorted(int(i) for i in order[:k])
            sizes[name] = g.size
        if self.grouped:
            info = {"grouped_convs": dict(self.grouped), **info}
        return Plan(
            method=method,
            groups=groups,
            group_sizes=sizes,
            seed=seed,
            input_shape=list(self.input_shape),
            flops_target=flops_target,
            info=info,
        )

    def plan_from_ratios(self, ratios: dict[str, float], **kw: Any) -> Plan:
        """Remove ``floor(r * n)`` channels of each group (never all of them)."""
        counts = {n: self.group(n).size - math.floor(r * self.group(n).size) for n, r in ratios.items()}
        return self.plan_from_counts(counts, **kw)

    # ---------------------------------------------------------------- costs
    def cost(self, plan: PlanLike | None = None) -> Cost:
        """Analytic MACs and parameters of the model slimmed by ``plan``."""
        keep = np.ones(self.n_classes, dtype=bool) if plan is None else self.keep_classes(plan)
        return self._cost_model.cost_of_keep(keep)

    def cost_of_counts(self, counts: dict[str, int]) -> Cost:
        """Cost when each listed group keeps its ``counts[name]`` top-L1 channels (fast)."""
        keep = np.ones(self.n_classes, dtype=bool)
        rank = self._ranks()
        for name, k in counts.items():
            g = self._by_name[name]
            keep[g.classes] = rank[name] < max(int(k), 1)
        return self._cost_model.cost_of_keep(self._keep_producers(keep))

    def _ranks(self) -> dict[str, np.ndarray]:
        if self._rank_cache is None:
            self._rank_cache = {}
            for name, v in self.importance().items():
                order = np.argsort(-v, kind="stable")
                r = np.empty(len(v), dtype=np.int64)
                r[order] = np.arange(len(v))
                self._rank_cache[name] = r
        return self._rank_cache

    def counts_for_flops(
        self,
        fraction: float,
        shape: dict[str, float] | None = None,
        *,
        multiple: int = 1,
        max_ratio: float = 0.95,
    ) -> dict[str, int]:
        """Kept channels per prunable group so MACs ~= ``fraction`` of the full model.

        Pruning ratios ``s * shape[g]`` (capped at ``max_ratio``) share one scale ``s`` found by
        bisection; ``shape=None`` prunes every group by the same ratio. Kept widths are rounded
        to ``multiple`` channels where a group is large enough. When the target cannot be
        reached the most-pruned counts are returned (the caller reports the achieved ratio).
        """
        names = [g.name for g in self.prunable]
        if shape is not None:
            names = [n for n in names if n in shape]
        sizes = {n: self._by_name[n].size for n in names}
        rel = {n: 1.0 if shape is None else float(shape[n]) for n in names}
        return counts_for_target(
            lambda c: self.cost_of_counts(c).macs,
            sizes,
            rel,
            fraction * self.full.macs,
            multiple=multiple,
            max_ratio=max_ratio,
        )

    # ---------------------------------------------------------------- masks
    @torch.no_grad()
    def masked_forward(self, plan: PlanLike, *inputs: torch.Tensor) -> Any:
        """The original model with every pruned channel forced to zero wherever it flows."""
        st = self.state
        st.recording = False
        st.mask = self.keep_labels(plan)
        try:
            was = self.model.training
            self.model.eval()
            out = Propagation(self.gm, st).run(*inputs)
            self.model.train(was)
        finally:
            st.recording = True
            st.mask = None
        return out

    @torch.no_grad()
    def verify(
        self,
        slim_model: nn.Module,
        plan: PlanLike,
        inputs: Sequence[torch.Tensor] | None = None,
    ) -> float:
        """The max error relative to the output scale (``rel_err``) between the masked original
        and ``slim_model`` on random inputs: ``max |masked - slim| / max |masked|`` (the larger
        over inputs and outputs), so it means the same for a trained net and for an untrained one
        whose outputs are tiny or huge (float32 agreement is ~1e-6). Already divided by the
        scale: compare it with a relative tolerance, never divide it again.
        """
        if inputs is None:
            gen = torch.Generator().manual_seed(0)
            shape = (2, *self.input_shape[1:])
            inputs = [torch.randn(shape, generator=gen) for _ in range(2)]
        was = slim_model.training
        slim_model.eval()
        worst = 0.0
        for x in inputs:
            ref = tensors(self.masked_forward(plan, x))
            got = tensors(slim_model(x))
            if len(ref) != len(got):
                return float("inf")
            for a, b in zip(ref, got):
                if a.shape != b.shape:
                    return float("inf")
                if a.numel():
                    scale = float(a.float().abs().max())
                    diff = float((a.float() - b.float()).abs().max())
                    worst = max(worst, diff / scale if scale > 0 else diff)
        slim_model.train(was)
        return worst
