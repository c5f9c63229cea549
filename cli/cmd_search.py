"""``compress search``: find a pruning plan for a checkpoint with any registered method."""

from __future__ import annotations

from pathlib import Path

import typer
from compressor.cli._common import (
    INPUT_SHAPE_HELP,
    OPTION_HELP,
    MethodsHelpCommand,
    cli_errors,
    console,
    parse_options,
    parse_shape,
    print_json,
)


def _check_method(value: str) -> str:
    """Validate against the registry lazily (only when the command runs), so ``--help`` stays
    instant and a new method never means editing the CLI."""
    from compressor.methods import list_methods

    names = list_methods()
    if value not in names:
        raise typer.BadParameter(f"unknown method {value!r}; valid: {', '.join(names)}")
    return value


#: Options whose defaults ``compress search`` takes from ``compress run`` (one set of defaults).
SHARED_DEFAULTS = ("candidates", "calib_batches", "top_k")


def run_defaults(method: str, options: dict) -> dict:
    """``options`` completed with ``compress run``'s defaults for the options the method has."""
    from compressor.methods import get_method
    from compressor.pipeline.settings import DEFAULTS

    spec = get_method(method)
    extra = {k: DEFAULTS[k] for k in SHARED_DEFAULTS if k not in options and spec.has_option(k)}
    return {**extra, **options}


def register(app: typer.Typer) -> None:
    @app.command("search", cls=MethodsHelpCommand)
    def search(
        checkpoint: Path = typer.Argument(
            ..., help="Trained checkpoint (compressor, torchvision reference, or state_dict with --arch)."
        ),
        method: str = typer.Option(
            "eagleeye",
            "--method",
            "-m",
            callback=_check_method,
            metavar="METHOD",
            help="A registered pruning method (listed below); an unknown name lists them.",
        ),
        flops: float | None = typer.Option(
            None, "--flops", help="Fraction of the original FLOPs (MACs) to keep, in (0, 1], e.g. 0.5."
        ),
        target: str | None = typer.Option(
            None,
            "--target",
            help="Deploy target: its channel multiple rounds kept widths (unless --option multiple=M); needed by --latency.",
        ),
        latency: float | None = typer.Option(
            None,
            "--latency",
            help="Keep this fraction of the model's latency as the target's latency model predicts it "
            "(ONNX Runtime, measured once and cached), instead of --flops; needs --target.",
        ),
        option: list[str] | None = typer.Option(
            None, "--option", "-O", metavar="KEY=VALUE", help=OPTION_HELP
        ),
        beta: float | None = typer.Option(None, "--beta", help="Shorthand for --option beta=B."),
        data: str | None = typer.Option(
            None,
            "--data",
            help="mnist5k | cifar10:DIR | imagefolder:DIR (default: the checkpoint's dataset, for methods that need data).",
        ),
        candidates: int | None = typer.Option(
            None, "--candidates", help="Shorthand for --option candidates=N (default 20, as compress run)."
        ),
        time_budget: float | None = typer.Option(
            None, "--time-budget", help="Shorthand for --option time_budget=SECONDS."
        ),
        calib_batches: int | None = typer.Option(
            None,
            "--calib-batches",
            help="Shorthand for --option calib_batches=N (default 10, as compress run).",
        ),
        batch_size: int | None = typer.Option(
            None, "--batch-size", help="Shorthand for --option batch_size=N."
        ),
        top_k: int | None = typer.Option(
            None, "--top-k", help="Shorthand for --option top_k=K (default 3, as compress run)."
        ),
        finetune_epochs: int | None = typer.Option(
            None, "--finetune-epochs", help="Shorthand for --option finetune_epochs=N."
        ),
        ratio_max: float | None = typer.Option(
            None, "--ratio-max", help="Shorthand for --option ratio_max=R."
        ),
        tolerance: float | None = typer.Option(
            None, "--tolerance", help="Shorthand for --option tolerance=T."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same candidates and plan."),
        device: str = typer.Option(
            "auto", "--device", help="auto | cpu | cuda | cuda:N, for methods with a device option."
        ),
        out: Path = typer.Option(Path("plan.json"), "--output", "-o", help="Where to write the plan (JSON)."),
        candidates_file: Path | None = typer.Option(
            None,
            "--candidates-file",
            help="Scored candidates, appended as scored, for methods that score candidates; a rerun resumes (default: <plan stem>.candidates.jsonl beside the plan).",
        ),
        arch: str | None = typer.Option(
            None, "--arch", help="Architecture for a bare state_dict (name or package.module:factory)."
        ),
        input_shape: str | None = typer.Option(None, "--input-shape", help=INPUT_SHAPE_HELP),
        trust_pickle: bool = typer.Option(
            False, "--trust-pickle", help="Allow a pickled whole nn.Module (runs code from the file)."
        ),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
        quiet: bool = typer.Option(
            False, "--quiet", "-q", help="No progress (warnings and errors still show)."
        ),
    ) -> None:
        """Search a pruning plan: [bold]compress search model.pt --method eagleeye --flops 0.5 -o plan.json[/].

        Apply it with [bold]compress prune model.pt --plan plan.json -o slim.pt[/]. Under
        [bold]torchrun --nproc-per-node N -m compressor.cli.main search ...[/] the candidates are shared
        across ranks.
        """
        with cli_errors(as_json=json_out):
            from compressor.api import search_checkpoint
            from compressor.device import dist_env

            shorthands = {
                "beta": beta,
                "candidates": candidates,
                "time_budget": time_budget,
                "calib_batches": calib_batches,
                "batch_size": batch_size,
                "top_k": top_k,
                "finetune_epochs": finetune_epochs,
                "ratio_max": ratio_max,
                "tolerance": tolerance,
            }
            options = {k: v for k, v in shorthands.items() if v is not None}
            options.update(parse_options(method, option))
            options = run_defaults(method, options)
            plan, summary = search_checkpoint(
                checkpoint,
                method=method,
                flops=flops,
                data=data,
                out=out,
                seed=seed,
                arch=arch,
                input_shape=parse_shape(input_shape),
                trust_pickle=trust_pickle,
                device=device,
                candidates_file=candidates_file,
                progress=not (quiet or json_out),
                target=target,
                latency=latency,
                **options,
            )
            if dist_env()[0] != 0:
                return
            if json_out:
                print_json(summary)
                return
            _print_summary(summary)


def _print_summary(s: dict) -> None:
    from rich.table import Table

    t = Table(title=f"compress search ({s['method']})", show_header=True)
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_row("MACs", f"{s['macs_before']:,}", f"{s['macs_after']:,} ({s['flops_ratio']:.1%})")
    t.add_row("params", f"{s['params_before']:,}", f"{s['params_after']:,}")
    console.print(t)
    console.print(f"groups pruned: {s['groups_pruned']} of {s['groups']}")
    if s.get("latency_predicted_fraction") is not None:
        console.print(
            f"predicted latency: {s['latency_predicted_fraction']:.3f} of the original's "
            f"(budget {s['latency_target']:g})"
        )
    if s.get("score") is not None:
        console.print(f"best score: {s['score']:.2f} (candidate {s.get('candidate')})")
    if s.get("candidates_file"):
        console.print(f"candidates: {s['candidates_file']}")
    console.print(f"plan written to [bold]{s['plan']}[/] in {s['seconds']:.1f} s")
