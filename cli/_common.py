"""Helpers shared by the commands: error -> exit-code mapping, consoles, argument parsing."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn the library's exceptions into a message and an exit code.

    0 ok; 1 internal error; 2 bad usage or input; 3 budget not met; 4 validation failed.
    """
    from rich.markup import escape

    from compressor.errors import CompressorError

    try:
        yield
    except CompressorError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, soft_wrap=True)
        raise typer.Exit(code=e.exit_code) from None
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]interrupted[/]: finished artifacts are kept; rerun the same command to resume"
        )
        raise typer.Exit(code=130) from None


#: Help of every ``--input-shape`` flag: one convention, C,H,W (README "Input shapes").
INPUT_SHAPE_HELP = "Input shape C,H,W without the batch, e.g. 3,224,224 (default: the checkpoint's)."

#: Help of every ``--option`` flag.
OPTION_HELP = "A method option KEY=VALUE (repeatable); the methods' options are listed below."


def parse_shape(text: str | None) -> tuple[int, int, int] | None:
    """``"3,224,224"`` -> ``(3, 224, 224)``; four numbers (a batch) or anything else: exit 2."""
    from compressor.shapes import parse_input_shape

    return parse_input_shape(text)


def parse_options(method: str, texts: list[str] | None) -> dict[str, Any]:
    """``--option KEY=VALUE`` flags as the method's typed options (an unknown key or a bad value: exit 2)."""
    from compressor.methods import get_method

    spec = get_method(method)
    return dict(spec.parse_option(t) for t in texts or [])


def methods_help() -> str:
    """The registered methods and their options, from the registry (shown under a command's --help)."""
    from compressor.methods import get_method, list_methods

    lines = ["[bold]Methods[/] (--method) and their options (--option KEY=VALUE):"]
    for name in list_methods():
        spec = get_method(name)
        lines.append(f"\n[bold]{name}[/]: {escape(spec.summary)}")
        for o in spec.option_info():
            lines.append(f"  {o.name} = {escape(repr(o.default))} ({escape(o.type)}): {escape(o.help)}")
    return "\n".join(lines)


class MethodsHelpCommand(TyperCommand):
    """A command whose --help ends with the registered methods and their options (read from the
    registry only when the help is shown, so ``compress --help`` stays free of torch)."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.epilog = methods_help()
        super().format_help(ctx, formatter)


def print_json(obj: object) -> None:
    import json

    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
