"""The search stage: run the method, then (with a latency budget) choose the plan that fits.

What the method is told comes from its :class:`~compressor.methods.MethodSpec`: its options (the
run's settings it declares, then the config's ``[method_options]``), the run's data (every method
gets it), and, for a method that scores candidates, ``candidates.jsonl`` to append to and resume
from.

Latency budget: when the target or ``latency_ms`` sets one, the chosen plan must meet it on ONNX
Runtime with the target's settings. The best few candidates (a method that scores candidates: by
score; other methods: the plan at the FLOPs target, then plans at 15%, 30%... lower FLOPs) are
slimmed, exported and timed, and the first that fits is chosen; when none fits,
:class:`BudgetStop` says what was reached.

Latency objective (``--latency F`` or ``--latency-ms MS`` given to the run): the target's latency
model (:mod:`compressor.latency`, measured once and cached) predicts each plan's latency, and the
method searches under that predicted latency (a :class:`~compressor.methods.spec.CostBudget` in
its context) instead of FLOPs; the timed candidates then show predicted and measured latency.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

from compressor.errors import carry, rebuild
from compressor.io import append_jsonl, read_jsonl
from compressor.pipeline.context import BudgetStop, RunContext
from compressor.pipeline.schema import LatencyCheckRow


def _spec(ctx: RunContext) -> Any:
    from compressor.methods import get_method

    return get_method(ctx.s.method)


def method_options(ctx: RunContext) -> Any:
    """The method's options: the run's settings it declares, then the config's [method_options]."""
    s, spec = ctx.s, _spec(ctx)
    from_run: dict[str, Any] = {
        "candidates": s.candidates,
        "calib_batches": s.calib_batches,
        "top_k": s.top_k,
        "batch_size": s.batch_size,
        "device": ctx.device,
    }
    if s.channel_multiple > 1:
        from_run["multiple"] = s.channel_multiple
        if not spec.has_option("multiple") and not ctx.multiple_noted:
            ctx.multiple_noted = True
            ctx.log.note(
                f"method {s.method!r} does not round kept widths to the target's channel multiple "
                f"({s.channel_multiple})"
            )
    values = {k: v for k, v in from_run.items() if spec.has_option(k)}
    values.update(s.method_options)
    return spec.make_options(values)


def latency_budget(ctx: RunContext) -> Any:
    """With a latency objective: the target's latency model (built or read from the cache), the
    budget in ms (``--latency F`` times the original's measured latency), and the
    :class:`CostBudget` the method searches under (a fraction of the full model's predicted
    latency). A budget below what the most-pruned plan at the channel multiple is predicted to
    reach (:meth:`~compressor.latency.LatencyModel.floor_counts`) searches at that floor: the
    timing then decides (a miss is exit 3 with the fastest reached)."""
    from compressor.latency import build_latency_model
    from compressor.methods.spec import CostBudget
    from compressor.pipeline.stages import at_percentile, original_latency

    s = ctx.s
    m = max(int(s.channel_multiple), 1)
    ctx.log.say(f"  latency model of target {s.target!r} (ONNX Runtime, x{m} channel grid)")
    lm = build_latency_model(
        ctx.model, ctx.graph, ctx.target, ctx.shape, multiple=m, progress=ctx.log.progress, seed=s.seed
    )
    ctx.latency_model = lm
    if "latency" not in ctx.original:
        original_latency(ctx)
    orig = at_percentile(ctx.original["latency"], s.percentile)  # type: ignore[typeddict-item]
    if s.latency is not None:
        s.latency_ms = round(s.latency * orig, 6)
    assert s.latency_ms is not None
    fraction = float(s.latency_ms) / orig
    ctx.budget = CostBudget("latency", fraction, lm.fraction, snap=lambda c: lm.snap(c, m), model=lm)
    cal = lm.info.get("calibration") or []
    ctx.log.say(
        f"  {len(lm.layers)} layers, {'cached' if lm.info.get('cache_hit') else 'measured'} table "
        f"({lm.info.get('cache')}); budget p{s.percentile:g} {s.latency_ms:.4g} ms = {fraction:.3f} of the "
        f"original's {orig:.4g} ms" + (f"; calibrated on {len(cal)} end-to-end timings" if cal else "")
    )
    floor = lm.fraction(lm.floor_counts(m))
    if fraction < floor:  # search for the fastest predicted plan; timing decides (exit 3 if it misses)
        ctx.log.note(
            f"the latency budget is {fraction:.3f} of the original's latency, below the {floor:.3f} the latency "
            f"model predicts for the most-pruned plan at the x{m} channel multiple: searching at that floor"
        )
        ctx.budget = dataclasses.replace(ctx.budget, fraction=floor * 1.0001)
    return ctx.budget


def method_plan(ctx: RunContext, flops: float, budget: Any = None) -> Any:
    """The method's plan at ``flops``, or under ``budget`` (a latency objective's CostBudget); a
    method that scores candidates appends them to candidates.jsonl."""
    from compressor.methods import MethodContext

    spec = _spec(ctx)
    context = MethodContext(
        progress=ctx.log.progress,
        candidates_file=ctx.ws.candidates if spec.scores_candidates else None,
        meta=ctx.meta,
        budget=budget,
    )
    return spec(
        ctx.model,
        ctx.graph,
        flops=flops,
        data=ctx.bundle,
        seed=ctx.s.seed,
        options=method_options(ctx),
        context=context,
    )


def record_candidate(ctx: RunContext, plan: Any, index: int, flops_target: float) -> dict[str, Any]:
    """Append a plan of a method that does not score candidates to candidates.jsonl."""
    cost = ctx.graph.cost(plan)
    rec = {
        "index": index,
        "method": ctx.s.method,
        "flops_target": flops_target,
        "flops": cost.macs / ctx.graph.full.macs,
        "macs": int(cost.macs),
        "params": int(cost.params),
        "counts": {g: len(k) for g, k in plan.groups.items()},
    }
    append_jsonl(ctx.ws.candidates, rec)
    return rec


def plan_from_record(ctx: RunContext, rec: dict[str, Any]) -> Any:
    """The plan a candidates.jsonl record describes (by kept indices, counts or ratios)."""
    g, s = ctx.graph, ctx.s
    if rec.get("groups"):
        from compressor.plan import Plan

        return Plan(
            method=s.method,
            groups={k: list(v) for k, v in rec["groups"].items()},
            group_sizes={gr.name: gr.size for gr in g.groups if gr.name in rec["groups"]},
            seed=s.seed,
            input_shape=[1, *ctx.shape],
            flops_target=s.flops,
            info={"grouped_convs": dict(g.grouped)} if g.grouped else {},
        )
    if rec.get("counts"):
        return g.plan_from_counts({k: int(v) for k, v in rec["counts"].items()}, method=s.method, seed=s.seed)
    if rec.get("ratios"):
        return g.plan_from_ratios(
            {k: float(v) for k, v in rec["ratios"].items()}, method=s.method, seed=s.seed
        )
    return None


def candidate_plans(ctx: RunContext, best_plan: Any) -> Iterator[tuple[dict[str, Any], Any]]:
    """(record, Plan) of the candidates to time against a latency budget, best first, made lazily.

    A method that scores candidates: its choice, then the next candidates of candidates.jsonl by
    score. Other methods: the plan at the FLOPs target, then plans at 15%, 30%... lower FLOPs
    (faster, less accurate), each appended to candidates.jsonl.
    """
    s = ctx.s
    info = best_plan.info or {}
    yield {"index": info.get("candidate", 0), "score": info.get("score")}, best_plan
    if _spec(ctx).scores_candidates:
        recs = [c for c in read_jsonl(ctx.ws.candidates) if c.get("score") is not None]
        recs.sort(key=lambda c: (-float(c["score"]), int(c.get("index", 0))))
        for c in recs:
            if c.get("index") == info.get("candidate"):
                continue
            plan = plan_from_record(ctx, c)
            if plan is not None:
                plan.info = {**(plan.info or {}), "candidate": c.get("index"), "score": c.get("score")}
                yield c, plan
        return
    for k in range(1, s.latency_candidates):
        budget = ctx.budget
        if budget is not None:  # a lower predicted-latency budget, in smaller steps
            budget = dataclasses.replace(budget, fraction=round(budget.fraction * (1.0 - 0.07 * k), 4))
        f = round(s.flops * (1.0 - 0.15 * k), 4)
        if f <= 0.05:
            return
        plan = method_plan(ctx, f, budget)
        plan.info = {**(plan.info or {}), "candidate": k}
        yield record_candidate(ctx, plan, k, f), plan


def latency_select(ctx: RunContext, best_plan: Any) -> tuple[Any, list[LatencyCheckRow]]:
    """Time the best candidates on ONNX Runtime; return the first (best) one within the latency budget."""
    from compressor.graph import slim
    from compressor.pipeline.stages import at_percentile, export, latency

    s = ctx.s
    assert s.latency_ms is not None
    full = ctx.graph.full.macs
    checked: list[LatencyCheckRow] = []
    ctx.log.say(
        f"  timing up to {s.latency_candidates} candidates against the latency budget "
        f"p{s.percentile:g} <= {s.latency_ms:g} ms (ONNX Runtime, target {s.target!r})"
    )
    path = ctx.ws.state / "candidate.onnx"
    original = ctx.ws.state / "original.onnx"
    # a budget given as a fraction of the original's latency is checked against the original timed
    # together with each candidate, as the final check does: a shared machine's speed drifts by
    # tens of percent within minutes, which a figure timed earlier would carry into the choice
    relative = s.latency is not None and original.is_file()
    for rec, plan in itertools.islice(candidate_plans(ctx, best_plan), s.latency_candidates):
        small = slim(ctx.model, plan, graph=ctx.graph)
        export(ctx, small, path)
        if relative:
            lat_o, lat = latency([original, path], ctx.target, ctx.shape, time_budget_s=3.0)
            limit = float(s.latency) * at_percentile(lat_o, s.percentile)  # type: ignore[arg-type]
        else:
            lat = latency([path], ctx.target, ctx.shape, time_budget_s=1.5)[0]
            limit = float(s.latency_ms)
        v = at_percentile(lat, s.percentile)
        fits = v <= limit
        row: LatencyCheckRow = {
            "id": rec.get("index"),
            "flops": ctx.graph.cost(plan).macs / full,
            "score": rec.get("score"),
            "latency_ms": round(v, 4),
            "p50": lat["p50"],
            "fits": fits,
        }
        if relative:
            row["limit_ms"] = round(limit, 4)
            row["original_ms"] = round(at_percentile(lat_o, s.percentile), 4)
        pred = ""
        if ctx.latency_model is not None:
            lm = ctx.latency_model
            row["predicted_ms"] = round(lm.predict_ms(lm.plan_counts(plan)), 4)
            pred = f"predicted {row['predicted_ms']:.3f} ms, "
        checked.append(row)
        ctx.log.say(
            f"    candidate #{row['id']}: FLOPs {row['flops']:.3f}, {pred}p{s.percentile:g} {v:.3f} ms"
            + (f" (budget {limit:.3f} ms: {s.latency:g} of the original timed with it) " if relative else " ")
            + ("[green]fits[/]" if fits else "[red]over budget[/]")
        )
        if fits:
            path.unlink(missing_ok=True)
            return plan, checked
    path.unlink(missing_ok=True)
    best = min(checked, key=lambda c: c["latency_ms"]) if checked else None
    ctx.latency_checked = checked
    msg = (
        f"latency budget not met: p{s.percentile:g} <= {s.latency_ms:g} ms on ONNX Runtime (target {s.target!r}); "
        + (
            f"the fastest of {len(checked)} candidates reached {best['latency_ms']:.3f} ms at FLOPs {best['flops']:.3f}"
            if best
            else "no candidate could be timed"
        )
        + "; lower --flops, raise --latency-ms, or use a faster target runtime"
    )
    raise BudgetStop(msg)


def search(ctx: RunContext) -> None:
    """The search stage: plan.json from an earlier run, else the method (resuming its scored
    candidates), then the latency choice; writes plan.json (rank 0)."""
    from compressor.plan import Plan

    s, ws = ctx.s, ctx.ws
    scores = _spec(ctx).scores_candidates
    with ctx.log.stage("search") as st:
        if ctx.shared(ws.plan.is_file()):
            ctx.plan = Plan.load(ws.plan)
            ctx.latency_checked = list((ctx.plan.info.get("pipeline") or {}).get("latency_checked") or [])
            st["status"] = "resumed"
            st["note"] = "plan.json from the earlier run; search skipped"
            ctx.log.note("resumed: plan.json found, search skipped")
            return
        if scores and ws.candidates.is_file():
            n = len(read_jsonl(ws.candidates))
            ctx.log.note(f"resuming the search: {n} candidates already scored in candidates.jsonl")
            st["status"] = "resumed"
        elif ws.candidates.is_file() and ctx.rank == 0:  # other methods recompute their few plans in seconds
            ws.candidates.unlink()
        try:
            budget = latency_budget(ctx) if s.latency_objective else None
        except BudgetStop as e:
            ctx.shared(e.message)
            raise
        plan = method_plan(ctx, s.flops, budget)  # every rank: a search shards its candidates under torchrun
        if ctx.rank != 0:  # rank 0 times candidates on ONNX Runtime and writes the plan
            got = ctx.shared(None)
            if isinstance(got, (list, tuple)):  # rank 0 failed: the same error, same class, here
                raise rebuild((str(got[0]), str(got[1])))
            ctx.plan = Plan.from_dict(got)
            return
        try:
            if not scores:
                plan.info = {**(plan.info or {}), "candidate": 0}
                record_candidate(ctx, plan, 0, s.flops)
            checked: list[LatencyCheckRow] = []
            if s.latency_ms is not None:
                plan, checked = latency_select(ctx, plan)
        except BudgetStop as e:
            ctx.shared(("BudgetError", e.message))
            raise
        except Exception as e:  # every rank fails alike, keeping the error's class
            ctx.shared(carry(e))
            raise
        ctx.latency_checked = checked
        plan.info = {**(plan.info or {}), "pipeline": {"latency_checked": checked}}
        plan.save(ws.plan)
        ctx.plan = plan
        ctx.shared(plan.to_dict())
        n = len(read_jsonl(ws.candidates))
        st["note"] = (
            f"{s.method}: {n} candidate{'s' if n != 1 else ''} in candidates.jsonl, chosen #{plan.info.get('candidate')}"
        )
