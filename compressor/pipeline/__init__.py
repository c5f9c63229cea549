"""``compress run``: the whole pipeline, from a checkpoint to a validated ONNX model and a report.

    load -> profile -> search -> slim -> fine-tune -> export (+ simplify) -> validate -> report

Every stage is a public function of another part of the package (checkpoint, graph, methods,
train, export); this package composes them:

* :mod:`~compressor.pipeline.settings`: the run's settings, one dataclass (target < config < flags);
* :mod:`~compressor.pipeline.workspace`: the out folder, its fingerprint, resuming, ``--force``;
* :mod:`~compressor.pipeline.stages` and :mod:`~compressor.pipeline.search`: the stages;
* :mod:`~compressor.pipeline.schema` and :mod:`~compressor.pipeline.report`: the report, typed;
* :mod:`~compressor.pipeline.dry_run`: ``--dry-run``'s estimate;
* :mod:`~compressor.pipeline.runner`: :func:`run` itself.

Resuming: a rerun with the same settings into the same ``out`` picks up what was finished
(``plan.json`` -> the search is skipped; ``candidates.jsonl`` -> a method that scores candidates
resumes after those already scored; the fine-tune checkpoint ``model.pt`` -> training resumes from
its last epoch) and says so. A rerun with *different* settings is refused with a
:class:`~compressor.errors.UsageError`: pick another ``out`` or pass ``force=True``.

Importing this package is light (torch is imported by the stages when they run).
"""

from __future__ import annotations

from compressor.pipeline.dry_run import estimate_table
from compressor.pipeline.runner import run
from compressor.pipeline.schema import DryRunReport, Report
from compressor.pipeline.settings import (
    CONFIG_KEYS,
    DEFAULTS,
    FINGERPRINT_KEYS,
    Settings,
    load_config,
    resolve_settings,
)
from compressor.pipeline.workspace import ARTIFACTS

__all__ = [
    "ARTIFACTS",
    "CONFIG_KEYS",
    "DEFAULTS",
    "FINGERPRINT_KEYS",
    "DryRunReport",
    "Report",
    "Settings",
    "estimate_table",
    "load_config",
    "resolve_settings",
    "run",
]
