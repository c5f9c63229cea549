"""``compress search``: find a pruning plan for a checkpoint with any registered method."""

from __future__ import annotations

from pathlib import Path

import typer
from compressor.cli._common import cli_errors, console, parse_shape, print_json


def _check_method(value: str) -> str:
    """Validate against the registry lazily (only when the command runs), so ``--help`` stays
    instant and a new method never means editing the CLI."""
    from compressor.methods import list_methods

    names = list_methods()
    if value not in names:
        raise typer.BadParameter(f"unknown method {value!r}; valid: {', '.join(names)}")
    return value


def register(app: typer.Typer) -> None:
    @app.command("search")
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
            help="A registered pruning method (eagleeye, epruner, l1-uniform, ...); an unknown name lists them.",
        ),
        flops: float | None = typer.Option(
            None, "--flops", help="Fraction of the original FLOPs (MACs) to keep, in (0, 1], e.g. 0.5."
        ),
        beta: float | None = typer.Option(
            None, "--beta", help="epruner: the preference factor, instead of --flops."
        ),
        data: str | None = typer.Option(
            None,
            "--data",
            help="mnist5k | cifar10:DIR | imagefolder:DIR (default: the checkpoint's dataset, for methods that need data).",
        ),
        candidates: int | None = typer.Option(
            None,
            "--candidates",
            help="eagleeye: number of candidates to score (default 100 when no --time-budget).",
        ),
        time_budget: float | None = typer.Option(
            None, "--time-budget", help="eagleeye: seconds of search (stops after the candidate in progress)."
        ),
        calib_batches: int | None = typer.Option(
            None, "--calib-batches", help="eagleeye: training batches for adaptive BN (default 50)."
        ),
        batch_size: int | None = typer.Option(
            None, "--batch-size", help="eagleeye: calibration batch size (default 64)."
        ),
        top_k: int | None = typer.Option(
            None,
            "--top-k",
            help="eagleeye: fine-tune the best K briefly and keep the best after fine-tuning (default 1: no fine-tune).",
        ),
        finetune_epochs: int | None = typer.Option(
            None, "--finetune-epochs", help="eagleeye: epochs of each top-k fine-tune (default 1)."
        ),
        ratio_max: float | None = typer.Option(
            None,
            "--ratio-max",
            help="eagleeye: R, largest pruning ratio drawn per group (default from the paper's settings for the FLOPs target).",
        ),
        tolerance: float | None = typer.Option(
            None, "--tolerance", help="Relative tolerance on the FLOPs target (default 0.01 = 1%)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same candidates and plan."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
        out: Path = typer.Option(Path("plan.json"), "--output", "-o", help="Where to write the plan (JSON)."),
        candidates_file: Path | None = typer.Option(
            None,
            "--candidates-file",
            help="Scored candidates, appended as scored; a rerun resumes (default: <plan stem>.candidates.jsonl beside the plan).",
        ),
        arch: str | None = typer.Option(
            None, "--arch", help="Architecture for a bare state_dict (name or package.module:factory)."
        ),
        input_shape: str | None = typer.Option(
            None,
            "--input-shape",
            help="Input shape with batch, e.g. 1,3,224,224 (default: from the checkpoint).",
        ),
        trust_pickle: bool = typer.Option(
            False, "--trust-pickle", help="Allow a pickled whole nn.Module (runs code from the file)."
        ),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Search a pruning plan: [bold]compress search model.pt --method eagleeye --flops 0.5 -o plan.json[/].

        Apply it with [bold]compress prune model.pt --plan plan.json -o slim.pt[/]. Under
        [bold]torchrun --nproc-per-node N -m cli.main search ...[/] the candidates are shared across ranks.
        """
        with cli_errors():
            from compressor.search_loop import dist_env, search_checkpoint

            options = {
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
    if s.get("score") is not None:
        console.print(f"best score: {s['score']:.2f} (candidate {s.get('candidate')})")
    if s.get("candidates_file"):
        console.print(f"candidates: {s['candidates_file']}")
    console.print(f"plan written to [bold]{s['plan']}[/] in {s['seconds']:.1f} s")
