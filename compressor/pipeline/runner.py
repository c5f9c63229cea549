"""``compressor.run``: check the input, prepare the out folder, run the stages, return the report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from compressor.errors import BudgetError, UsageError, ValidationError
from compressor.pipeline.context import BudgetStop, RunContext, StageLog
from compressor.pipeline.report import budgets, finish
from compressor.pipeline.schema import DryRunReport, Report, WorkerResult
from compressor.pipeline.settings import Settings, resolve_settings
from compressor.pipeline.workspace import ARTIFACTS, Workspace, fingerprint, prepare_out, sha256_file


def run(
    checkpoint: str | os.PathLike[str],
    *,
    target: str | None = None,
    flops: float | None = None,
    latency_ms: float | None = None,
    latency: float | None = None,
    method: str | None = None,
    data: str | None = None,
    epochs: int | None = None,
    device: str | None = None,
    seed: int | None = None,
    config: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    force: bool = False,
    candidates: int | None = None,
    top_k: int | None = None,
    lr: float | None = None,
    max_acc_drop: float | None = None,
    arch: str | None = None,
    arch_args: dict[str, Any] | None = None,
    input_shape: list[int] | tuple[int, ...] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    replace_head: bool | None = None,
    exclude: list[str] | None = None,
    threads: int | None = None,
    trust_pickle: bool = False,
    command: str | None = None,
    console: Any = None,
    progress: bool = True,
    method_options: dict[str, Any] | None = None,
    precision: str | None = None,
) -> Report | DryRunReport | WorkerResult:
    """Compress ``checkpoint`` for ``target`` and return the report (also written to ``out``).

    Arguments left ``None`` take their value from the config file, then the target, then
    :data:`~compressor.pipeline.settings.DEFAULTS` (method ``"eagleeye"``, out ``"out"``...).
    ``latency`` (a fraction of the original's measured latency) or ``latency_ms`` given here makes
    latency the search's objective: the method searches under the target's latency model
    (:mod:`compressor.latency`) instead of FLOPs.
    ``method_options`` (the method's options dataclass fields) go over the config's
    ``[method_options]``. ``dry_run`` loads and profiles the model and returns what would run with
    a time estimate, writing nothing. ``precision`` (``"fp32"``, ``"int8"`` or ``"auto"``;
    default the target's) says what the quantize stage ships.

    Returns the report (:class:`~compressor.pipeline.schema.Report`, a dict as in report.json).
    Raises :class:`UsageError` (bad input, exit 2), :class:`BudgetError` (a budget not met, exit 3,
    after writing the report) or :class:`ValidationError` (the ONNX model is wrong, exit 4, after
    writing the report); the written report is the error's ``report``.

    >>> report = run("examples/resnet_mnist.pt", target="mobile", flops=0.5, out="out")  # doctest: +SKIP
    >>> report["status"]
    'passed'
    """
    from rich.console import Console

    ck = Path(checkpoint)
    if ck.is_dir():
        raise UsageError(f"checkpoint {str(ck)!r} is a directory, not a file")
    if not ck.is_file():
        raise UsageError(
            f"checkpoint {str(ck)!r} does not exist" + ("" if ck.suffix else " (expected a .pt file)")
        )
    flags = {
        "target": target, "flops": flops, "latency_ms": latency_ms, "method": method, "data": data,
        "latency": latency, "latency_objective": True if latency is not None or latency_ms is not None else None,
        "epochs": epochs, "device": device, "seed": seed, "out": None if out is None else str(out),
        "candidates": candidates, "top_k": top_k, "lr": lr, "max_acc_drop": max_acc_drop, "arch": arch,
        "arch_args": arch_args or None, "input_shape": None if input_shape is None else list(input_shape),
        "mean": mean, "std": std, "replace_head": replace_head, "exclude": exclude or None,
        "threads": threads,
        "precision": precision,
    }  # fmt: skip
    s, tgt = resolve_settings(ck, flags, config, method_options=method_options)
    log = StageLog(console or Console(stderr=True, highlight=False), progress)
    ctx = RunContext(
        s=s, target=tgt, log=log, ws=Workspace(Path(s.out)), command=command or _python_call(ck, s)
    )
    ctx.device = _resolve_device(s.device)  # a CUDA request on a machine without CUDA fails here, early
    ctx.ck_sha = sha256_file(ck)
    if dry_run:
        from compressor.pipeline.dry_run import dry_run as estimate

        return estimate(ctx, trust_pickle=trust_pickle)
    refuse_replacing_inputs(ctx.ws, [ck, *([Path(config)] if config else [])])
    _join_torchrun(ctx, progress)
    from contextlib import nullcontext

    from compressor.pipeline.lock import out_lock

    with out_lock(ctx.ws.out) if ctx.rank == 0 else nullcontext():  # one run per out folder
        _prepare(ctx, force)
        return _stages(ctx, trust_pickle=trust_pickle)


def _resolve_device(device: str) -> str:
    from compressor.device import resolve_device

    return str(resolve_device(device))


def _python_call(checkpoint: Any, s: Settings) -> str:
    """The call as Python (the CLI passes its exact command line instead)."""
    return f"compressor.run({str(checkpoint)!r}, target={s.target!r}, flops={s.flops}, method={s.method!r}, out={s.out!r})"


def _join_torchrun(ctx: RunContext, progress: bool) -> None:
    """Under torchrun: one process group for the search and DDP fine-tuning; rank 0 reports."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from compressor.device import init_distributed

        ctx.dist = init_distributed(ctx.device)
        ctx.log.progress = progress and ctx.rank == 0


def _prepare(ctx: RunContext, force: bool) -> None:
    """Rank 0 checks and prepares the out folder; every rank fails alike if it cannot."""
    err = None
    if ctx.rank == 0:
        try:
            fp = fingerprint(ctx.s.fingerprint(), ctx.ck_sha, ctx.target)
            prepare_out(ctx.ws, fp, force=force, note=ctx.log.note)
        except UsageError as e:
            if ctx.dist.world <= 1:
                raise
            err = str(e)
    err = ctx.shared(err)
    if err:
        raise UsageError(err)


def refuse_replacing_inputs(ws: Workspace, inputs: list[Path]) -> None:
    """No run deletes or overwrites one of its inputs: an input that is one of the run's artifacts
    (or lies in one of its folders) is a :class:`UsageError`, before anything is touched."""
    owned = [ws.out / a for a in ARTIFACTS] + [ws.state, ws.out / "model.pt.state"]
    for p in inputs:
        real = p.resolve()
        for a in owned:
            a = a.resolve()
            if real == a or a in real.parents:
                raise UsageError(
                    f"input {str(p)!r} is {str(a)!r}, an artifact of the run in {str(ws.out)!r}, which the "
                    "run would replace or delete; copy it elsewhere or pick another --out"
                )


def _stages(ctx: RunContext, *, trust_pickle: bool) -> Report | WorkerResult:
    """The stages; a budget or validation error raised anywhere in them (by a method, a check)
    writes report.json and report.html first (rank 0), then is raised with the report."""
    try:
        return _run_stages(ctx, trust_pickle=trust_pickle)
    except (BudgetError, ValidationError) as e:
        if e.report is not None or ctx.rank != 0:
            raise
        from compressor.pipeline.stages import original_latency

        if isinstance(e, BudgetError) and "latency" not in ctx.original:
            original_latency(ctx)  # the report still compares with the original's latency
        status = "budget_not_met" if isinstance(e, BudgetError) else "validation_failed"
        report = finish(ctx, status, e.exit_code, str(e))
        raise type(e)(f"{e}; report: {ctx.ws.report_html}", report=report) from None


def _run_stages(ctx: RunContext, *, trust_pickle: bool) -> Report | WorkerResult:
    """load -> profile -> search -> slim -> fine-tune -> export (+ simplify) -> validate -> quantize
    -> report."""
    from compressor.pipeline.quantize import quantize
    from compressor.pipeline.search import search
    from compressor.pipeline.stages import (
        export_and_validate,
        load,
        original_latency,
        profile,
        slim_and_finetune,
    )

    where = f"; report: {ctx.ws.report_html}"
    load(ctx, trust_pickle=trust_pickle)
    profile(ctx)
    from compressor.pipeline.threads import choose_threads

    choose_threads(ctx, "search", ctx.model)
    try:
        search(ctx)
    except (BudgetStop, BudgetError) as e:  # the search loop's, or a method's (its floor)
        msg = e.message if isinstance(e, BudgetStop) else str(e)
        if "latency" not in ctx.original:  # the report still compares with the original's latency;
            original_latency(ctx)  # one timed by the search set the limit and is kept
        report = finish(ctx, "budget_not_met", 3, msg)
        raise BudgetError(msg + where, report=report) from None
    model = slim_and_finetune(ctx)
    if ctx.rank != 0:  # export, validation and the report are rank 0's
        return {"status": "worker", "rank": ctx.rank, "exit_code": 0}
    try:
        export_and_validate(ctx, model)
        quantize(ctx, model)
    except ValidationError as e:
        report = finish(ctx, "validation_failed", 4, str(e))
        raise ValidationError(f"{e}{where}", report=report) from None
    failed_checks = [c["name"] for c in ctx.checks if c.get("passed") is False]
    if failed_checks:
        msg = "validation failed: " + ", ".join(failed_checks)
        raise ValidationError(msg + where, report=finish(ctx, "validation_failed", 4, msg))
    failed = [b for b in budgets(ctx) if b.get("passed") is False]
    if failed:
        msg = "budget not met: " + "; ".join(
            f"{b['name']} reached {b['value']} (limit {b['limit']})" for b in failed
        )
        raise BudgetError(msg + where, report=finish(ctx, "budget_not_met", 3, msg))
    return finish(ctx, "passed", 0, "all budgets and checks passed")


__all__ = ["DryRunReport", "Report", "run"]
