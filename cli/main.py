"""Entry point of ``compress``. Commands live in ``cli/cmd_*.py``; each defines ``register(app)``.

Command modules import the library lazily (inside the command) so ``compress --help`` is instant.
"""

from __future__ import annotations

import importlib
import pkgutil

import compressor.cli as cli
import typer

app = typer.Typer(
    name="compress",
    help="Compress a trained CNN for a deploy target: search, slim, fine-tune, export to ONNX, validate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _register_commands() -> None:
    names = sorted(m.name for m in pkgutil.iter_modules(cli.__path__) if m.name.startswith("cmd_"))
    for name in names:
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
    app()


if __name__ == "__main__":
    main()
