"""``compress run``: the whole pipeline in one command (a thin shell over compressor.run)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from compressor.cli._common import (
    ARCH_ARGS_HELP,
    ARCH_HELP,
    OPTION_HELP,
    MethodsHelpCommand,
    cli_errors,
    console,
    err_console,
    parse_floats,
    parse_kv,
    parse_options,
    parse_shape,
    print_json,
)


def register(app: typer.Typer) -> None:
    @app.command("run", cls=MethodsHelpCommand)
    def run_cmd(
        ctx: typer.Context,
        checkpoint: Path = typer.Argument(
            ..., help="Trained checkpoint (.pt), e.g. examples/resnet_mnist.pt."
        ),
        target: str = typer.Option(
            None, "--target", "-t", help="Deploy target name (see `compress targets`) or a .toml file."
        ),
        flops: float = typer.Option(
            None, "--flops", help="Fraction of the original FLOPs to keep, in (0, 1] (default: the target's)."
        ),
        latency_ms: float = typer.Option(
            None, "--latency-ms", help="Latency budget in ms on ONNX Runtime (default: the target's)."
        ),
        latency: float = typer.Option(
            None,
            "--latency",
            help="Latency budget as a fraction of the original's measured latency, in (0, 1]; with it (or "
            "--latency-ms) the search meets the target's predicted latency instead of FLOPs.",
        ),
        method: str = typer.Option(
            None,
            "--method",
            "-m",
            help="A registered pruning method (listed below; default eagleeye); an unknown name lists them.",
        ),
        option: list[str] = typer.Option(None, "--option", "-O", metavar="KEY=VALUE", help=OPTION_HELP),
        data: str = typer.Option(
            None,
            "--data",
            help="mnist5k, cifar10:DIR or imagefolder:DIR (default: the checkpoint's dataset).",
        ),
        epochs: int = typer.Option(
            None, "--epochs", help="Fine-tuning epochs (default 10; 0 skips fine-tuning)."
        ),
        lr: float = typer.Option(
            None,
            "--lr",
            help="Fine-tuning learning rate (default: the checkpoint's training lr scaled to the batch, else 0.01).",
        ),
        device: str = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (default auto)."),
        threads: int = typer.Option(
            None,
            "--threads",
            help="CPU threads (default: OMP_NUM_THREADS if set, else the fastest of 1, 2, 4 ... measured at the start of the search and the fine-tune).",
        ),
        seed: int = typer.Option(None, "--seed", help="Random seed (default 0)."),
        candidates: int = typer.Option(
            None, "--candidates", help="Candidates a method that scores candidates evaluates (default 20)."
        ),
        top_k: int = typer.Option(
            None,
            "--top-k",
            help="A method with a top_k option fine-tunes at most K finalists 1 epoch each (the best score, those within one standard error of it, and the uniform plan) and keeps the best (default 3; 1 = best score).",
        ),
        max_acc_drop: float = typer.Option(
            None, "--max-acc-drop", help="Largest allowed top-1 drop in points (default: the target's)."
        ),
        arch: str = typer.Option(None, "--arch", help=ARCH_HELP),
        arch_args: list[str] = typer.Option(None, "--arch-args", metavar="KEY=VALUE", help=ARCH_ARGS_HELP),
        input_shape: str = typer.Option(
            None,
            "--input-shape",
            help="Input shape C,H,W, e.g. 3,224,224 (default: the checkpoint's, the target's, else the data's).",
        ),
        mean: str = typer.Option(
            None,
            "--mean",
            help="Normalisation mean per channel, e.g. 0.485,0.456,0.406 (default: the checkpoint's, else the data's).",
        ),
        std: str = typer.Option(
            None,
            "--std",
            help="Normalisation std per channel, e.g. 0.229,0.224,0.225 (with --mean; 0,0,0 and 1,1,1 = none).",
        ),
        replace_head: bool = typer.Option(
            False,
            "--replace-head",
            help="When the data has another class count than the model: replace the classifier with a new one (trained by the fine-tuning).",
        ),
        exclude: list[str] = typer.Option(
            None,
            "--exclude",
            metavar="PATTERN",
            help="Never prune the output channels of modules matching this glob, e.g. 'layer4.*' (repeatable).",
        ),
        precision: str = typer.Option(
            None,
            "--precision",
            help="What ships: fp32, int8 or auto (INT8 only if accurate and >= 10% faster; "
            "default: the target's, auto for mobile/edge).",
        ),
        config: Path = typer.Option(
            None, "--config", help="Run settings TOML (target < config < flags); layout: docs/cli.md."
        ),
        out: Path = typer.Option(
            None, "--output", "-o", "--out", help="Output folder for the artifacts (default out/)."
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Load and profile, print what would run and a time estimate."
        ),
        force: bool = typer.Option(
            False, "--force", help="Discard artifacts of an earlier run with other settings in --out."
        ),
        trust_pickle: bool = typer.Option(
            False, "--trust-pickle", help="Allow a pickled nn.Module checkpoint (runs code!)."
        ),
        as_json: bool = typer.Option(
            False, "--json", help="Print the report as JSON on stdout (progress goes to stderr)."
        ),
        quiet: bool = typer.Option(
            False, "--quiet", "-q", help="No progress (warnings and errors still show)."
        ),
    ) -> None:
        """Compress a checkpoint for a deploy target: search, slim, fine-tune, export, validate, quantize, report.

        Exit codes: 0 all passed, 2 bad input, 3 a budget not met, 4 validation failed.
        """
        with cli_errors(as_json=as_json):
            from compressor.errors import CompressorError
            from compressor.methods import DEFAULT_METHOD
            from compressor.pipeline import run

            command = _command_line(ctx)
            try:
                report = run(
                    checkpoint,
                    target=target,
                    flops=flops,
                    latency_ms=latency_ms,
                    latency=latency,
                    method=method,
                    data=data,
                    epochs=epochs,
                    device=device,
                    seed=seed,
                    config=config,
                    out=out,
                    dry_run=dry_run,
                    force=force,
                    candidates=candidates,
                    top_k=top_k,
                    lr=lr,
                    max_acc_drop=max_acc_drop,
                    arch=arch,
                    arch_args=parse_kv(arch_args),
                    input_shape=parse_shape(input_shape),
                    mean=parse_floats(mean, "--mean"),
                    std=parse_floats(std, "--std"),
                    replace_head=replace_head or None,
                    exclude=exclude or None,
                    threads=threads,
                    precision=precision,
                    trust_pickle=trust_pickle,
                    progress=not quiet,
                    command=command,
                    console=err_console,  # progress and logs: stderr, always
                    method_options=parse_options(method or DEFAULT_METHOD, option) if option else None,
                )
            except CompressorError as e:  # a budget or validation failure still has a report: show it
                if e.report is not None:
                    _show(e.report, as_json=as_json, dry_run=False)
                raise
            _show(report, as_json=as_json, dry_run=dry_run)


def _command_line(ctx: typer.Context) -> str:
    """The exact command as typed; rebuilt from the parsed options when called in-process (tests)."""
    if "run" in sys.argv[1:3]:
        return "compress " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    parts = ["compress", "run", shlex.quote(str(ctx.params["checkpoint"]))]
    for p in ctx.command.params:
        v = ctx.params.get(p.name)
        if p.name == "checkpoint" or v is None or v is False:
            continue
        flag = max(p.opts, key=len)
        for item in v if isinstance(v, (list, tuple)) else [v]:
            parts.append(flag if item is True else f"{flag} {shlex.quote(str(item))}")
    return " ".join(parts)


def _show(report: Any, *, as_json: bool, dry_run: bool) -> None:
    from compressor.pipeline import estimate_table
    from compressor.report import render_table

    if report.get("status") == "worker":  # a non-zero torchrun rank: rank 0 prints
        return
    if as_json:
        print_json(report)
    elif dry_run:
        console.print(estimate_table(report))
    else:
        console.print(render_table(report))
        console.print(f"report: {report['artifacts'].get('report.html')}")
