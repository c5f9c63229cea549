"""``compress quantize``: INT8 on ONNX Runtime, shipped only when measured accurate (and, with
``--precision auto``, faster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from compressor.cli._common import cli_errors, console, err_console, print_json

_TARGET_HELP = "Deploy target: a shipped name (see `compress targets`) or a path to your own .toml file."


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_cmd)


def quantize_cmd(
    model: Path = typer.Argument(..., help="The FP32 ONNX model (e.g. written by `compress export`)."),
    data: str = typer.Option(
        ...,
        help="Data spec: mnist5k, cifar10:DIR or imagefolder:DIR. Calibration uses its training split, "
        "decisions its validation split; its test split is reported only.",
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Where to write the chosen model (never the input file)."
    ),
    target: str = typer.Option("mobile", "--target", "-t", help=_TARGET_HELP),
    precision: str = typer.Option(
        "auto",
        help="auto: INT8 only if within the accuracy budget and at least 10% faster than FP32 on this "
        "runtime, else FP32; int8: INT8 within the accuracy budget or exit 3; fp32: the model unchanged "
        "(with its metadata).",
    ),
    calib_batches: int = typer.Option(8, help="Calibration batches drawn from the training split."),
    calib_batch_size: int = typer.Option(32, help="Images per calibration batch."),
    max_acc_drop: float | None = typer.Option(
        None, help="Allowed top-1 drop of INT8 against FP32, in points (overrides the target)."
    ),
    methods: str = typer.Option(
        "minmax,entropy,percentile", help="Calibration methods to try (comma-separated)."
    ),
    reference: Path | None = typer.Option(
        None,
        help="The PyTorch checkpoint the ONNX model was exported from: its normalisation and classes go "
        "into the metadata, and the INT8 numerics are checked against it.",
    ),
    plan: Path | None = typer.Option(
        None, help="The plan.json the model was pruned with (its hash is recorded)."
    ),
    threads: int | None = typer.Option(None, help="ONNX Runtime intra-op threads (overrides the target)."),
    opt_level: str | None = typer.Option(
        None,
        help="ONNX Runtime graph optimisation level: disable, basic, extended, all (overrides the target).",
    ),
    latency_seconds: float = typer.Option(1.0, help="Seconds of timed runs per repetition (3 repetitions)."),
    seed: int = typer.Option(0, help="Seed of the calibration sample."),
    arch: str | None = typer.Option(None, help="Architecture for a bare state_dict --reference."),
    trust_pickle: bool = typer.Option(False, help="Allow a pickled nn.Module --reference (runs code)."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON instead of tables."),
) -> None:
    """Quantize an FP32 ONNX model to INT8 with ONNX Runtime (static, QDQ, per-channel weights) and
    write what the measurements choose.

    Exit codes: 0 written; 2 bad input (OUT is the input, unknown data ...); 3 no INT8 meets the
    accuracy budget with --precision int8; 4 the INT8 model is beyond the INT8 tolerance of its
    reference.
    """
    with cli_errors():
        from compressor.export.quantize import quantize_file
        from compressor.targets import load_target

        t = load_target(target, intra_op_threads=threads, graph_optimization_level=opt_level)
        decision = quantize_file(
            model,
            output,
            data=data,
            target=t,
            reference=reference,
            plan=plan,
            arch=arch,
            trust_pickle=trust_pickle,
            precision=precision,
            calib_batches=calib_batches,
            calib_batch_size=calib_batch_size,
            max_acc_drop=max_acc_drop,
            methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
            seed=seed,
            latency_budget_s=latency_seconds,
            log=None if as_json else (lambda s: err_console.print(f"[dim]{s}[/]")),
        )
        d = decision.to_dict()
        if as_json:
            print_json(d)
        else:
            print_decision(d)
        decision.raise_for_status()


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def print_decision(d: dict[str, Any]) -> None:
    """The decision table: FP32 and every INT8 candidate, then what ships and why."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    fp = d["fp32"]
    chosen = (d.get("chosen") or {}).get("name")
    ships = d["passed"]
    t = Table(
        title=f"{d['source']}: top-1 drop allowed {d['max_acc_drop']:g} points",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
    )
    t.add_column("model", no_wrap=True)
    for col in ("fp32", "top-1", "drop", "err", "p50 ms", "x", "KiB", "acc"):
        t.add_column(col, justify="right")
    t.add_row(
        ("* " if ships and d["precision"] == "fp32" else "") + "fp32",
        "all",
        _f(fp.get("top1")),
        "",
        "",
        _f(fp.get("latency_p50"), "{:.3f}"),
        "1.00" if fp.get("latency_p50") else "-",
        f"{fp['size_bytes'] / 1024:.0f}",
        "",
    )
    style = {"pass": "green", "fail": "red", "skipped": "dim"}
    for c in d["candidates"]:
        t.add_row(
            ("* " if ships and c["name"] == chosen else "") + escape(c["name"]),
            str(len(c["excluded"])) if c["excluded"] else "",
            _f(c["top1"]),
            _f(c["drop"]),
            _f(c["rel_error"], "{:.3f}"),
            _f(c["latency_p50"], "{:.3f}"),
            _f(c["latency_ratio"]),
            f"{c['size_bytes'] / 1024:.0f}",
            f"[{style[c['accuracy']]}]{c['accuracy']}[/]",
        )
    console.print(t)
    console.print(
        "[dim]* ships. fp32: nodes kept in FP32. top-1 (%) and drop (points) against FP32 on the validation "
        "split; err: relative error of the logits; p50: median of repeats, all timed interleaved; x: p50 / FP32's[/]"
    )
    for c in d["candidates"]:
        if c["note"]:
            console.print(f"[yellow]{escape(c['name'])}:[/] {escape(c['note'])}")
    if d["kept_fp32"]:
        console.print("[bold]kept in FP32[/] (most sensitive first):")
        for k in d["kept_fp32"]:
            console.print(f"  {escape(k['node'])} ({k['op_type']}): {escape(k['reason'])}")
    rs = d.get("report_split")
    if rs:
        console.print(
            f"test split ({rs['samples']} images, reported only): FP32 {_f(rs['fp32_top1'])}%, "
            f"shipped {_f(rs['shipped_top1'])}%"
        )
    if d.get("numerics"):
        n = d["numerics"]
        console.print(f"numerics: [{'green' if n['passed'] else 'bold red'}]{escape(n['detail'])}[/]")
    for note in d["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(f"[dim]{escape(d['latency']['measured_on'])}[/]")
    if d["passed"]:
        console.print(
            f"[bold green]{d['precision'].upper()}[/] -> {escape(str(d['out']))}: {escape(d['reason'])}"
        )
    else:
        console.print(f"[bold red]FAIL[/] (exit {d['exit_code']}): {escape(d['reason'])}")
