"""The schema of ``report.json``, in code: what ``compressor.run`` returns and writes.

A report is a JSON object; these TypedDicts say which keys each part has and what they hold
(``total=False``: a key may be absent, e.g. ``compressed`` numbers a run that stopped early never
measured). :mod:`compressor.report` renders a report as HTML and tables; this package builds it
(:mod:`compressor.pipeline.report`).
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

Status = Literal["passed", "budget_not_met", "validation_failed", "dry_run"]
StageStatus = Literal["done", "resumed", "skipped", "failed", "budget not met"]


class CheckpointInfo(TypedDict):
    path: str
    sha256: str
    arch: str | None


class LatencyStats(TypedDict, total=False):
    """ONNX Runtime latency of one model in ms (``compressor.export.runtime.summarize`` plus where)."""

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    runs: int
    percentile: float
    at_percentile: float
    path: str
    session: dict[str, Any]
    measured_on: str
    samples: list[float]


class ModelStats(TypedDict, total=False):
    """The original's or the compressed model's numbers; accuracies are top-1 (top-5) in percent
    on the test split, ``*_ort`` on ONNX Runtime."""

    macs: int
    params: int
    input_shape: list[int]
    top1: float | None
    top1_ort: float | None
    top5: float | None
    test_images: int | None
    latency: LatencyStats
    top1_after_slim: float | None  # compressed: right after slimming, before fine-tuning
    finetune_best_acc: float | None  # compressed: best search-validation top-1 of the fine-tune
    precision: str  # compressed: what ships, "fp32" or "int8" (the quantize stage)
    fp32_top1_ort: float | None  # compressed: the FP32 model's top-1 on ONNX Runtime
    size_bytes: int  # compressed: the shipped model.onnx's size


class Budget(TypedDict):
    """A budget of the deploy target: ``passed`` is ``value <= limit`` (None: not measured)."""

    name: str
    limit: float | None
    value: float | None
    passed: bool | None
    detail: str


class Check(TypedDict):
    """A correctness check (slimming equivalence, ONNX vs PyTorch numerics and accuracy)."""

    name: str
    limit: float | None
    value: float | None
    passed: bool | None
    detail: str


class LayerRow(TypedDict):
    """Channels of one channel group before and after; frozen groups are never pruned (``reason``)."""

    name: str
    before: int
    after: int
    frozen: bool
    reason: str | None


class CandidateRow(TypedDict):
    id: int | None
    flops: float | None
    score: float | None
    chosen: bool


class TopKRow(TypedDict):
    """A candidate fine-tuned briefly by the method (EagleEye's top-k), by score and after fine-tuning."""

    id: int | None
    score: float | None
    finetuned: float | None
    chosen: bool


class LatencyCheckRow(TypedDict):
    """A candidate timed against the latency budget."""

    id: int | None
    flops: float
    score: float | None
    latency_ms: float
    p50: float
    fits: bool
    predicted_ms: NotRequired[float]  # the latency model's prediction (unloaded: a low percentile)
    limit_ms: NotRequired[float]  # a budget as a fraction: that fraction of original_ms
    original_ms: NotRequired[float]  # the original, timed together with this candidate


class SearchSection(TypedDict):
    method: str
    summary: str
    candidates: list[CandidateRow]
    chosen: int | None
    topk: list[TopKRow]
    latency_checked: list[LatencyCheckRow]
    score_label: str
    info: dict[str, Any]  # the plan's info without the pipeline's own bookkeeping


class ValidationSection(TypedDict, total=False):
    numerics: dict[str, Any] | None
    accuracy: dict[str, Any] | None
    test_data_set: dict[str, Any] | None
    seconds: float | None
    latency_measured_on: str | None


class StageRecord(TypedDict, total=False):
    name: str
    status: StageStatus
    note: str
    seconds: float


class Report(TypedDict, total=False):
    """``report.json``. ``status`` and ``exit_code`` are always present."""

    format: str
    status: Status
    exit_code: int
    message: str
    command: str
    created: str
    checkpoint: CheckpointInfo
    settings: dict[str, Any]  # Settings.to_dict() plus device_used, lr_used
    seeds: dict[str, int | None]
    target: dict[str, Any]  # Target.to_dict()
    original: ModelStats
    compressed: ModelStats
    budgets: list[Budget]
    checks: list[Check]
    layers: list[LayerRow]
    search: SearchSection
    export: dict[str, Any]  # ExportResult.to_dict()
    validation: ValidationSection
    quantize: dict[str, Any]  # the quantize stage: FP32 vs INT8, the decision (compressor.pipeline.quantize)
    stages: list[StageRecord]
    versions: dict[str, str | None]
    artifacts: dict[str, str]
    notes: list[str]
    latency_model: dict[str, Any]  # a run with a latency objective: the table, its fit and its cache


class DryRunStage(TypedDict):
    name: str
    estimate_s: float
    what: str


class DryRunReport(TypedDict):
    """What ``compressor.run(..., dry_run=True)`` returns (nothing is written)."""

    status: Literal["dry_run"]
    exit_code: int
    command: str
    message: str
    checkpoint: CheckpointInfo
    settings: dict[str, Any]
    target: dict[str, Any]
    original: ModelStats
    data: dict[str, int]
    groups: dict[str, int]
    plan: list[DryRunStage]
    estimate_s: float
    stages: list[StageRecord]
    would_resume: list[str]


class WorkerResult(TypedDict):
    """What a non-zero torchrun rank returns (rank 0 writes and returns the report)."""

    status: Literal["worker"]
    rank: int
    exit_code: int
