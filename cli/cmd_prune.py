"""``compress prune``: prune a checkpoint by a method (or a saved plan) and save the slim model."""

from __future__ import annotations

from typing import Annotated

import typer
from compressor.cli._common import cli_errors, console, parse_shape, print_json


def register(app: typer.Typer) -> None:
    @app.command()
    def prune(
        checkpoint: Annotated[str, typer.Argument(help="Checkpoint to prune.")],
        out: Annotated[str, typer.Option("-o", "--out", help="Where to write the slimmed checkpoint.")],
        method: Annotated[
            str, typer.Option(help="Pruning method (see 'compress search --help').")
        ] = "l1-uniform",
        flops: Annotated[
            float, typer.Option(help="Fraction of the original FLOPs to keep, in (0, 1].")
        ] = 0.5,
        plan: Annotated[
            str | None,
            typer.Option(help="Apply this plan.json (from 'compress search') instead of a method."),
        ] = None,
        arch: Annotated[str | None, typer.Option(help="Architecture for a bare state_dict.")] = None,
        input_shape: Annotated[
            str | None, typer.Option(help="Input shape with batch, e.g. 1,3,224,224.")
        ] = None,
        multiple: Annotated[
            int, typer.Option(help="Round kept widths to this channel multiple (l1-uniform).")
        ] = 1,
        verify: Annotated[bool, typer.Option(help="Check the slim model equals the masked original.")] = True,
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        trust_pickle: Annotated[
            bool, typer.Option(help="Allow loading a pickled nn.Module (runs code from the file).")
        ] = False,
    ) -> None:
        """Physically slim a model: fewer channels, smaller weights, same architecture code."""
        with cli_errors():
            from compressor.api import prune as run_prune

            opts = {"multiple": multiple} if method == "l1-uniform" and plan is None else {}
            res = run_prune(
                checkpoint, out=out, method=method, flops=flops, plan=plan, arch=arch,
                input_shape=parse_shape(input_shape), trust_pickle=trust_pickle, verify=verify, **opts,
            )  # fmt: skip
            if json_out:
                res = {k: v for k, v in res.items() if k != "plan"}
                print_json(res)
                return
            b, a = res["before"], res["after"]
            console.print(f"method {res['method']}: wrote {res['out']}")
            console.print(f"  MACs   {b['macs']:>15,} -> {a['macs']:>15,}  ({res['flops_ratio']:.1%})")
            console.print(f"  params {b['params']:>15,} -> {a['params']:>15,}  ({res['params_ratio']:.1%})")
            if res["equivalence_error"] is not None:
                console.print(f"  slim vs masked original: max |diff| = {res['equivalence_error']:.2e}")
