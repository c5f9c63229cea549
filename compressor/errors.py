"""The library's own exception types. Only the CLI turns them into exit codes (DESIGN.md)."""

from __future__ import annotations


class CompressorError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


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
