"""Slimming: a new, physically smaller copy of a model that keeps the channels a plan keeps.

Every handled module is cut by its handler's ``slim`` hook; parameters used directly by the
traced graph (a layer scale, a LayerNorm traced through) are cut as boxes along the dimensions
whose labels were pruned. The original model is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from compressor.graph.build import build_graph
from compressor.graph.channel_graph import ChannelGraph, PlanLike
from compressor.graph.registry import handler_for
from compressor.plan import Plan


@torch.no_grad()
def slim(
    model: nn.Module,
    plan: PlanLike,
    *,
    graph: ChannelGraph | None = None,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """A new, physically smaller copy of ``model`` keeping the channels ``plan`` keeps."""
    if graph is None:
        shape = input_shape or (plan.input_shape if isinstance(plan, Plan) else None)
        graph = build_graph(model, input_shape=shape)
    keep_label = graph.keep_labels(plan)
    # share (not copy) the tensors that slimming replaces anyway; clone the leftovers below
    shared: dict[int, Any] = {}
    orig = dict(model.named_modules())
    for rec in graph.records.values():
        m = orig[rec.name]
        for t in list(m._parameters.values()) + list(m._buffers.values()):
            if t is not None:
                shared[id(t)] = t
    new = copy.deepcopy(model, memo=dict(shared))
    modules = dict(new.named_modules())
    for rec in graph.records.values():
        m = modules[rec.name]
        h = handler_for(m)
        if h is not None:
            h.slim(m, rec, keep_label)
    _slim_params(new, graph, keep_label)
    for m in new.modules():
        for k, p in m._parameters.items():
            if p is not None and id(p) in shared:
                m._parameters[k] = nn.Parameter(p.detach().clone(), p.requires_grad)
        for k, b in m._buffers.items():
            if b is not None and id(b) in shared:
                m._buffers[k] = b.clone()
    _sync_attrs(new)
    return new


def _slim_params(new: nn.Module, graph: ChannelGraph, keep_label: torch.Tensor) -> None:
    """Cut the tensors the traced graph reads directly (``get_attr``) as boxes."""
    for key, s in graph.state.spaces.items():
        if key[0] != "param":
            continue
        target = key[1]
        owner_name, _, pname = target.rpartition(".")
        owner = new.get_submodule(owner_name) if owner_name else new
        t = getattr(owner, pname)
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            continue
        keep_el = keep_label[s.start : s.start + s.size].view(t.shape)
        if bool(keep_el.all()):
            continue
        sliced = t.detach()
        for d in range(t.dim()):
            other = [i for i in range(t.dim()) if i != d]
            along = keep_el.any(dim=tuple(other)) if other else keep_el
            sliced = sliced.index_select(d, torch.nonzero(along).flatten().to(t.device))
        if sliced.numel() != int(keep_el.sum()):
            raise AssertionError(f"parameter {target} is not cut as a box")
        if isinstance(t, nn.Parameter):
            setattr(owner, pname, nn.Parameter(sliced.clone(), requires_grad=t.requires_grad))
        else:
            owner._buffers[pname] = sliced.clone()


def _sync_attrs(model: nn.Module) -> None:
    """Structural attributes of traced-through modules follow their (sliced) parameters."""
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.LayerNorm) and isinstance(w, torch.Tensor):
            m.normalized_shape = tuple(w.shape)
        elif isinstance(m, nn.modules.batchnorm._NormBase) and isinstance(w, torch.Tensor):
            m.num_features = w.shape[0]
