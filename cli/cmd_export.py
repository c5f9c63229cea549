"""``compress export``, ``compress validate`` and ``compress targets``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from compressor.cli._common import cli_errors, console, parse_shape, print_json

_TARGET_HELP = "Deploy target: a shipped name (see `compress targets`) or a path to your own .toml file."


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
    app.command("validate")(validate_cmd)
    app.command("targets")(targets_cmd)


def export_cmd(
    checkpoint: Path = typer.Argument(
        ..., help="Checkpoint to export (compressor, torchvision reference or state_dict)."
    ),
    target: str = typer.Option("mobile", "--target", "-t", help=_TARGET_HELP),
    output: Path = typer.Option(Path("model.onnx"), "--output", "-o", help="Where to write the ONNX file."),
    opset: int | None = typer.Option(None, help="ONNX opset (overrides the target's [export].opset)."),
    batch: int | None = typer.Option(None, help="Batch size (overrides the target's [input].batch)."),
    dynamic_batch: bool | None = typer.Option(
        None,
        "--dynamic-batch/--static-batch",
        help="Symbolic or fixed batch dimension (overrides the target).",
    ),
    input_shape: str | None = typer.Option(
        None, help="Input shape C,H,W without the batch (default: the checkpoint's, else the target's)."
    ),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Simplify with onnxsim."),
    arch: str | None = typer.Option(
        None, help="Architecture for a bare state_dict, e.g. torchvision.models:resnet18."
    ),
    trust_pickle: bool = typer.Option(
        False, help="Allow a pickled nn.Module checkpoint (runs code from the file)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the export result as JSON."),
) -> None:
    """Export a checkpoint to a simplified ONNX model for a deploy target."""
    with cli_errors():
        from compressor.export import export_checkpoint

        res = export_checkpoint(
            checkpoint,
            output,
            target=target,
            arch=arch,
            trust_pickle=trust_pickle,
            input_shape=parse_shape(input_shape),
            simplify=simplify,
            opset=opset,
            batch=batch,
            dynamic_batch=dynamic_batch,
        )
        if as_json:
            print_json(res.to_dict())
            return
        sim = res.simplify.message if res.simplify else "not simplified (--no-simplify)"
        color = "green" if res.simplified or res.simplify is None else "yellow"
        console.print(
            f"[bold]wrote[/] {res.path} ({res.size_bytes / 1024:.1f} KiB): opset {res.opset}, "
            f"input {res.input_name!r} {res.input_shape}{' (dynamic batch)' if res.dynamic_batch else ''}, "
            f"output {res.output_name!r}, {res.exporter} exporter"
        )
        console.print(f"[{color}]{sim}[/]")
        for note in res.notes:
            console.print(f"[yellow]note:[/] {note}")
        console.print("versions: " + ", ".join(f"{k} {v}" for k, v in res.versions.items()))


def validate_cmd(
    model: Path = typer.Argument(..., help="The ONNX model to validate."),
    reference: Path = typer.Option(
        ..., "--reference", "-r", help="The PyTorch checkpoint the ONNX model was exported from."
    ),
    target: str = typer.Option("mobile", "--target", "-t", help=_TARGET_HELP),
    data: str | None = typer.Option(
        None,
        help="Data spec whose test split is used: mnist5k, cifar10:DIR or imagefolder:DIR. "
        "Without it only random inputs and latency are checked.",
    ),
    original: Path | None = typer.Option(
        None, help="The uncompressed checkpoint (or its .onnx): accuracy drop and latency side by side."
    ),
    latency_ms: float | None = typer.Option(None, help="Latency budget in ms (overrides the target)."),
    percentile: float | None = typer.Option(
        None, help="Latency percentile compared with the budget (overrides the target)."
    ),
    max_acc_drop: float | None = typer.Option(
        None, help="Allowed top-1 drop in points (overrides the target)."
    ),
    threads: int | None = typer.Option(None, help="ONNX Runtime intra-op threads (overrides the target)."),
    opt_level: str | None = typer.Option(
        None,
        help="ONNX Runtime graph optimisation level: disable, basic, extended, all (overrides the target).",
    ),
    provider: str | None = typer.Option(None, help="ONNX Runtime execution provider (overrides the target)."),
    atol: float = typer.Option(1e-4, help="Absolute tolerance of ONNX vs PyTorch outputs."),
    rtol: float = typer.Option(1e-3, help="Tolerance relative to the largest PyTorch output magnitude."),
    max_batches: int | None = typer.Option(None, help="Use at most this many test batches (default: all)."),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Measure latency on ONNX Runtime."),
    latency_seconds: float = typer.Option(3.0, help="Time spent on timed runs (after warm-up)."),
    arch: str | None = typer.Option(None, help="Architecture for a bare state_dict reference."),
    trust_pickle: bool = typer.Option(
        False, help="Allow pickled nn.Module checkpoints (runs code from the file)."
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Where to write the JSON report (default: validation.json beside the model).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
) -> None:
    """Validate an ONNX model on ONNX Runtime: numerics, accuracy, latency against a deploy target.

    Exit codes: 0 all checks pass, 3 a budget is missed (accuracy drop, latency), 4 the ONNX model
    differs from PyTorch (numerics or accuracy disagreement).
    """
    with cli_errors():
        from compressor.export import validate_checkpoint
        from compressor.io import atomic_write_json

        report = validate_checkpoint(
            model,
            reference=reference,
            target=target,
            data=data,
            original=original,
            arch=arch,
            trust_pickle=trust_pickle,
            atol=atol,
            rtol=rtol,
            max_batches=max_batches,
            latency=latency,
            latency_budget_s=latency_seconds,
            latency_ms=latency_ms,
            percentile=percentile,
            max_acc_drop=max_acc_drop,
            intra_op_threads=threads,
            graph_optimization_level=opt_level,
            provider=provider,
        )
        out = output if output is not None else Path(model).parent / "validation.json"
        d = report.to_dict()
        atomic_write_json(out, d)
        if as_json:
            print_json(d)
        else:
            print_report(d)
            console.print(f"report: {out}")
        report.raise_for_status()


def targets_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the targets as JSON."),
) -> None:
    """List the shipped deploy targets with their budgets and runtime settings."""
    with cli_errors():
        from compressor.targets import list_targets, load_target, target_summary

        rows = [target_summary(load_target(n)) for n in list_targets()]
        if as_json:
            print_json(rows)
            return
        from rich.table import Table

        table = Table(title="deploy targets (use --target NAME, or --target path/to/own.toml)")
        for col in (
            "name",
            "FLOPs kept",
            "latency",
            "max acc drop",
            "runtime",
            "input",
            "export",
            "description",
        ):
            table.add_column(col, overflow="fold")
        for r in rows:
            lat = f"{r['latency_ms']:g} ms @ p{r['percentile']:g}" if r["latency_ms"] else "no budget"
            shape = "x".join(map(str, r["shape"])) if r["shape"] else "from checkpoint"
            table.add_row(
                r["name"],
                f"{r['flops']:g}",
                lat,
                f"{r['max_acc_drop']:g} pt",
                f"{r['provider'].replace('ExecutionProvider', '')}, {r['intra_op_threads']} threads, "
                f"opt {r['graph_optimization_level']}",
                f"batch {r['batch']}, {shape}",
                f"opset {r['opset']}, x{r['channel_multiple']} channels, "
                f"{'dynamic' if r['dynamic_batch'] else 'static'} batch",
                r["description"],
            )
        console.print(table)


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        s = f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.3f}".rstrip("0").rstrip(".")
    else:
        s = str(v)
    return f"{s} {unit}".strip()


def print_report(d: dict[str, Any]) -> None:
    """Rich tables of a validation report dict (checks, accuracy, latency)."""
    from rich.table import Table

    style = {"pass": "green", "fail": "bold red", "skipped": "dim"}
    t = Table(title=f"validation of {d['onnx_path']} for target {d['target']['name']!r}")
    for col in ("check", "kind", "status", "value", "limit", "detail"):
        t.add_column(col, overflow="fold")
    for c in d["checks"]:
        t.add_row(
            c["name"],
            c["kind"],
            f"[{style[c['status']]}]{c['status']}[/]",
            _fmt(c["value"], c["unit"]),
            _fmt(c["limit"], c["unit"]),
            c["detail"],
        )
    console.print(t)
    acc = d.get("accuracy")
    if acc:
        a = Table(title=f"accuracy on {acc['samples']} test images (%)")
        a.add_column("model")
        ks = sorted({k.split("_top")[1] for k in acc if "_top" in k})
        for k in ks:
            a.add_column(f"top-{k}", justify="right")
        for key, label in (
            ("onnx", "compressed, ONNX Runtime"),
            ("torch", "compressed, PyTorch"),
            ("original", "original"),
        ):
            if f"{key}_top1" in acc:
                a.add_row(label, *[_fmt(acc.get(f"{key}_top{k}")) for k in ks])
        console.print(a)
    lat = d.get("latency")
    if lat:
        comp, orig = lat["compressed"], lat.get("original")
        lt = Table(title=f"latency (ms, batch {comp['input_shape'][0]}, {comp['runs']} timed runs)")
        lt.add_column("")
        lt.add_column("compressed", justify="right")
        if orig:
            lt.add_column("original", justify="right")
            lt.add_column("ratio", justify="right")
        for m in ("p50", "p90", "p99", "mean", "std"):
            row = [m, f"{comp[m]:.3f}"]
            if orig:
                row += [f"{orig[m]:.3f}", f"{comp[m] / orig[m]:.2f}" if orig[m] and m != "std" else ""]
            lt.add_row(*row)
        console.print(lt)
        console.print(f"[dim]{lat['measured_on']}[/]")
        for note in lat.get("session", {}).get("notes", []):
            console.print(f"[yellow]note:[/] {note}")
    verdict = "[bold green]PASS[/]" if d["passed"] else f"[bold red]FAIL[/] (exit {d['exit_code']})"
    console.print(verdict)
