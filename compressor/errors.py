"""The library's own exception types. Only the CLI turns them into exit codes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class CompressorError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with.

    ``report``: the report a run wrote before failing (``compress run`` exits 3 or 4 after writing
    report.json; the CLI still prints its summary), else ``None``.
    """

    exit_code = 1

    def __init__(self, *args: object, report: Mapping[str, Any] | None = None) -> None:
        super().__init__(*args)
        self.report = report


class UsageError(CompressorError):
    """Bad usage or bad input: missing file, unknown target, malformed checkpoint (exit 2)."""

    exit_code = 2


class CheckpointError(UsageError):
    """A checkpoint that cannot be loaded safely or does not fit its architecture (exit 2)."""


class TraceError(UsageError):
    """A model that torch.fx cannot trace; the message names the operation (exit 2)."""


class DataError(UsageError):
    """Empty, corrupt or mismatched data (exit 2)."""


class BudgetError(CompressorError):
    """A budget (FLOPs, latency or accuracy drop) was not met (exit 3)."""

    exit_code = 3


class ValidationError(CompressorError):
    """Exported model differs from PyTorch beyond tolerance (exit 4)."""

    exit_code = 4


class InternalError(CompressorError):
    """A bug of compressor, not of the input (exit 1); the message says so."""

    exit_code = 1

    def __init__(self, *args: object, report: Mapping[str, Any] | None = None) -> None:
        msg = " ".join(str(a) for a in args)
        if not msg.startswith("internal error"):
            msg = f"internal error (a bug in compressor, please report it): {msg}"
        super().__init__(msg, report=report)


#: The error classes that keep their class when carried from one rank to the others.
_CARRIED: dict[str, type[CompressorError]] = {
    c.__name__: c
    for c in (
        UsageError,
        CheckpointError,
        TraceError,
        DataError,
        BudgetError,
        ValidationError,
        InternalError,
    )
}


def carry(e: BaseException) -> tuple[str, str]:
    """``e`` as a picklable ``(class name, message)`` to send to the other ranks. An error that is
    not one of ours is a bug of ours: it travels as an :class:`InternalError`."""
    if type(e).__name__ in _CARRIED and isinstance(e, CompressorError):
        return type(e).__name__, str(e)
    return "InternalError", f"{type(e).__name__}: {e}"


def rebuild(carried: tuple[str, str]) -> CompressorError:
    """The error :func:`carry` sent, with its class (so its exit code) kept on every rank."""
    name, message = carried
    return _CARRIED.get(name, InternalError)(message)
