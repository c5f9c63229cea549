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
#: Progress, notes, warnings, errors: stderr; piped to a file, one unwrapped line per event.
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class _JsonState:
    """Whether the running command was given ``--json`` and has printed its one JSON document."""

    active: bool = False
    printed: bool = False


def error_document(message: str, exit_code: int, kind: str = "error") -> dict[str, Any]:
    """The JSON document a command prints on stdout under ``--json`` when it fails."""
    return {"status": "error", "exit_code": exit_code, "error": kind, "message": message}


@contextlib.contextmanager
def cli_errors(as_json: bool = False) -> Iterator[None]:
    """Turn the library's exceptions into a message and an exit code.

    0 ok; 1 internal error (a bug of ours, said as such); 2 bad usage or input; 3 budget not
    met; 4 validation failed. With ``as_json`` stdout holds exactly one JSON document on every
    exit code: the command's result, or an error object (``status``, ``exit_code``, ``error``,
    ``message``); messages and progress go to stderr.
    """
    from compressor.errors import CompressorError

    _JsonState.active, _JsonState.printed = as_json, False
    try:
        yield
    except CompressorError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, soft_wrap=True)
        _json_error(str(e), e.exit_code, type(e).__name__)
        raise typer.Exit(code=e.exit_code) from None
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]interrupted[/]: finished artifacts are kept; rerun the same command to resume"
        )
        _json_error("interrupted", 130, "KeyboardInterrupt")
        raise typer.Exit(code=130) from None
    except (typer.Exit, typer.Abort, typer.TyperException, click.exceptions.ClickException):
        raise
    except Exception as e:  # noqa: BLE001 - anything not ours to name is a bug of ours: exit 1
        import traceback

        traceback.print_exc(file=sys.stderr)
        err_console.print(
            f"[bold red]internal error[/] (a bug in compressor, please report it with the traceback above): "
            f"{escape(type(e).__name__)}: {escape(str(e))}",
            markup=True,
            soft_wrap=True,
        )
        _json_error(f"internal error (a bug in compressor): {type(e).__name__}: {e}", 1, "InternalError")
        raise typer.Exit(code=1) from None
    finally:
        _JsonState.active = False


def _json_error(message: str, code: int, kind: str) -> None:
    if _JsonState.active and not _JsonState.printed:
        print_json(error_document(message, code, kind))


#: Help of every ``--input-shape`` flag: one convention, C,H,W (README "Input shapes").
INPUT_SHAPE_HELP = "Input shape C,H,W without the batch, e.g. 3,224,224 (default: the checkpoint's)."

#: Help of every ``--option`` flag.
OPTION_HELP = "A method option KEY=VALUE (repeatable); the methods' options are listed below."


def parse_shape(text: str | None) -> tuple[int, int, int] | None:
    """``"3,224,224"`` -> ``(3, 224, 224)``; four numbers (a batch) or anything else: exit 2."""
    from compressor.shapes import parse_input_shape

    return parse_input_shape(text)


#: Help of every ``--arch-args`` flag.
ARCH_ARGS_HELP = (
    "Keyword argument of the --arch factory KEY=VALUE, e.g. num_classes=3 (repeatable; recorded in the "
    "output checkpoint). VALUE is read as JSON (3, 0.5, true, [1,2]), else as a string."
)

#: Help of every ``--arch`` flag.
ARCH_HELP = (
    "Architecture: a registered name, a torchvision name (resnet18) or module:factory; a module in "
    "the current folder is importable (--arch mynets:build for ./mynets.py)."
)


def parse_kv(texts: list[str] | None, flag: str = "--arch-args") -> dict[str, Any]:
    """``["num_classes=3", "width=0.5"]`` -> ``{"num_classes": 3, "width": 0.5}`` (values as JSON,
    else strings); a text without ``=``: exit 2."""
    import json

    from compressor.errors import UsageError

    out: dict[str, Any] = {}
    for text in texts or []:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"{flag} {text!r} is not KEY=VALUE (e.g. {flag} num_classes=3)")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def parse_floats(text: str | None, flag: str) -> list[float] | None:
    """``"0.5,0.5,0.5"`` -> ``[0.5, 0.5, 0.5]``; anything else: exit 2."""
    if text is None:
        return None
    from compressor.errors import UsageError

    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} is not a comma-separated list of numbers, e.g. 0.5,0.5,0.5"
        ) from None


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
    """Write ``obj`` as the command's one JSON document on stdout."""
    import json

    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()
    _JsonState.printed = True


def out_console(as_json: bool) -> Console:
    """Where a command's human-readable output goes: stdout, or stderr under ``--json``."""
    return err_console if as_json else console
