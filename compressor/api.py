"""Library functions behind ``compress profile`` and ``compress prune`` (the CLI only calls these)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from compressor.errors import UsageError


def input_shape_for(
    meta: dict[str, Any] | None, input_shape: tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """The model's input shape with batch 1: the flag, else the checkpoint's meta, else ImageNet's."""
    if input_shape is not None:
        return tuple(input_shape)
    shape = (meta or {}).get("input_shape")
    if shape:
        return (1, *[int(s) for s in shape])
    return (1, 3, 224, 224)


def load_model(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    trust_pickle: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint (any accepted format), or an untrained ``arch`` when no checkpoint is given."""
    from compressor.checkpoint import load_checkpoint
    from compressor.models import build_model, canonical_arch

    if checkpoint is not None:
        return load_checkpoint(checkpoint, arch=arch, arch_kwargs=arch_kwargs, trust_pickle=trust_pickle)
    if arch is None:
        raise UsageError("give a checkpoint or --arch (e.g. --arch resnet18)")
    model = build_model(arch, **(arch_kwargs or {}))
    return model.eval(), {"arch": canonical_arch(arch), "arch_kwargs": dict(arch_kwargs or {})}


def profile(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    trust_pickle: bool = False,
    groups: bool = True,
) -> dict[str, Any]:
    """MACs and parameters in total and per layer, and the channel groups the engine finds."""
    from compressor.graph import build_graph, count

    model, meta = load_model(checkpoint, arch=arch, arch_kwargs=arch_kwargs, trust_pickle=trust_pickle)
    shape = input_shape_for(meta, input_shape)
    cost = count(model, shape)
    out: dict[str, Any] = {
        "arch": meta.get("arch"),
        "input_shape": list(shape),
        "macs": cost.macs,
        "params": cost.params,
        "layers": cost.rows,
    }
    if groups:
        g = build_graph(model, input_shape=shape)
        out["groups"] = g.summary()
        out["prunable_groups"] = len(g.prunable)
        out["frozen_groups"] = len(g.frozen)
    return out


def prune(
    checkpoint: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    method: str = "l1-uniform",
    flops: float | None = 0.5,
    plan: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    trust_pickle: bool = False,
    verify: bool = True,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Prune a checkpoint by ``method`` (or apply a saved ``plan``), slim it and save it."""
    from compressor.checkpoint import save_checkpoint
    from compressor.graph import build_graph, count, slim
    from compressor.methods import check_flops, get_method
    from compressor.plan import Plan

    out = Path(out)
    if out.exists() and out.is_dir():
        raise UsageError(f"output {str(out)!r} is a directory; give a file name such as slim.pt")
    if plan is None:
        check_flops(flops)
        fn = get_method(method)  # fail on a bad name before loading anything
    model, meta = load_model(checkpoint, arch=arch, trust_pickle=trust_pickle)
    shape = input_shape_for(meta, input_shape)
    graph = build_graph(model, input_shape=shape)
    if plan is not None:
        the_plan = Plan.load(plan)
    else:
        the_plan = fn(model, graph, flops=flops, seed=seed, **options)
    small = slim(model, the_plan, graph=graph)
    before, after = count(model, shape), count(small, shape)
    err = graph.verify(small, the_plan) if verify else None
    meta = dict(meta)
    meta["pruned"] = {"method": the_plan.method, "flops_ratio": after.macs / before.macs}
    save_checkpoint(small, out, meta=meta)
    return {
        "method": the_plan.method,
        "out": str(out),
        "before": before.to_dict(),
        "after": after.to_dict(),
        "flops_ratio": after.macs / before.macs,
        "params_ratio": after.params / before.params,
        "equivalence_error": err,
        "plan": the_plan.to_dict(),
    }
