"""``compress run --dry-run``: load and profile, say what would run and how long it would take.

Nothing is written. The estimate scales one timed forward pass of the full model by the work of
each stage; the search's share comes from the method's spec (``MethodSpec.cost``).
"""

from __future__ import annotations

import time
from typing import Any

from compressor.pipeline.context import RunContext
from compressor.pipeline.report import checkpoint_info
from compressor.pipeline.schema import DryRunReport, DryRunStage


def dry_run(ctx: RunContext, *, trust_pickle: bool) -> DryRunReport:
    """Load and profile; say what would run and estimate how long it takes (writes nothing)."""
    import torch

    from compressor.graph import count
    from compressor.methods import SearchCost, get_method
    from compressor.pipeline.search import method_options
    from compressor.pipeline.stages import load

    s = ctx.s
    load(ctx, trust_pickle=trust_pickle)
    with ctx.log.stage("profile") as st:
        cost = count(ctx.model, input_shape=(1, *ctx.shape))
        ctx.original = {"macs": int(cost.macs), "params": int(cost.params), "input_shape": list(ctx.shape)}
        model = ctx.model.to(ctx.device)
        x = torch.randn(s.batch_size, *ctx.shape, device=ctx.device)
        with torch.no_grad():
            model(x)
            t = time.perf_counter()
            for _ in range(3):
                model(x)
            fwd = (time.perf_counter() - t) / 3  # seconds per batch of batch_size, full model
        ctx.model.cpu()
        st["note"] = f"{fwd * 1e3:.1f} ms per forward batch of {s.batch_size}"
    n_train, n_val, n_test = (len(getattr(ctx.bundle, k)) for k in ("train", "val", "test"))
    per_img = fwd / s.batch_size
    spec = get_method(s.method)
    search_s, search_what = spec.cost(method_options(ctx), SearchCost(s.flops, n_train, n_val, per_img))
    est: dict[str, float] = {}
    est["profile"] = n_test * per_img * 2 + 5.0
    table = None
    if s.latency_objective:  # the target's latency table: measured once, then read from the cache
        from compressor.latency import estimate_build

        table = estimate_build(
            ctx.model, ctx.graph, ctx.target, tuple(ctx.shape), multiple=max(int(s.channel_multiple), 1)
        )
        est["latency table"] = table["estimate_s"]
    est["search"] = search_s + (s.latency_candidates * 3.0 if s.latency_ms is not None else 0.0)
    est["slim"] = n_test * per_img * s.flops + 1.0
    # a training step costs ~3 forwards; per-image transforms and the optimizer about as much again
    est["finetune"] = s.epochs * (n_train * per_img * 8 + n_val * per_img) * s.flops
    est["export"] = 3.0
    est["validate"] = n_test * per_img * s.flops * 2 + 8.0
    if s.precision != "fp32":  # calibration x 3 methods, ~3 candidates on the val split, timing
        n_cal = s.int8_calib_batches * 32
        est["quantize"] = 3 * (n_cal + 2 * n_val) * per_img * s.flops + 6.0 + 4.0 * s.int8_latency_repeats
    else:
        est["quantize"] = (n_val + n_test) * per_img * s.flops + 1.0
    est["report"] = 0.5
    what = {
        "profile": f"FLOPs, params, top-1 on PyTorch and ONNX Runtime over {n_test} test images",
        "search": search_what
        + (
            f"; up to {s.latency_candidates} timed against p{s.percentile:g} <= {s.latency_ms:g} ms"
            if s.latency_ms is not None
            else ""
        ),
        "latency table": (
            "read from the cache"
            if table is None or table["cached"]
            else f"{table['layer_timings']} single-layer and {table['plan_timings']} end-to-end timings on ONNX Runtime"
        )
        + (f" ({table['cache']})" if table else ""),
        "slim": "physical slimming, equivalence check",
        "finetune": f"{s.epochs} epochs on {n_train} images, batch {s.batch_size}, lr {ctx.lr:g}"
        if s.epochs
        else "skipped",
        "export": f"ONNX opset {ctx.target.export.opset}, onnxsim",
        "validate": "numerics, top-1 PyTorch vs ONNX Runtime, latency original vs compressed",
        "quantize": (
            f"precision {s.precision}: INT8 QDQ per-channel, {s.int8_calib_batches} calibration batches "
            "of the training split, accuracy gate on the validation split"
            + (", latency gate (>= 10% faster p50)" if s.precision == "auto" else "")
            if s.precision != "fp32"
            else "precision fp32: the FP32 model ships with its deployment metadata"
        ),
        "report": "report.json, report.html",
    }
    plan: list[DryRunStage] = [
        {"name": k, "estimate_s": round(v, 1), "what": what.get(k, "")} for k, v in est.items()
    ]
    total = sum(est.values())
    return {
        "status": "dry_run",
        "exit_code": 0,
        "command": ctx.command,
        "message": f"would take about {total / 60:.1f} min on this machine (device {ctx.device}); writes nothing now",
        "checkpoint": checkpoint_info(ctx),
        "settings": {**s.to_dict(), "device_used": ctx.device},
        "target": ctx.target.to_dict() if hasattr(ctx.target, "to_dict") else {},
        "original": ctx.original,
        "data": {"train": n_train, "val": n_val, "test": n_test},
        "groups": {"total": len(ctx.graph.groups), "prunable": len(ctx.graph.prunable)},
        "plan": plan,
        "estimate_s": round(total, 1),
        "stages": ctx.log.stages,
        "would_resume": ctx.ws.present(),
    }


def estimate_table(report: Any) -> Any:
    """A rich table of a dry run's stages and time estimates."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(title="compress run --dry-run", title_justify="left")
    t.add_column("stage")
    t.add_column("what")
    t.add_column("estimate", justify="right")
    for row in report.get("plan") or []:
        t.add_row(row["name"], row.get("what", ""), f"{row['estimate_s']:.0f} s")
    t.add_row("[bold]total[/]", "", f"[bold]{report.get('estimate_s', 0):.0f} s[/]")
    o = report.get("original") or {}
    g = report.get("groups") or {}
    head = Text(
        f"{report.get('checkpoint', {}).get('path')}: {o.get('macs', 0) / 1e6:.2f} M MACs, "
        f"{o.get('params', 0) / 1e3:.1f} k params, {g.get('total')} channel groups ({g.get('prunable')} prunable)"
    )
    return Group(head, t, Text(str(report.get("message", ""))))
