"""``compress prune``: prune a checkpoint by a method (or a saved plan) and save the slim model."""

from __future__ import annotations

from typing import Annotated

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


def register(app: typer.Typer) -> None:
    @app.command(cls=MethodsHelpCommand)
    def prune(
        checkpoint: Annotated[str, typer.Argument(help="Checkpoint to prune.")],
        out: Annotated[str, typer.Option("-o", "--out", help="Where to write the slimmed checkpoint.")],
        method: Annotated[
            str, typer.Option(help="A registered pruning method (listed below).")
        ] = "l1-uniform",
        flops: Annotated[
            float, typer.Option(help="Fraction of the original FLOPs to keep, in (0, 1].")
        ] = 0.5,
        plan: Annotated[
            str | None,
            typer.Option(help="Apply this plan.json (from 'compress search') instead of a method."),
        ] = None,
        option: Annotated[
            list[str] | None, typer.Option("--option", "-O", metavar="KEY=VALUE", help=OPTION_HELP)
        ] = None,
        multiple: Annotated[
            int | None, typer.Option(help="Shorthand for --option multiple=M (round kept widths to M).")
        ] = None,
        data: Annotated[
            str | None,
            typer.Option(help="Data for a method that needs data (default: the checkpoint's dataset)."),
        ] = None,
        arch: Annotated[str | None, typer.Option(help="Architecture for a bare state_dict.")] = None,
        input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
        verify: Annotated[bool, typer.Option(help="Check the slim model equals the masked original.")] = True,
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        trust_pickle: Annotated[
            bool, typer.Option(help="Allow loading a pickled nn.Module (runs code from the file).")
        ] = False,
    ) -> None:
        """Physically slim a model: fewer channels, smaller weights, same architecture code.

        The slim checkpoint records its input shape, so [bold]compress export[/] needs no --input-shape.
        """
        with cli_errors():
            from compressor.api import prune as run_prune

            opts = {} if multiple is None else {"multiple": multiple}
            if plan is None:
                opts.update(parse_options(method, option))
            res = run_prune(
                checkpoint, out=out, method=method, flops=flops, plan=plan, data=data, arch=arch,
                input_shape=parse_shape(input_shape), trust_pickle=trust_pickle, verify=verify,
                progress=not json_out, **opts,
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
