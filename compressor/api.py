"""Library functions behind ``compress profile``, ``compress search`` and ``compress prune``
(the CLI only calls these).

Input shapes are C,H,W (:mod:`compressor.shapes`): the flag, else the checkpoint's meta.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from compressor.errors import BudgetError, UsageError, ValidationError

#: Largest error of a slim model against the masked original, relative to the output scale
#: (:meth:`ChannelGraph.verify`), that ``prune`` accepts.
PRUNE_REL_TOL = 1e-3

#: Input shape used by ``compress profile`` when neither the flag nor the checkpoint gives one.
IMAGENET_SHAPE = (3, 224, 224)


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
    batch: int = 1,
    trust_pickle: bool = False,
    groups: bool = True,
) -> dict[str, Any]:
    """MACs and parameters in total and per layer (for a batch of ``batch``), and the channel groups.

    ``input_shape`` is C,H,W; default: the checkpoint's, else ImageNet's 3,224,224. The result's
    ``input_shape`` is the tensor shape counted, batch first.
    """
    from compressor.graph import build_graph, count
    from compressor.shapes import resolve_input_shape

    if batch < 1:
        raise UsageError(f"--batch {batch} must be at least 1")
    model, meta = load_model(checkpoint, arch=arch, arch_kwargs=arch_kwargs, trust_pickle=trust_pickle)
    sample = resolve_input_shape(input_shape, meta, default=IMAGENET_SHAPE)
    shape = (batch, *sample)
    cost = count(model, shape)
    out: dict[str, Any] = {
        "arch": meta.get("arch"),
        "input_shape": list(shape),
        "macs": cost.macs,
        "params": cost.params,
        "layers": cost.rows,
    }
    if groups:
        g = build_graph(model, input_shape=(1, *sample))
        out["groups"] = g.summary()
        out["prunable_groups"] = len(g.prunable)
        out["frozen_groups"] = len(g.frozen)
    return out


# ---------------------------------------------------------------------------------------------
# checkpoint -> plan, with any registered method
# ---------------------------------------------------------------------------------------------
@dataclass
class MethodInputs:
    """A loaded checkpoint ready for a method: the model, its meta, its channel graph (traced at
    batch 1), its input shape C,H,W, and the data (``None`` when the method needs none and none
    was named)."""

    model: nn.Module
    meta: dict[str, Any]
    graph: Any
    input_shape: tuple[int, int, int]
    data: Any
    data_spec: str | None


def method_options(
    method: str, explicit: Mapping[str, Any], implicit: Mapping[str, Any] | None = None
) -> Any:
    """The method's options object: every ``explicit`` value that is set (not None), which the
    method must declare (else :class:`UsageError` naming the flag and the method's options), plus
    each ``implicit`` value that the method declares (the device, the target's channel multiple...)."""
    from compressor.methods import get_method

    spec = get_method(method)
    given = {k: v for k, v in explicit.items() if v is not None}
    unknown = [k for k in given if not spec.has_option(k)]
    if unknown:
        flags = ", ".join("--" + o.replace("_", "-") for o in spec.option_names()) or "(none)"
        raise UsageError(
            f"--{unknown[0].replace('_', '-')} is not an option of method {method!r}; its options: {flags} "
            "(or --option KEY=VALUE)"
        )
    values = {k: v for k, v in (implicit or {}).items() if v is not None and spec.has_option(k)}
    values.update(given)
    return spec.make_options(values)


def load_for_method(
    checkpoint: str | os.PathLike[str],
    *,
    needs_data: bool,
    what: str = "this method",
    data: str | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | None = None,
    default_shape: tuple[int, int, int] | None = None,
) -> MethodInputs:
    """Load ``checkpoint``, its input shape (C,H,W: the flag, else the meta, else
    ``default_shape``) and graph, and the data a method scores on: ``data``, else the checkpoint's
    ``meta["dataset"]`` when ``needs_data`` (every method is handed the data; deterministic ones
    ignore it)."""
    from compressor.checkpoint import load_checkpoint
    from compressor.graph import build_graph
    from compressor.shapes import resolve_input_shape

    model, meta = load_checkpoint(checkpoint, arch=arch, trust_pickle=trust_pickle)
    meta = dict(meta or {})
    sample = resolve_input_shape(
        input_shape, meta, default=default_shape, source=f"checkpoint {str(checkpoint)!r}"
    )
    meta["input_shape"] = list(sample)  # the data's transforms follow the model's input
    spec_text = data or (meta.get("dataset") if needs_data else None)
    if needs_data and not spec_text:
        raise UsageError(
            f"{what} scores candidates on data and the checkpoint names no dataset: pass --data "
            "(mnist5k, cifar10:DIR or imagefolder:DIR)"
        )
    bundle = None
    if spec_text:
        from compressor.data import load_data

        bundle = load_data(spec_text, meta=meta)
    graph = build_graph(model, input_shape=(1, *sample))
    return MethodInputs(model, meta, graph, sample, bundle, spec_text)


def _load_target_budget(target: str | None, latency: float | None) -> Any:
    """The deploy target named by ``target`` (None without one); ``latency`` needs it and a fraction
    in (0, 1] (:class:`UsageError` otherwise)."""
    tgt = None
    if target is not None:
        from compressor.targets import load_target

        tgt = load_target(target)
    if latency is not None and (tgt is None or not 0 < float(latency) <= 1):
        raise UsageError(
            f"--latency {latency} needs --target and a fraction in (0, 1] of the model's predicted latency"
        )
    return tgt


def _latency_budget(inputs: MethodInputs, tgt: Any, latency: float, progress: bool) -> tuple[Any, Any]:
    """(latency model, CostBudget) keeping ``latency`` of the model's latency as the target's latency
    model predicts it (measured once per target and model, then read from the cache)."""
    from compressor.latency import build_latency_model
    from compressor.methods.spec import CostBudget

    m = int(tgt.export.channel_multiple)
    lm = build_latency_model(
        inputs.model, inputs.graph, tgt, tuple(inputs.input_shape), multiple=m, progress=progress
    )
    budget = CostBudget("latency", float(latency), lm.fraction, snap=lambda c: lm.snap(c, m), model=lm)
    floor = lm.fraction(lm.floor_counts(m))
    if float(latency) < floor:
        raise BudgetError(
            f"--latency {latency:g} is below what the latency model of target {tgt.name!r} predicts for the "
            f"most-pruned plan at its x{m} channel multiple ({floor:.3f} of the original's latency: the "
            "layers that cannot be pruned, the runtime's fixed cost and its channel steps); ask for at "
            "least that, or use a faster target runtime"
        )
    return lm, budget


def _check_predicted(lm: Any, budget: Any, plan: Any) -> None:
    """Record the plan's predicted latency fraction; above the budget (1% slack for the last channel
    step) is a :class:`BudgetError` (exit 3) saying what was reached."""
    got = float(budget.cost(lm.plan_counts(plan)))
    plan.info["latency_predicted_fraction"] = got
    if got > budget.fraction * 1.01:
        raise BudgetError(
            f"the method's plan is predicted at {got:.3f} of the original's latency, above the budget "
            f"{budget.fraction:g}; nothing was written (raise --latency, or try --method halp)"
        )


def search_checkpoint(
    checkpoint: str | os.PathLike[str],
    *,
    method: str = "eagleeye",
    flops: float | None = None,
    data: str | None = None,
    out: str | os.PathLike[str] | None = "plan.json",
    seed: int = 0,
    arch: str | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | None = None,
    device: str = "auto",
    candidates_file: str | os.PathLike[str] | None = None,
    progress: bool = True,
    target: str | None = None,
    latency: float | None = None,
    **options: Any,
) -> tuple[Any, dict[str, Any]]:
    """Load ``checkpoint`` (and its data, for methods that need data), run ``method`` and save the
    plan to ``out`` (rank 0 only under torchrun). Returns ``(plan, summary)``.

    ``options`` go to the method; one it does not declare is a :class:`UsageError`. ``device``
    "auto" leaves the method's own default. ``candidates_file`` (for methods that score
    candidates) defaults to ``<out stem>.candidates.jsonl`` beside ``out``. ``target``: a deploy
    target whose channel multiple is the method's ``multiple`` unless given; ``latency`` (with
    ``target``): search for this fraction of the model's latency as the target's latency model
    predicts it, instead of ``flops``.
    """
    from compressor.device import dist_env
    from compressor.methods import MethodContext, check_flops, get_method

    spec = get_method(method)
    tgt = _load_target_budget(target, latency)
    if latency is None:
        check_flops(flops)
    if tgt is not None and spec.has_option("multiple") and "multiple" not in options:
        options = {**options, "multiple": int(tgt.export.channel_multiple)}
    opts = method_options(method, options, {"device": None if device == "auto" else device})
    t0 = time.perf_counter()
    inputs = load_for_method(
        checkpoint,
        needs_data=spec.needs_data,
        what=f"method {method!r}",
        data=data,
        arch=arch,
        trust_pickle=trust_pickle,
        input_shape=input_shape,
    )
    if not spec.scores_candidates:
        candidates_file = None
    elif candidates_file is None and out is not None:
        candidates_file = Path(out).with_name(Path(out).stem + ".candidates.jsonl")
    load_seconds = time.perf_counter() - t0
    lm = budget = None
    if latency is not None:
        lm, budget = _latency_budget(inputs, tgt, latency, progress)
    context = MethodContext(
        progress=progress, candidates_file=candidates_file, meta=inputs.meta, budget=budget
    )
    plan = spec(
        inputs.model, inputs.graph, flops=flops, data=inputs.data, seed=seed, options=opts, context=context
    )
    if lm is not None:
        _check_predicted(lm, budget, plan)
    if plan.input_shape is None:
        plan.input_shape = [1, *inputs.input_shape]
    if plan.seed is None:
        plan.seed = seed
    graph = inputs.graph
    cost = graph.cost(plan)
    full = graph.full
    summary = {
        "method": method,
        "checkpoint": str(checkpoint),
        "data": inputs.data_spec,
        "flops_target": flops,
        "macs_before": int(full.macs),
        "macs_after": int(cost.macs),
        "flops_ratio": cost.macs / full.macs if full.macs else 1.0,
        "params_before": int(full.params),
        "params_after": int(cost.params),
        "groups_pruned": sum(1 for g, k in plan.groups.items() if len(k) < plan.group_sizes[g]),
        "groups": len(plan.groups),
        "latency_target": latency,
        "latency_predicted_fraction": plan.info.get("latency_predicted_fraction"),
        "score": plan.info.get("score"),
        "candidate": plan.info.get("candidate"),
        "candidates_file": str(candidates_file) if candidates_file is not None else None,
        "load_seconds": load_seconds,
        "seconds": time.perf_counter() - t0,
        "plan": str(out) if out is not None else None,
    }
    rank, _ = dist_env()
    if out is not None and rank == 0:
        plan.save(out)
    return plan, summary


def prune(
    checkpoint: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    method: str = "l1-uniform",
    flops: float | None = 0.5,
    plan: str | os.PathLike[str] | None = None,
    data: str | None = None,
    arch: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    trust_pickle: bool = False,
    verify: bool = True,
    seed: int = 0,
    progress: bool = False,
    target: str | None = None,
    latency: float | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Prune a checkpoint by ``method`` (or apply a saved ``plan``), slim it and save it.

    The saved checkpoint's meta records the input shape (C,H,W) it was traced with, so exporting
    it needs no ``--input-shape``. ``data`` is used by methods that need data (default: the
    checkpoint's dataset). With ``verify`` the slim model is checked against the masked original
    (``equivalence_rel_err``: max error relative to the output scale); above
    :data:`PRUNE_REL_TOL` it is a :class:`ValidationError` (exit 4) and nothing is written.
    ``out`` may not be one of the inputs (:class:`UsageError`). ``target``: a deploy target whose
    channel multiple is the method's ``multiple`` unless given; ``latency`` (with ``target``):
    prune to this fraction of the full model's latency as the target's latency model predicts it,
    instead of ``flops``.
    """
    from compressor.checkpoint import save_checkpoint
    from compressor.graph import count, slim
    from compressor.methods import MethodContext, check_flops, get_method
    from compressor.plan import Plan

    out = Path(out)
    if out.exists() and out.is_dir():
        raise UsageError(f"output {str(out)!r} is a directory; give a file name such as slim.pt")
    from compressor.io import refuse_overwriting_inputs

    refuse_overwriting_inputs(out, {"checkpoint": checkpoint, "--plan": plan})
    spec = None
    tgt = _load_target_budget(target, latency)
    if plan is None:
        if latency is None:
            check_flops(flops)
        spec = get_method(method)
        if tgt is not None and spec.has_option("multiple") and "multiple" not in options:
            options = {**options, "multiple": int(tgt.export.channel_multiple)}
        opts = method_options(method, options)  # fail on a bad name or option before loading anything
    elif options:
        raise UsageError(f"--plan applies a saved plan: method options ({', '.join(options)}) do not apply")
    inputs = load_for_method(
        checkpoint,
        needs_data=spec is not None and spec.needs_data,
        what=f"method {method!r}",
        data=data if spec is not None else None,
        arch=arch,
        trust_pickle=trust_pickle,
        input_shape=input_shape,
        default_shape=IMAGENET_SHAPE,
    )
    model, graph, meta = inputs.model, inputs.graph, inputs.meta
    if spec is None:
        assert plan is not None
        the_plan = Plan.load(plan)
    else:
        lm = budget = None
        if latency is not None:
            lm, budget = _latency_budget(inputs, tgt, latency, progress)
        ctx = MethodContext(progress=progress, meta=meta, budget=budget)
        the_plan = spec(model, graph, flops=flops, data=inputs.data, seed=seed, options=opts, context=ctx)
        if lm is not None:
            _check_predicted(lm, budget, the_plan)
    shape = (1, *inputs.input_shape)
    small = slim(model, the_plan, graph=graph)
    before, after = count(model, shape), count(small, shape)
    rel_err = graph.verify(small, the_plan) if verify else None
    if rel_err is not None and not rel_err <= PRUNE_REL_TOL:  # a failed check writes nothing
        raise ValidationError(
            f"the slim model differs from the masked original: max error relative to output scale "
            f"{rel_err:.3g} > {PRUNE_REL_TOL:g}; {str(out)!r} was not written"
        )
    meta["pruned"] = {"method": the_plan.method, "flops_ratio": after.macs / before.macs}
    save_checkpoint(small, out, meta=meta)
    return {
        "method": the_plan.method,
        "out": str(out),
        "before": before.to_dict(),
        "after": after.to_dict(),
        "flops_ratio": after.macs / before.macs,
        "params_ratio": after.params / before.params,
        "equivalence_rel_err": rel_err,
        "multiple": getattr(opts, "multiple", None) if spec is not None else None,
        "latency_predicted_fraction": the_plan.info.get("latency_predicted_fraction"),
        "plan": the_plan.to_dict(),
    }
