"""Helpers shared by the commands: error -> exit-code mapping, consoles, argument parsing."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer
from rich.console import Console

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn the library's exceptions into a message and the exit codes of DESIGN.md.

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


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``."""
    if text is None:
        return None
    from compressor.errors import UsageError

    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise UsageError(
            f"--input-shape {text!r} is not a comma-separated list of integers, e.g. 1,3,224,224"
        ) from None
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise UsageError(f"--input-shape {text!r} must have at least 2 positive dimensions, e.g. 1,3,224,224")
    return shape


def print_json(obj: object) -> None:
    import json

    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
