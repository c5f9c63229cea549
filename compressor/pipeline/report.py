"""Building the run's report (:class:`~compressor.pipeline.schema.Report`) from what the stages
measured: budgets with pass/fail, checks, kept channels per group, the search. Writing it as
JSON and HTML is :mod:`compressor.report`'s job."""

from __future__ import annotations

import json
import time
from typing import Any

from compressor.io import read_jsonl
from compressor.pipeline.context import RunContext
from compressor.pipeline.schema import (
    Budget,
    CandidateRow,
    CheckpointInfo,
    LayerRow,
    Report,
    SearchSection,
    Status,
    TopKRow,
)


def checkpoint_info(ctx: RunContext) -> CheckpointInfo:
    return {"path": ctx.s.checkpoint, "sha256": ctx.ck_sha, "arch": ctx.meta.get("arch")}


def _first(obj: dict[str, Any], *names: str) -> Any:
    """The first of ``names`` present in ``obj``."""
    for n in names:
        if n in obj:
            return obj[n]
    return None


def budgets(ctx: RunContext) -> list[Budget]:
    from compressor.pipeline.stages import at_percentile

    s, o, c = ctx.s, ctx.original, ctx.compressed
    out: list[Budget] = []
    if c.get("macs") is not None and o.get("macs"):
        v = c["macs"] / o["macs"]
        out.append(
            {
                "name": "FLOPs kept (fraction)",
                "limit": s.flops,
                "value": round(v, 4),
                "passed": None if s.latency_objective else v <= s.flops * (1 + s.flops_tolerance) + 1e-9,
                "detail": "compressed MACs / original MACs; "
                + (
                    "not a budget: latency is the objective"
                    if s.latency_objective
                    else f"{s.flops_tolerance:.0%} tolerance"
                ),
            }
        )
    lat = c.get("latency")
    if s.latency is not None and lat and o.get("latency"):
        # a fraction of the original: of the original timed together with the compressed model
        s.latency_ms = round(s.latency * at_percentile(o["latency"], s.percentile), 6)  # type: ignore[typeddict-item]
    if s.latency_ms is not None:
        detail = f"ONNX Runtime, target {s.target!r} runtime settings, batch {s.batch}, on this machine"
        value = at_percentile(lat, s.percentile) if lat else None
        passed = None if value is None else value <= s.latency_ms
        checked = ctx.latency_checked
        if value is None and checked:  # stopped at the search: the fastest candidate timed
            value = min(float(r["latency_ms"]) for r in checked)
            detail = f"fastest of {len(checked)} candidates timed; " + detail
            # each candidate was judged against its own limit (a fraction: of the original timed
            # with it), and none fitted: the budget failed, whatever the earlier timing says
            passed = any(bool(r.get("fits")) for r in checked)
        out.append(
            {
                "name": f"latency p{s.percentile:g} (ms)",
                "limit": s.latency_ms,
                "value": value,
                "passed": passed,
                "detail": detail,
            }
        )
    ref = o.get("top1_ort") if o.get("top1_ort") is not None else o.get("top1")
    new = c.get("top1_ort") if c.get("top1_ort") is not None else c.get("top1")
    if ref is not None and new is not None:
        drop = round(ref - new, 4)
        out.append(
            {
                "name": "accuracy drop (top-1 points)",
                "limit": s.max_acc_drop,
                "value": drop,
                "passed": drop <= s.max_acc_drop + 1e-9,
                "detail": "original vs compressed, test split, ONNX Runtime",
            }
        )
    if ctx.quantize.get("budget"):  # precision "int8" and no INT8 model within the accuracy budget
        out.append(ctx.quantize["budget"])
    return out


def layers(ctx: RunContext) -> list[LayerRow]:
    if ctx.graph is None or ctx.plan is None:
        return []
    return [
        {
            "name": gr.name,
            "before": int(gr.size),
            "after": int(ctx.plan.kept(gr.name) if gr.name in ctx.plan.groups else gr.size),
            "frozen": bool(gr.frozen),
            "reason": getattr(gr, "reason", None),
        }
        for gr in ctx.graph.groups
    ]


def _jsonable_info(info: Any) -> Any:
    try:
        json.dumps(info)
        return info
    except TypeError:
        return {k: v for k, v in (info or {}).items() if isinstance(v, (int, float, str, bool, type(None)))}


def search_section(ctx: RunContext) -> SearchSection:
    """The candidates (FLOPs, score, which was chosen), the method's top-k fine-tunes, the latency
    checks, and a summary whose method-specific part the method's spec writes (``describe``)."""
    from compressor.methods import get_method

    s = ctx.s
    spec = get_method(s.method)
    full = ctx.original.get("macs") or 1
    info: dict[str, Any] = (ctx.plan.info or {}) if ctx.plan is not None else {}
    chosen = info.get("candidate")
    cands: list[CandidateRow] = []
    for r in read_jsonl(ctx.ws.candidates):
        f = _first(r, "flops_ratio", "flops")
        if f is not None and f > 1.5:  # absolute MACs
            f = f / full
        cands.append(
            {
                "id": r.get("index"),
                "flops": f,
                "score": r.get("score"),
                "chosen": chosen is not None and r.get("index") == chosen,
            }
        )
    topk: list[TopKRow] = [
        {
            "id": t.get("index"),
            "score": t.get("score"),
            "finetuned": _first(t, "finetuned", "finetuned_acc", "ft_acc"),
            "chosen": t.get("index") == chosen,
        }
        for t in info.get("finetuned") or []
        if isinstance(t, dict)
    ]
    summary = f"{s.method}: {len(cands)} candidate{'s' if len(cands) != 1 else ''} evaluated"
    if spec.describe is not None:
        summary += spec.describe(info)
    if ctx.latency_checked:
        summary += f"; {len(ctx.latency_checked)} timed against the latency budget"
    return {
        "method": s.method,
        "summary": summary + ".",
        "candidates": cands,
        "chosen": chosen,
        "topk": topk,
        "latency_checked": ctx.latency_checked,
        "score_label": spec.score_label,
        "info": _jsonable_info({k: v for k, v in info.items() if k not in ("pipeline", "finetuned")}),
    }


def build_report(ctx: RunContext, status: Status, exit_code: int, message: str) -> Report:
    from compressor.report import collect_versions

    s = ctx.s
    report: Report = {
        "status": status,
        "exit_code": exit_code,
        "message": message,
        "command": ctx.command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoint": checkpoint_info(ctx),
        "settings": {**s.to_dict(), "device_used": ctx.device, "lr_used": ctx.lr},
        "seeds": {"seed": s.seed, "plan_seed": getattr(ctx.plan, "seed", None)},
        "target": ctx.target.to_dict() if hasattr(ctx.target, "to_dict") else {},
        "original": ctx.original,
        "compressed": ctx.compressed,
        "budgets": budgets(ctx),
        "checks": list(ctx.checks),
        "layers": layers(ctx),
        "search": search_section(ctx),
        "export": ctx.export_info,
        "validation": ctx.validation,
        "quantize": ctx.quantize,
        "stages": ctx.log.stages,
        "finetune": {"history": ctx.finetune_history},
        "threads": ctx.threads,
        "versions": collect_versions(),
        "artifacts": ctx.ws.artifacts(),
        "notes": list(ctx.log.notes),
    }
    lm = ctx.latency_model
    if lm is not None:
        report["latency_model"] = {
            "scale": lm.scale,
            "rest_ms": lm.rest,
            "full_predicted_ms": lm.predict_ms({}),
            "cache": lm.info.get("cache"),
            "cache_hit": lm.info.get("cache_hit"),
            "calibration": lm.info.get("calibration"),
            "layers": lm.table_rows(),
        }
    frozen = [g for g in report["layers"] if g["frozen"]] if ctx.plan is not None else []
    if frozen:
        report["notes"].append(
            f"{len(frozen)} channel groups frozen (not pruned): "
            + "; ".join(f"{g['name']}: {g.get('reason') or 'frozen'}" for g in frozen[:8])
            + (" ..." if len(frozen) > 8 else "")
        )
    return report


def keep_earlier_timings(ctx: RunContext) -> None:
    """A resumed stage keeps the time the earlier run spent on it (from the earlier report.json),
    says it was resumed, and records how long resuming took (``resume_seconds``)."""
    import json

    try:
        earlier = json.loads(ctx.ws.report_json.read_text(encoding="utf-8")).get("stages") or []
    except (OSError, ValueError, AttributeError):
        return
    before = {st.get("name"): st for st in earlier if isinstance(st, dict)}
    for st in ctx.log.stages:
        old = before.get(st["name"])
        if st.get("status") != "resumed" or not old or old.get("seconds") is None:
            continue
        st["resume_seconds"] = st.get("seconds", 0.0)  # type: ignore[typeddict-unknown-key]
        st["seconds"] = float(old["seconds"])
        if "earlier run" not in (st.get("note") or ""):
            st["note"] = ((st.get("note") or "") + "; time of the earlier run").lstrip("; ")


def finish(ctx: RunContext, status: Status, exit_code: int, message: str) -> Report:
    """Build the report and write report.json and report.html (the report stage)."""
    from compressor.report import write_report

    keep_earlier_timings(ctx)
    with ctx.log.stage("report"):
        report = build_report(ctx, status, exit_code, message)
        report["artifacts"].update(
            {"report.json": str(ctx.ws.report_json), "report.html": str(ctx.ws.report_html)}
        )
        write_report(dict(report), ctx.ws.out)
    # the report's own stage time is known only now: rewrite report.json with it (cheap)
    report["stages"] = ctx.log.stages
    write_report(dict(report), ctx.ws.out)
    return report
