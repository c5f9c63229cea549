"""The ``quantize`` stage of a run: INT8 on ONNX Runtime, shipped only when measured accurate and fast.

It runs after the FP32 model was exported, validated and published to ``out/model.onnx``, and
calls :func:`compressor.export.quantize.quantize_with_data` with the run's settings:

* ``precision`` (the target's ``[export] precision``, a config key or ``--precision``):
  ``fp32`` ships the FP32 model (with its deployment metadata); ``int8`` ships INT8 if any
  candidate is within the accuracy budget, else the run fails its budget (exit 3); ``auto``
  ships INT8 only when it is within the accuracy budget *and* its p50 is at least 10% below
  FP32's with the target's threads and optimisation level.
* calibration on ``int8_calib_batches`` seeded batches of the run's training split; the
  calibration method, the operator selection and the layers kept FP32 are chosen on the
  validation split; top-1 on the test split is reported.
* the accuracy gate's allowance is the target's ``max_acc_drop`` less what pruning already
  spent on the test split (the budget is for the whole run, original -> shipped model); if the
  shipped INT8 model still ends over the budget on the test split under ``auto``, FP32 ships.
* INT8 numerics against the PyTorch model beyond :class:`~compressor.export.quantize.Int8Tolerance`
  are a failed check (exit 4).

When INT8 ships, ``out/model.onnx`` is the INT8 model, ``out/model.fp32.onnx`` the FP32 one
(both with metadata), and ``out/test_data_set_0/`` holds the INT8 model's outputs on the same
inputs. The decision is cached in ``.state/quantize/`` (keyed by the hash of the model's weights
and the quantize settings), so a resumed run reuses it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from compressor.io import atomic_write, atomic_write_json
from compressor.pipeline.context import RunContext

#: ``compressor.*`` metadata that describe an INT8 model only (dropped from ``model.fp32.onnx``).
_INT8_ONLY = ("compressor.precision", "compressor.quantization")


def _allowance(ctx: RunContext) -> float:
    """The accuracy budget left for INT8: the target's drop budget less the FP32 model's drop
    against the original on the test split (both on ONNX Runtime), at least 0."""
    o, c = ctx.original.get("top1_ort"), ctx.compressed.get("top1_ort")
    spent = (o - c) if o is not None and c is not None else 0.0
    return round(max(0.0, ctx.s.max_acc_drop - max(0.0, spent)), 4)


def _weights_sha(model: Any) -> str:
    """SHA-256 of the model's state (names, shapes and values): what the FP32 ONNX model is."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _cache_key(ctx: RunContext, model: Any) -> dict[str, Any]:
    s = ctx.s
    return {
        "weights": _weights_sha(model),
        "precision": s.precision,
        "calib_batches": s.int8_calib_batches,
        "seed": s.seed,
        "max_acc_drop": _allowance(ctx),
    }


def _decide(ctx: RunContext, model: Any, src: Path, dst: Path) -> tuple[dict[str, Any], bool]:
    """The decision (cached in .state/quantize/ when it passed); ``True`` when it was reused."""
    from compressor.export.quantize import quantize_with_data

    cache = src.parent / "decision.json"
    key = _cache_key(ctx, model)
    if cache.is_file() and dst.is_file():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return saved["decision"], True
    for p in (cache, dst):
        p.unlink(missing_ok=True)
    decision = quantize_with_data(
        src,
        dst,
        data=ctx.bundle,
        target=ctx.target,
        precision=ctx.s.precision,
        calib_batches=ctx.s.int8_calib_batches,
        max_acc_drop=key["max_acc_drop"],
        reference=model,
        meta={**ctx.meta, "input_shape": list(ctx.shape)},
        plan=ctx.plan,
        seed=ctx.s.seed,
        latency_repeats=ctx.s.int8_latency_repeats,
        log=lambda m: ctx.log.say(f"  [dim]{m}[/]"),
    )
    d = decision.to_dict()
    if decision.passed:
        atomic_write_json(cache, {"key": key, "decision": d})
    return d, False


def _write_fp32(src: Path, dst: Path, int8_meta: dict[str, str]) -> None:
    """``model.fp32.onnx``: the FP32 model with the shipped model's metadata, saying FP32."""
    from compressor.export.quantize import _write_shipped

    props: dict[str, Any] = {
        k.removeprefix("compressor."): v for k, v in int8_meta.items() if k not in _INT8_ONLY
    }
    props.update(precision="fp32", quantization="none (the FP32 model the INT8 model.onnx came from)")
    _write_shipped(src, dst, props)


def _copy(src: Path, dst: Path) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _test_data(ctx: RunContext, shipped: Path) -> None:
    """``test_data_set_0/`` for the INT8 model: the same inputs, the INT8 model's outputs."""
    from compressor.export.quantize import _Runner
    from compressor.export.validate import read_tensor, write_test_data_set

    folder = ctx.ws.out / "test_data_set_0"
    if not (folder / "input_0.pb").is_file():
        return
    x = read_tensor(folder / "input_0.pb")
    run = _Runner(shipped, ctx.target.runtime)
    info = write_test_data_set(shipped, x, run(x), input_name=run.name, output_name=run.out)
    info["expected_output"] = "the INT8 model on ONNX Runtime (this machine's CPU provider)"
    ctx.validation["test_data_set"] = {**(ctx.validation.get("test_data_set") or {}), **info}


def _section(d: dict[str, Any], allow: float, resumed: bool) -> dict[str, Any]:
    """The report's ``quantize`` section: FP32 vs INT8 accuracy, latency, size, the decision."""
    chosen = d.get("chosen") or {}
    best = chosen or min(
        (c for c in d.get("candidates") or [] if c.get("latency_p50") is not None),
        key=lambda c: c["latency_p50"],
        default={},
    )
    rs = d.get("report_split") or {}
    return {
        "requested": d["requested"],
        "precision": d["precision"],
        "status": d["status"],
        "reason": d["reason"],
        "max_acc_drop": allow,
        "latency_margin": d["latency_margin"],
        "fp32": {
            "val_top1": d["fp32"].get("top1"),
            "test_top1": rs.get("fp32_top1"),
            "p50": d["fp32"].get("latency_p50"),
            "p90": d["fp32"].get("latency_p90"),
            "size_bytes": d["fp32"].get("size_bytes"),
        },
        "int8": {
            "candidate": best.get("name"),
            "val_top1": best.get("top1"),
            "test_top1": rs.get("shipped_top1") if chosen else None,
            "p50": best.get("latency_p50"),
            "p90": best.get("latency_p90"),
            "latency_ratio": best.get("latency_ratio"),
            "size_bytes": best.get("size_bytes") or None,
        }
        if best
        else None,
        "candidates": d.get("candidates") or [],
        "calibration": d.get("calibration") or {},
        "kept_fp32": d.get("kept_fp32") or [],
        "numerics": d.get("numerics"),
        "latency": d.get("latency") or {},
        "metadata": d.get("metadata") or {},
        "notes": d.get("notes") or [],
        "seconds": d.get("seconds"),
        "resumed": resumed,
    }


def quantize(ctx: RunContext, model: Any) -> None:
    """The quantize stage (see the module docstring). Records ``ctx.quantize``, a numerics check
    and, for a failed ``int8`` request, a budget; updates the shipped model's numbers."""
    from compressor.pipeline.stages import latency

    out = ctx.ws.out
    published = out / "model.onnx"
    with ctx.log.stage("quantize") as st:
        if not published.is_file():
            st["status"] = "skipped"
            st["note"] = "no validated FP32 model.onnx to quantize"
            return
        work = ctx.ws.state / "quantize"
        work.mkdir(parents=True, exist_ok=True)
        src, cand = work / "model.fp32.onnx", work / "shipped.onnx"
        _copy(published, src)
        allow = _allowance(ctx)
        d, resumed = _decide(ctx, model, src, cand)
        if resumed:
            st["status"] = "resumed"
            ctx.log.note("resumed: the quantize decision of the earlier run reused")
        ctx.quantize = _section(d, allow, resumed)
        num = d.get("numerics")
        if num is not None:
            ctx.checks.append(
                {
                    "name": "INT8 vs PyTorch (relative error of the logits)",
                    "limit": num["tolerance"]["max_rel_error"],
                    "value": round(float(num["rel_error"]), 6),
                    "passed": bool(num["passed"]),
                    "detail": num["detail"],
                }
            )
        if d["status"] == "budget_failed":
            ctx.quantize["budget"] = {
                "name": "INT8 accuracy drop vs FP32 (top-1 points, validation split)",
                "limit": allow,
                "value": min((c["drop"] for c in d["candidates"] if c.get("drop") is not None), default=None),
                "passed": False,
                "detail": d["reason"],
            }
        if d["status"] != "ok":
            st["note"] = d["reason"]
            return  # the validated FP32 model.onnx stays; the check or budget fails the run
        _ship(ctx, d, src, cand)
        if d["precision"] == "int8":
            lats = latency([ctx.ws.state / "original.onnx", published], ctx.target, ctx.shape)
            ctx.original["latency"], ctx.compressed["latency"] = lats  # type: ignore[typeddict-item]
        st["note"] = f"{d['precision'].upper()} ships: {d['reason']}"


def _ship(ctx: RunContext, d: dict[str, Any], src: Path, cand: Path) -> None:
    """Publish the decision: model.onnx (+ model.fp32.onnx and INT8 test data when INT8 ships)."""
    out = ctx.ws.out
    shipped, fp32_copy = out / "model.onnx", out / "model.fp32.onnx"
    rs = d.get("report_split") or {}
    c = ctx.compressed
    c["precision"] = d["precision"]
    c["fp32_top1_ort"] = c.get("top1_ort")
    if d["precision"] == "int8":
        new_top1 = rs.get("shipped_top1")
        o = ctx.original.get("top1_ort")
        over = (
            ctx.s.precision == "auto"
            and new_top1 is not None
            and o is not None
            and o - new_top1 > ctx.s.max_acc_drop + 1e-9
        )
        if over:  # "auto" never ships over the budget: FP32 ships instead
            msg = (
                f"INT8 passed the validation gate but its test top-1 {new_top1:.2f}% is more than "
                f"{ctx.s.max_acc_drop:g} points below the original's {o:.2f}%: the FP32 model ships"
            )
            ctx.log.note(msg)
            d.update(precision="fp32", reason=msg)
            ctx.quantize.update(precision="fp32", reason=msg)
            c["precision"] = "fp32"
            _write_fp32(src, shipped, d.get("metadata") or {})
            fp32_copy.unlink(missing_ok=True)
            return
        _write_fp32(src, fp32_copy, d.get("metadata") or {})
        _copy(cand, shipped)
        c["top1_ort"] = new_top1
        _test_data(ctx, shipped)
    else:
        _copy(cand, shipped)  # the FP32 model, now with its deployment metadata
        fp32_copy.unlink(missing_ok=True)
    c["size_bytes"] = os.path.getsize(shipped)
    ctx.export_info["path"] = str(shipped)


__all__ = ["quantize"]
