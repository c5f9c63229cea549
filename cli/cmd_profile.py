"""``compress profile``: MACs and parameters, in total and per layer, and the channel groups."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from compressor.cli._common import (
    ARCH_ARGS_HELP,
    ARCH_HELP,
    cli_errors,
    console,
    parse_kv,
    parse_shape,
    print_json,
)


def register(app: typer.Typer) -> None:
    @app.command()
    def profile(
        checkpoint: Annotated[
            str | None, typer.Argument(help="Checkpoint to profile (omit with --arch).")
        ] = None,
        arch: Annotated[str | None, typer.Option(help=ARCH_HELP)] = None,
        arch_args: Annotated[
            list[str] | None, typer.Option("--arch-args", metavar="KEY=VALUE", help=ARCH_ARGS_HELP)
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
        compare: Annotated[
            str | None,
            typer.Option(
                "--compare",
                help="The original checkpoint: show channels before -> after per group (what was pruned).",
            ),
        ] = None,
    ) -> None:
        """Count multiply-accumulates and parameters (total and per layer) and list channel groups."""
        with cli_errors(as_json=json_out):
            from compressor.api import profile as run_profile

            res = run_profile(
                checkpoint,
                arch=arch,
                arch_kwargs=parse_kv(arch_args) or None,
                input_shape=parse_shape(input_shape),
                batch=batch,
                trust_pickle=trust_pickle,
            )
            if compare is not None:
                orig = run_profile(
                    compare,
                    arch=arch,
                    input_shape=parse_shape(input_shape),
                    batch=batch,
                    trust_pickle=trust_pickle,
                )
                res["compare"] = compare_groups(orig, res)
            if json_out:
                print_json(res)
                return
            if compare is not None:
                _print_compare(res["compare"], compare, checkpoint)
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


def compare_groups(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Channels per group of the original (``before``) and the pruned model (``after``), by group name."""
    now = {g["name"]: g for g in after["groups"]}
    rows = [
        {
            "group": g["name"],
            "before": g["size"],
            "after": now[g["name"]]["size"] if g["name"] in now else None,
            "frozen": g["frozen"],
        }
        for g in before["groups"]
    ]
    return {
        "macs_before": before["macs"], "macs_after": after["macs"],
        "params_before": before["params"], "params_after": after["params"], "groups": rows,
    }  # fmt: skip


def _print_compare(c: dict[str, Any], original: str, pruned: str | None) -> None:
    """Channels before -> after per group, and the totals."""
    from rich.table import Table

    t = Table(title=f"{original} -> {pruned}")
    for col, just in (("group", "left"), ("before", "right"), ("after", "right"), ("kept", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in c["groups"]:
        kept = f"{r['after'] / r['before']:.0%}" if r["after"] is not None and r["before"] else "-"
        after = "-" if r["after"] is None else str(r["after"])
        t.add_row(r["group"] + (" (frozen)" if r["frozen"] else ""), str(r["before"]), after, kept)
    console.print(t)
    console.print(
        f"MACs {c['macs_before'] / 1e6:,.2f} M -> {c['macs_after'] / 1e6:,.2f} M "
        f"({c['macs_after'] / max(c['macs_before'], 1):.1%}); params {c['params_before'] / 1e6:,.3f} M -> "
        f"{c['params_after'] / 1e6:,.3f} M"
    )
