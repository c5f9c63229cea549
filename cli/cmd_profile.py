"""``compress profile``: MACs and parameters, in total and per layer, and the channel groups."""

from __future__ import annotations

from typing import Annotated

import typer
from compressor.cli._common import cli_errors, console, parse_shape, print_json


def register(app: typer.Typer) -> None:
    @app.command()
    def profile(
        checkpoint: Annotated[
            str | None, typer.Argument(help="Checkpoint to profile (omit with --arch).")
        ] = None,
        arch: Annotated[
            str | None,
            typer.Option(help="Architecture: registered name, torchvision name or module:factory."),
        ] = None,
        input_shape: Annotated[
            str | None,
            typer.Option(
                help="Input shape C,H,W without the batch (default: the checkpoint's, else 3,224,224)."
            ),
        ] = None,
        batch: Annotated[int, typer.Option(help="Count the MACs of a batch of this many inputs.")] = 1,
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
        layers: Annotated[int, typer.Option(help="Rows of the per-layer table to show (0: all).")] = 30,
        trust_pickle: Annotated[
            bool, typer.Option(help="Allow loading a pickled nn.Module (runs code from the file).")
        ] = False,
    ) -> None:
        """Count multiply-accumulates and parameters (total and per layer) and list channel groups."""
        with cli_errors():
            from compressor.api import profile as run_profile

            res = run_profile(
                checkpoint,
                arch=arch,
                input_shape=parse_shape(input_shape),
                batch=batch,
                trust_pickle=trust_pickle,
            )
            if json_out:
                print_json(res)
                return
            from rich.table import Table

            t = Table(title=f"{res['arch']}  input {tuple(res['input_shape'])}")
            t.add_column("layer")
            t.add_column("type")
            t.add_column("MACs", justify="right")
            t.add_column("params", justify="right")
            rows = sorted(res["layers"], key=lambda r: -r["macs"])
            for r in rows[: layers or None]:
                t.add_row(r["module"], r["type"], f"{r['macs']:,}", f"{r['params']:,}")
            if layers and len(rows) > layers:
                t.add_row(f"... {len(rows) - layers} more", "", "", "")
            t.add_row("[bold]total", "", f"[bold]{res['macs']:,}", f"[bold]{res['params']:,}")
            console.print(t)
            console.print(
                f"MACs {res['macs'] / 1e6:,.2f} M, params {res['params'] / 1e6:,.3f} M; channel groups: "
                f"{res['prunable_groups']} prunable, {res['frozen_groups']} frozen"
            )
            for g in res["groups"]:
                if g["frozen"]:
                    console.print(f"  frozen [bold]{g['name']}[/] ({g['size']} channels): {g['reason']}")
