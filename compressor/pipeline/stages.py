"""The stages of a run around the search: load, profile, slim, fine-tune, export, validate.

Each is a public function of another part of the package (checkpoint, graph, train, export)
called with the run's settings; each records what it measured in the :class:`RunContext` and
says what it did in one status line. (The search stage is :mod:`compressor.pipeline.search`.)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from compressor.errors import UsageError
from compressor.io import atomic_write_json, atomic_write_text
from compressor.pipeline.context import RunContext
from compressor.pipeline.settings import FALLBACK_LR, Settings


# ----------------------------------------------------------------------------- helpers
def export(ctx: RunContext, model: Any, path: Path) -> Any:
    """Export ``model`` with the target's opset, batch and dynamic-batch setting, simplified."""
    from compressor.export import export_onnx

    return export_onnx(
        model,
        path,
        input_shape=(ctx.s.batch, *ctx.shape),
        opset=int(ctx.target.export.opset),
        dynamic_batch=bool(ctx.target.export.dynamic_batch),
        simplify=True,
    )


def latency(
    paths: list[Path], target: Any, shape: tuple[int, ...], *, time_budget_s: float = 3.0
) -> list[dict[str, Any]]:
    """Latency of several ONNX files timed interleaved (so machine load falls on all alike), with samples."""
    import numpy as np

    from compressor.export.runtime import (
        concrete_shape,
        input_meta,
        machine_note,
        make_session,
        summarize,
        time_sessions,
    )

    rng = np.random.default_rng(0)
    sessions, infos = [], []
    for p in paths:
        sess, info = make_session(p, target.runtime)
        name, _, _ = input_meta(sess)
        sh = concrete_shape(sess, target.input.batch, (target.input.batch, *shape))
        sessions.append((sess, {name: rng.standard_normal(sh).astype(np.float32)}))
        infos.append(info)
    times = time_sessions(sessions, time_budget_s=time_budget_s)
    out = []
    for p, t, info in zip(paths, times, infos, strict=True):
        r = summarize(t, target.budget.percentile)
        r.update(
            path=str(p),
            session=info.to_dict(),
            measured_on=machine_note(target),
            samples=[round(float(v), 4) for v in t],
        )
        out.append(r)
    return out


def at_percentile(lat: Any, pct: float) -> float:
    v = lat.get("at_percentile")
    if v is not None:
        return float(v)
    import numpy as np

    return float(np.percentile(np.asarray(lat["samples"]), pct))


def run_validate(
    ctx: RunContext, onnx_path: Path, model: Any, *, write_test_data: bool, original_top1: float | None = None
) -> Any:
    """compressor.export.validate without its latency pass (the run times original and
    compressed itself, interleaved, keeping the samples for the report's histogram)."""
    from compressor.export import validate

    return validate(
        onnx_path,
        model,
        target=ctx.target,
        data=ctx.bundle,
        original_accuracy=original_top1,
        batch_size=256,
        latency=False,
        write_test_data=write_test_data,
        seed=ctx.s.seed,
    )


def finetune_lr(s: Settings, meta: dict[str, Any]) -> float:
    """The fine-tuning learning rate: as given; else the checkpoint's training lr scaled linearly
    to this batch size (a pruned network recovers best with the recipe that trained it); else 0.01."""
    if s.lr is not None:
        return s.lr
    rec: dict[str, Any] = meta["finetune"] if isinstance(meta.get("finetune"), dict) else {}
    lr, bs = rec.get("lr"), rec.get("batch_size")
    if isinstance(lr, (int, float)) and lr > 0 and isinstance(bs, int) and bs > 0:
        return float(lr) * s.batch_size / bs
    return FALLBACK_LR


# ----------------------------------------------------------------------------- load / profile
def load(ctx: RunContext, *, trust_pickle: bool) -> None:
    """The checkpoint, its input shape (C,H,W: the checkpoint's, else the target's), its data and
    its channel graph."""
    from compressor.checkpoint import load_checkpoint
    from compressor.data import load_data
    from compressor.graph import build_graph
    from compressor.shapes import resolve_input_shape

    s = ctx.s
    with ctx.log.stage("load") as st:
        ctx.model, meta = load_checkpoint(s.checkpoint, arch=s.arch, trust_pickle=trust_pickle)
        ctx.meta = dict(meta or {})
        ctx.shape = resolve_input_shape(None, ctx.meta, ctx.target, source=f"checkpoint {s.checkpoint!r}")
        spec = s.data or ctx.meta.get("dataset")
        if not spec:
            raise UsageError(
                f"checkpoint {s.checkpoint!r} does not name its dataset: pass --data (mnist5k, cifar10:DIR or imagefolder:DIR)"
            )
        s.data = str(spec)
        ctx.bundle = load_data(s.data, meta={**ctx.meta, "input_shape": list(ctx.shape)})
        ctx.lr = finetune_lr(s, ctx.meta)
        ctx.graph = build_graph(ctx.model, input_shape=(1, *ctx.shape))
        n_pr = len(ctx.graph.prunable)
        st["note"] = (
            f"{ctx.meta.get('arch', type(ctx.model).__name__)}, input {list(ctx.shape)}, data {s.data}, "
            f"{len(ctx.graph.groups)} channel groups ({n_pr} prunable)"
        )


def profile(ctx: RunContext) -> None:
    """FLOPs, params, accuracy (PyTorch and ONNX Runtime) of the original; cached in .state/."""
    from compressor.graph import count

    cache = ctx.ws.state / "original.json"
    onnx_path = ctx.ws.state / "original.onnx"
    with ctx.log.stage("profile") as st:
        if ctx.rank != 0:
            st["status"] = "skipped"
            return
        if cache.is_file() and onnx_path.is_file():
            ctx.original = json.loads(cache.read_text(encoding="utf-8"))
            st["status"] = "resumed"
            st["note"] = "profile of the original read from the earlier run"
            return
        cost = count(ctx.model, input_shape=(1, *ctx.shape))
        ctx.original = {"macs": int(cost.macs), "params": int(cost.params), "input_shape": list(ctx.shape)}
        export(ctx, ctx.model, onnx_path)
        v = run_validate(ctx, onnx_path, ctx.model, write_test_data=False)
        acc = v.accuracy or {}
        ctx.original.update(
            top1=acc.get("torch_top1"),
            top1_ort=acc.get("onnx_top1"),
            top5=acc.get("torch_top5"),
            test_images=acc.get("samples"),
        )
        atomic_write_json(cache, ctx.original)
        st["note"] = (
            f"{ctx.original['macs'] / 1e6:.2f} M MACs, {ctx.original['params'] / 1e3:.1f} k params, "
            f"top-1 {ctx.original['top1']:.2f}% (ONNX Runtime {ctx.original['top1_ort']:.2f}%)"
        )


def original_latency(ctx: RunContext) -> None:
    """Time the original alone (a run stopped by a budget still compares with the original's latency)."""
    onnx_path = ctx.ws.state / "original.onnx"
    if onnx_path.is_file():
        ctx.original["latency"] = latency([onnx_path], ctx.target, ctx.shape)[0]  # type: ignore[typeddict-item]


# ----------------------------------------------------------------------------- slim / finetune
def compressed_meta(ctx: RunContext) -> dict[str, Any]:
    """The compressed checkpoint's meta: the original's, with its input shape (C,H,W) and how it
    was compressed; the original's training record moves under ``compressed_from`` (it is not
    this model's)."""
    s = ctx.s
    own = ("accuracy", "finetune", "train_seconds", "train_threads", "trained_by")
    return {
        **{k: v for k, v in ctx.meta.items() if k not in own},
        "input_shape": list(ctx.shape),
        "compressed_from": {
            "checkpoint": s.checkpoint,
            "sha256": ctx.ck_sha,
            **{k: ctx.meta[k] for k in own if k in ctx.meta},
        },
        "compressed_by": {
            "command": ctx.command,
            "method": s.method,
            "flops_target": s.flops,
            "target": s.target,
        },
    }


def slim_and_finetune(ctx: RunContext) -> Any:
    """Slim the model by the plan (checking it equals the masked original), then fine-tune it into
    ``model.pt`` (resumable; skipped with 0 epochs). Returns the compressed model."""
    from compressor.checkpoint import load_checkpoint, save_checkpoint
    from compressor.data import make_loader
    from compressor.evaluate import accuracy
    from compressor.graph import slim

    s = ctx.s
    model_path = ctx.ws.model_pt
    done_flag = ctx.ws.state / "finetune.done"
    with ctx.log.stage("slim") as st:
        small = slim(ctx.model, ctx.plan, graph=ctx.graph)
        err = float(ctx.graph.verify(small, ctx.plan))
        ctx.checks.append(
            {
                "name": "slimmed == masked original (max abs diff)",
                "limit": 1e-3,
                "value": err,
                "passed": err <= 1e-3,
                "detail": "proves the physical slimming removed exactly the pruned channels",
            }
        )
        acc = accuracy(small, make_loader(ctx.bundle.test, batch_size=256), device=ctx.device)
        ctx.compressed["top1_after_slim"] = float(acc["top1"])
        st["note"] = (
            f"equivalence error {err:.1e}, top-1 right after slimming {ctx.compressed['top1_after_slim']:.2f}%"
        )

    meta = compressed_meta(ctx)
    with ctx.log.stage("finetune") as st:
        if s.epochs == 0:
            if ctx.rank == 0:
                save_checkpoint(small, model_path, meta=meta)
            st["status"] = "skipped"
            st["note"] = "epochs = 0"
            return small
        if ctx.shared(done_flag.is_file() and model_path.is_file()):
            model, _ = load_checkpoint(model_path)
            st["status"] = "resumed"
            st["note"] = "fine-tuned model.pt from the earlier run"
            ctx.log.note("resumed: fine-tuning had finished; model.pt reused")
            return model
        from compressor.train import FinetuneConfig, finetune, state_path

        if state_path(model_path).is_file():
            ctx.log.note(
                f"resuming the fine-tune from the last completed epoch in {state_path(model_path).name}"
            )
            st["status"] = "resumed"

        recipe = FinetuneConfig(epochs=s.epochs, lr=ctx.lr, batch_size=s.batch_size, seed=s.seed)
        res = finetune(
            small,
            ctx.bundle,
            recipe,
            out=model_path,
            meta=meta,
            teacher=ctx.model if s.distill else None,
            device=ctx.device,
            progress=ctx.log.progress,
            keep_state=False,
        )
        if ctx.rank == 0:
            atomic_write_text(done_flag, "done\n")
        ctx.compressed["finetune_best_acc"] = res.best_acc
        return res.model.cpu().eval()


# ----------------------------------------------------------------------------- export / validate
_CHECK_NAMES = {
    "numerics": "ONNX Runtime vs PyTorch outputs (max abs diff)",
    "accuracy_agreement": "top-1 ONNX Runtime vs PyTorch (points)",
}


def export_and_validate(ctx: RunContext, model: Any) -> None:
    """Export to ONNX in .state/, validate it on ONNX Runtime, time original and compressed, and
    publish it to out/ only when the checks pass: a model.onnx in out/ is always a validated one
    (a failing one stays in .state/ for inspection)."""
    from compressor.graph import count

    onnx_path = ctx.ws.state / "model.onnx"
    with ctx.log.stage("export") as st:
        res = export(ctx, model, onnx_path)
        ctx.export_info = res.to_dict() if hasattr(res, "to_dict") else {}
        sim = ctx.export_info.get("simplify") or {}
        st["note"] = f"opset {ctx.export_info.get('opset')}, " + (
            f"simplified {sim.get('nodes_before')} -> {sim.get('nodes_after')} nodes"
            if ctx.export_info.get("simplified")
            else f"not simplified ({sim.get('message') or 'onnxsim off'})"
        )
    with ctx.log.stage("validate") as st:
        cost = count(model, input_shape=(1, *ctx.shape))
        ctx.compressed.update(macs=int(cost.macs), params=int(cost.params))
        v = run_validate(
            ctx, onnx_path, model, write_test_data=True, original_top1=ctx.original.get("top1_ort")
        )
        acc = v.accuracy or {}
        ctx.compressed.update(
            top1=acc.get("torch_top1"), top1_ort=acc.get("onnx_top1"), top5=acc.get("torch_top5")
        )
        d = v.to_dict()
        ctx.validation = {
            "numerics": d.get("numerics"),
            "accuracy": d.get("accuracy"),
            "test_data_set": d.get("test_data_set"),
            "seconds": d.get("seconds"),
        }
        for c in v.checks:
            if c.kind == "validation":
                ctx.checks.append(
                    {
                        "name": _CHECK_NAMES.get(c.name, c.name),
                        "limit": c.limit,
                        "value": c.value,
                        "passed": None if c.status == "skipped" else c.status == "pass",
                        "detail": c.detail,
                    }
                )
        lats = latency([ctx.ws.state / "original.onnx", onnx_path], ctx.target, ctx.shape)
        ctx.original["latency"], ctx.compressed["latency"] = lats  # type: ignore[typeddict-item]
        ctx.validation["latency_measured_on"] = lats[1].get("measured_on")
        mad = (d.get("numerics") or {}).get("random", {}).get("max_abs_diff")
        st["note"] = (
            (f"ONNX vs PyTorch max abs diff {mad:.2g}, " if mad is not None else "")
            + f"top-1 {ctx.compressed['top1_ort']:.2f}% on ONNX Runtime, "
            + f"latency p50 {lats[0]['p50']:.3f} -> {lats[1]['p50']:.3f} ms"
        )
        if any(c.kind == "validation" and c.status == "fail" for c in v.checks):
            ctx.log.note(
                f"the ONNX model failed validation; kept for inspection at {onnx_path}, not published"
            )
        else:
            publish(ctx, onnx_path)


def publish(ctx: RunContext, onnx_path: Path) -> None:
    """Move the validated model.onnx and its test_data_set_0/ from .state/ into out/."""
    out = ctx.ws.out
    src, dst = onnx_path.parent / "test_data_set_0", out / "test_data_set_0"
    if src.is_dir():
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(src, dst)
    os.replace(onnx_path, out / "model.onnx")
    ctx.export_info["path"] = str(out / "model.onnx")
    tds = ctx.validation.get("test_data_set")
    if isinstance(tds, dict):
        tds["folder"] = str(dst)
        tds["files"] = [str(dst / f) for f in ("input_0.pb", "output_0.pb")]
