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
