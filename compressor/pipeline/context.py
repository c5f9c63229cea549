"""What the stages of one run share: the settings, the loaded model and data, the numbers
measured so far (:class:`RunContext`), and the per-stage timing and status lines (:class:`StageLog`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from compressor.device import Dist
from compressor.pipeline.schema import Check, LatencyCheckRow, ModelStats, StageRecord, ValidationSection
from compressor.pipeline.settings import FALLBACK_LR, Settings
from compressor.pipeline.workspace import Workspace

STAGES = ("load", "profile", "search", "slim", "finetune", "export", "validate", "quantize", "report")


class BudgetStop(Exception):
    """A budget cannot be met (raised inside a stage; the run writes its report, then raises
    :class:`~compressor.errors.BudgetError`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StageLog:
    """Per-stage timing, status lines and notes of one run."""

    def __init__(self, console: Any, progress: bool) -> None:
        self.console = console
        self.progress = progress
        self.stages: list[StageRecord] = []
        self.notes: list[str] = []
        self.t0 = time.perf_counter()

    def say(self, text: str) -> None:
        if self.progress:
            self.console.print(text)

    def warn(self, text: str) -> None:
        """A loud warning: always shown on stderr (even without progress) and kept in the report."""
        self.notes.append(f"WARNING: {text}")
        self.console.print(f"[bold yellow]WARNING:[/] {text}", soft_wrap=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.say(f"  [cyan]·[/] {text}")

    @contextmanager
    def stage(self, name: str) -> Iterator[StageRecord]:
        idx = STAGES.index(name) + 1 if name in STAGES else 0
        rec: StageRecord = {"name": name, "status": "done", "note": ""}
        self.say(f"[bold]\\[{idx}/{len(STAGES)}] {name}[/]")
        t = time.perf_counter()
        try:
            if self.progress and name not in ("search", "finetune"):
                with self.console.status(f"{name}…", spinner="dots"):
                    yield rec
            else:
                yield rec
        except BudgetStop:
            rec["status"] = "budget not met"
            self.say(f"  [red]✗[/] {name}: budget not met after {time.perf_counter() - t:.1f} s")
            raise
        except BaseException:
            rec["status"] = "failed"
            raise
        finally:
            rec["seconds"] = round(time.perf_counter() - t, 3)
            self.stages.append(rec)
            if rec["status"] not in ("failed", "budget not met"):
                extra = f" ({rec['note']})" if rec.get("note") else ""
                self.say(f"  [green]✓[/] {name} {rec['status']} in {rec['seconds']:.1f} s{extra}")


@dataclass
class RunContext:
    """One run: its settings and target, what the stages loaded and measured, and where it writes."""

    s: Settings
    target: Any
    log: StageLog
    ws: Workspace
    command: str
    ck_sha: str = ""
    model: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, int, int] = (0, 0, 0)  # the model's input C,H,W
    graph: Any = None
    bundle: Any = None
    device: str = "cpu"
    original: ModelStats = field(default_factory=lambda: ModelStats())
    compressed: ModelStats = field(default_factory=lambda: ModelStats())
    plan: Any = None
    latency_checked: list[LatencyCheckRow] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    validation: ValidationSection = field(default_factory=lambda: ValidationSection())
    export_info: dict[str, Any] = field(default_factory=dict)
    multiple_noted: bool = False
    dist: Dist = field(default_factory=Dist)
    lr: float = FALLBACK_LR
    finetune_history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch
    threads: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> CPU threads chosen
    latency_model: Any = None  # compressor.latency.LatencyModel when latency is the objective
    budget: Any = None  # compressor.methods.spec.CostBudget when latency is the objective
    quantize: dict[str, Any] = field(default_factory=dict)  # the quantize stage's report section

    @property
    def rank(self) -> int:
        return self.dist.rank

    def shared(self, value: Any) -> Any:
        """Rank 0's value on every rank under torchrun (identity in one process)."""
        return self.dist.broadcast(value)
