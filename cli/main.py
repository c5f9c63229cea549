"""Entry point of ``compress``. Commands live in ``cli/cmd_*.py``; each defines ``register(app)``.

Command modules import the library lazily (inside the command) so ``compress --help`` is instant.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import compressor.cli as cli
import typer

app = typer.Typer(
    name="compress",
    help="Compress a trained CNN for a deploy target: search, slim, fine-tune, export to ONNX, validate.\n\n"
    "Start with [bold]compress run model.pt --target mobile[/]; conventions of every command: docs/cli.md.",
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _no_bool_metavar() -> None:
    """Flags show no stray ``<bool>`` type in the help (typer labels every option with its type)."""
    from typer.core import TyperOption

    original = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: object) -> str | None:
        return None if self.is_flag else original(self, ctx)  # type: ignore[arg-type]

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_no_bool_metavar()

#: Commands listed first in ``compress --help`` (the rest follow by name).
FIRST = ("cmd_run",)


def _version(value: bool) -> None:
    if value:
        from compressor import __version__

        typer.echo(f"compress {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Compress a trained CNN for a deploy target: search, slim, fine-tune, export to ONNX, validate."""
    if ctx.invoked_subcommand is None:  # bare `compress`: the help, exit 0
        typer.echo(ctx.get_help())
        raise typer.Exit()


def _register_commands() -> None:
    names = sorted(m.name for m in pkgutil.iter_modules(cli.__path__) if m.name.startswith("cmd_"))
    for name in sorted(names, key=lambda n: (n not in FIRST, n)):
        importlib.import_module(f"compressor.cli.{name}").register(app)


_register_commands()


def _sigterm_to_interrupt() -> None:
    """SIGTERM (CI cancelling a job) and SIGINT unwind as KeyboardInterrupt: temp files are removed,
    finished artifacts stay."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
        # a process started in the background by a non-interactive shell inherits SIGINT ignored;
        # Ctrl-C (or a CI runner's SIGINT) must still interrupt cleanly
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not in the main thread
        pass


def main() -> None:
    _sigterm_to_interrupt()
    if "--json" not in sys.argv[1:]:
        app()
        return
    # --json: even a usage error caught by the parser prints one JSON document on stdout
    from compressor.cli._common import error_document, print_json

    try:
        code = app(standalone_mode=False)
    except typer.TyperException as e:  # the parser's usage errors
        show = getattr(e, "show", None)
        if callable(show):
            show()
        print_json(error_document(e.format_message(), e.exit_code, "UsageError"))
        code = e.exit_code
    except typer.Abort:
        print_json(error_document("interrupted", 130, "KeyboardInterrupt"))
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
