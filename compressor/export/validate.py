"""Prove an exported model on ONNX Runtime: numerics, accuracy, latency, against a deploy target.

:func:`validate` returns a :class:`ValidationReport` with one :class:`Check` per claim and never
raises for a failed check, so a caller (the pipeline) can write its report first; then
``report.raise_for_status()`` raises :class:`~compressor.errors.ValidationError` (exit 4) when the
ONNX model is wrong, else :class:`~compressor.errors.BudgetError` (exit 3) when a budget is missed.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import BudgetError, DataError, UsageError, ValidationError
from compressor.io import atomic_write

#: Check kinds: a failed "validation" check is exit 4, a failed "budget" check exit 3.
VALIDATION, BUDGET = "validation", "budget"


@dataclass
class Check:
    """One claim of the report. ``status`` is "pass", "fail" or "skipped" (``detail`` says why)."""

    name: str
    kind: str
    status: str
    value: float | None = None
    limit: float | None = None
    unit: str = ""
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ValidationReport:
    onnx_path: str
    target: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    numerics: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    test_data_set: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        kinds = {c.kind for c in self.failures}
        return 4 if VALIDATION in kinds else 3 if BUDGET in kinds else 0

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def raise_for_status(self) -> None:
        """Raise ValidationError (exit 4) for a wrong ONNX model, else BudgetError (exit 3)."""
        bad = self.failures
        val = [c for c in bad if c.kind == VALIDATION]
        if val:
            raise ValidationError(
                "ONNX validation failed: " + "; ".join(f"{c.name}: {c.detail}" for c in val)
            )
        if bad:
            raise BudgetError(
                f"target {self.target.get('name')!r} not met: "
                + "; ".join(f"{c.name}: {c.detail}" for c in bad)
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnx_path": self.onnx_path,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "checks": [c.to_dict() for c in self.checks],
            "numerics": self.numerics,
            "accuracy": self.accuracy,
            "latency": self.latency,
            "test_data_set": self.test_data_set,
            "target": self.target,
            "versions": self.versions,
            "seconds": round(self.seconds, 3),
        }


# ---------------------------------------------------------------- running ONNX and PyTorch


class _OnnxRunner:
    """Runs a session on arbitrary batch sizes, splitting / padding when the model's batch is fixed."""

    def __init__(self, sess: Any) -> None:
        from compressor.export.runtime import input_meta

        self.sess = sess
        self.name, shape, self.out = input_meta(sess)
        self.fixed_batch = shape[0]
        self.sample_shape = shape[1:]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        fb = self.fixed_batch
        if fb is None or x.shape[0] == fb:
            return self.sess.run([self.out], {self.name: x})[0]
        outs = []
        for i in range(0, x.shape[0], fb):
            chunk = x[i : i + fb]
            n = chunk.shape[0]
            if n < fb:
                chunk = np.concatenate([chunk, np.zeros((fb - n, *chunk.shape[1:]), np.float32)])
            outs.append(self.sess.run([self.out], {self.name: chunk})[0][:n])
        return np.concatenate(outs)


def _torch_runner(model: Any) -> Any:
    import torch

    try:
        device = next(iter(model.parameters())).device
    except StopIteration:
        device = torch.device("cpu")
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            y = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device))
        if isinstance(y, (tuple, list)):
            y = y[0]
        return y.float().cpu().numpy()

    return run


def _batches(data: Any, batch_size: int) -> tuple[Iterable[Any], int | None]:
    """Normalise ``data`` to an iterable of (images, labels) and the class count if known."""
    from torch.utils.data import DataLoader, Dataset

    num_classes = getattr(data, "num_classes", None)
    if hasattr(data, "test") and not isinstance(data, (Dataset, DataLoader)):
        data = data.test
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    if not isinstance(data, Iterable):
        raise UsageError(
            f"data of type {type(data).__name__} is not a DataBundle, Dataset, DataLoader or iterable "
            "of (images, labels) batches"
        )
    return data, num_classes


def _to_numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        return t.detach().cpu().numpy()
    return np.asarray(t)


def _diff(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    """(max abs difference, max abs difference / max |reference|, max |reference|)."""
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    mad = float(np.abs(ref - got).max()) if ref.size else 0.0
    return mad, mad / max(scale, 1e-12), scale


class _DiffStats:
    def __init__(self, atol: float, rtol: float) -> None:
        self.atol, self.rtol = atol, rtol
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.tolerance_used = 0.0
        self.tol_at_max = atol
        self.batches = 0
        self.samples = 0
        self.failed_batches = 0
        self.argmax_agree = 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        if ref.shape != got.shape:
            raise ValidationError(
                f"ONNX output shape {got.shape} differs from PyTorch output shape {ref.shape}"
            )
        mad, rel, scale = _diff(ref, got)
        tol = self.atol + self.rtol * scale
        bad = not np.isfinite(got).all() or mad > tol
        self.tolerance_used = max(self.tolerance_used, mad / tol if np.isfinite(mad) else math.inf)
        if not np.isfinite(mad) or mad >= self.max_abs:
            self.tol_at_max = tol  # the tolerance of the batch with the largest difference
        self.max_abs = max(self.max_abs, mad if np.isfinite(mad) else math.inf)
        self.max_rel = max(self.max_rel, rel if np.isfinite(rel) else math.inf)
        self.batches += 1
        self.samples += ref.shape[0]
        self.failed_batches += int(bad)
        if ref.ndim == 2:
            self.argmax_agree += int((ref.argmax(1) == got.argmax(1)).sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "samples": self.samples,
            "max_abs_diff": self.max_abs,
            "max_rel_diff": self.max_rel,
            "tolerance_used": self.tolerance_used,
            "failed_batches": self.failed_batches,
            "top1_agreement": (100.0 * self.argmax_agree / self.samples) if self.samples else None,
        }


# ---------------------------------------------------------------- test data set


def write_test_data_set(
    model_path: str | os.PathLike[str],
    inputs: np.ndarray,
    outputs: np.ndarray,
    *,
    index: int = 0,
    input_name: str = "input",
    output_name: str = "logits",
) -> dict[str, Any]:
    """Write ``test_data_set_<index>/input_0.pb`` and ``output_0.pb`` beside the model.

    They are ONNX ``TensorProto`` files (``onnx.numpy_helper.from_array``), the layout ONNX
    Runtime's ``onnx_test_runner`` and ``onnx.backend.test`` replay: the folder next to the
    ``.onnx`` file holds inputs and the expected outputs.
    """
    from onnx import numpy_helper

    folder = Path(model_path).parent / f"test_data_set_{index}"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, arr, name in (("input_0.pb", inputs, input_name), ("output_0.pb", outputs, output_name)):
        blob = numpy_helper.from_array(
            np.ascontiguousarray(arr, dtype=np.float32), name=name
        ).SerializeToString()

        def write(tmp: str, blob: bytes = blob) -> None:
            Path(tmp).write_bytes(blob)

        written.append(str(atomic_write(folder / fname, write)))
    return {
        "folder": str(folder),
        "files": written,
        "input_shape": list(inputs.shape),
        "output_shape": list(outputs.shape),
    }


def read_tensor(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a ``TensorProto`` file written by :func:`write_test_data_set`."""
    import onnx
    from onnx import numpy_helper

    t = onnx.TensorProto()
    t.ParseFromString(Path(path).read_bytes())
    return numpy_helper.to_array(t)


# ---------------------------------------------------------------- validate


def _accuracy_counts(logits: np.ndarray, labels: np.ndarray, ks: tuple[int, ...]) -> dict[int, int]:
    order = np.argsort(-logits, axis=1)
    return {k: int((order[:, :k] == labels[:, None]).any(axis=1).sum()) for k in ks}


def _iter_limited(batches: Iterable[Any], max_batches: int | None) -> Iterator[Any]:
    for i, b in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            return
        yield b


def validate(
    onnx_path: str | os.PathLike[str],
    reference_model: Any,
    *,
    target: Any,
    data: Any = None,
    original: Any = None,
    original_accuracy: float | None = None,
    n_random: int = 3,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    agreement: float = 0.1,
    batch_size: int = 64,
    max_batches: int | None = None,
    latency: bool = True,
    latency_budget_s: float = 3.0,
    write_test_data: bool = True,
    seed: int = 0,
) -> ValidationReport:
    """Check the ONNX model at ``onnx_path`` against ``reference_model`` (the PyTorch model it was
    exported from) on ONNX Runtime with ``target``'s runtime settings.

    * numerics: ``n_random`` random inputs and every real batch of ``data``; a batch passes when
      ``max|onnx - torch| <= atol + rtol * max|torch|`` (validation check, exit 4);
    * accuracy: top-1 (and top-5 with more than 5 classes) on ONNX Runtime and PyTorch over the
      test split of ``data`` (a DataBundle, Dataset or loader); they must agree within
      ``agreement`` points (exit 4). Against ``original`` (the unpruned PyTorch model, or its
      ``.onnx`` file) or ``original_accuracy``, the top-1 drop must stay within the target's
      ``max_acc_drop`` (budget check, exit 3);
    * latency: p50/p90/p99/mean/std on ONNX Runtime, the original timed interleaved beside it
      when given; the value at the target's percentile must stay within ``latency_ms`` (exit 3);
    * writes ``test_data_set_0/{input_0,output_0}.pb`` beside the model (reference outputs).

    Failed checks do not raise: see :meth:`ValidationReport.raise_for_status`.
    """
    from compressor.export.onnx_export import versions
    from compressor.export.runtime import machine_note, make_session
    from compressor.targets import load_target

    t_start = time.perf_counter()
    target = load_target(target)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UsageError(f"ONNX file {str(onnx_path)!r} does not exist")
    report = ValidationReport(onnx_path=str(onnx_path), target=target.to_dict(), versions=versions())
    sess, info = make_session(onnx_path, target.runtime)
    onnx_run = _OnnxRunner(sess)
    torch_run = _torch_runner(reference_model)
    if any(s is None for s in onnx_run.sample_shape):
        raise UsageError(
            f"the ONNX model's input has symbolic dimensions besides the batch: {onnx_run.sample_shape}"
        )
    sample_shape = tuple(int(s) for s in onnx_run.sample_shape)  # type: ignore[arg-type]
    batch = onnx_run.fixed_batch or target.input.batch
    rng = np.random.default_rng(seed)

    # -- numerics on random inputs (with a dynamic batch, also a batch other than the target's)
    rand = _DiffStats(atol, rtol)
    for i in range(n_random):
        b = batch if (onnx_run.fixed_batch or i % 2 == 0) else batch + 1
        x = rng.standard_normal((b, *sample_shape)).astype(np.float32)
        rand.add(torch_run(x), onnx_run(x))

    # -- real data: numerics and accuracy in one pass
    real = _DiffStats(atol, rtol)
    first_real: np.ndarray | None = None
    acc: dict[str, Any] | None = None
    orig_model = original if original is not None and not isinstance(original, (str, os.PathLike)) else None
    orig_onnx = Path(original) if isinstance(original, (str, os.PathLike)) else None
    if orig_onnx is not None and not orig_onnx.is_file():
        raise UsageError(f"original ONNX file {str(orig_onnx)!r} does not exist")
    orig_run: Any = None
    if orig_model is not None and original_accuracy is None:
        orig_run = _torch_runner(orig_model)
    elif orig_onnx is not None and original_accuracy is None:
        orig_run = _OnnxRunner(make_session(orig_onnx, target.runtime)[0])
    if data is not None:
        batches, num_classes = _batches(data, batch_size)
        n = 0
        ks: tuple[int, ...] | None = None
        correct: dict[str, dict[int, int]] = {"onnx": {}, "torch": {}, "original": {}}
        for item in _iter_limited(batches, max_batches):
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise DataError("data batches must be (images, labels) pairs")
            x, y = _to_numpy(item[0]).astype(np.float32), _to_numpy(item[1]).astype(np.int64).reshape(-1)
            if tuple(x.shape[1:]) != sample_shape:
                raise DataError(
                    f"data images have shape {tuple(x.shape[1:])}; the ONNX model expects {sample_shape}"
                )
            if first_real is None:
                first_real = x[:batch]
            ref, got = torch_run(x), onnx_run(x)
            real.add(ref, got)
            if ks is None:
                classes = num_classes or ref.shape[1]
                ks = (1, 5) if classes > 5 and ref.shape[1] > 5 else (1,)
            for key, logits in (("torch", ref), ("onnx", got)) + (
                (("original", orig_run(x)),) if orig_run else ()
            ):
                for k, c in _accuracy_counts(logits, y, ks).items():
                    correct[key][k] = correct[key].get(k, 0) + c
            n += len(y)
        if n == 0:
            raise DataError("the data yielded no samples to validate on")
        acc = {"samples": n}
        for key in ("onnx", "torch", "original"):
            for k, c in correct[key].items():
                acc[f"{key}_top{k}"] = 100.0 * c / n
        if original_accuracy is not None:
            acc["original_top1"] = float(original_accuracy)
        report.accuracy = acc

    report.numerics = {
        "atol": atol,
        "rtol": rtol,
        "random": rand.to_dict(),
        "data": real.to_dict() if real.batches else None,
        "criterion": "per batch: max|onnx - torch| <= atol + rtol * max|torch|; "
        "tolerance_used = the largest max|onnx - torch| / (atol + rtol * max|torch|)",
    }
    worst_stats = real if real.batches and real.max_abs >= rand.max_abs else rand
    worst = worst_stats.max_abs
    used = max(rand.tolerance_used, real.tolerance_used)
    failed = rand.failed_batches + real.failed_batches
    report.checks.append(
        Check(
            "numerics",
            VALIDATION,
            "fail" if failed else "pass",
            value=worst,
            limit=worst_stats.tol_at_max,
            unit="abs",
            detail=(
                f"{failed} of {rand.batches + real.batches} batches differ beyond atol={atol:g} + rtol={rtol:g}*scale "
                f"(max abs diff {worst:.3g}, max rel diff {max(rand.max_rel, real.max_rel):.3g})"
            )
            if failed
            else (
                f"max abs diff {worst:.3g}, max rel diff {max(rand.max_rel, real.max_rel):.3g} over "
                f"{rand.batches} random and {real.batches} data batches "
                f"({100 * used:.2g}% of atol={atol:g} + rtol={rtol:g}*scale)"
            ),
        )
    )

    if acc is None:
        report.checks.append(Check("accuracy_agreement", VALIDATION, "skipped", detail="no data given"))
        report.checks.append(Check("accuracy_drop", BUDGET, "skipped", detail="no data given"))
    else:
        gap = abs(acc["onnx_top1"] - acc["torch_top1"])
        report.checks.append(
            Check(
                "accuracy_agreement",
                VALIDATION,
                "fail" if gap > agreement + 1e-9 else "pass",
                value=gap,
                limit=agreement,
                unit="points",
                detail=f"top-1 ONNX Runtime {acc['onnx_top1']:.2f}% vs PyTorch {acc['torch_top1']:.2f}% "
                f"(gap {gap:.2f} points, allowed {agreement})",
            )
        )
        if "original_top1" in acc:
            drop = acc["original_top1"] - acc["onnx_top1"]
            allow = target.budget.max_acc_drop
            report.checks.append(
                Check(
                    "accuracy_drop",
                    BUDGET,
                    "fail" if drop > allow + 1e-9 else "pass",
                    value=drop,
                    limit=allow,
                    unit="points",
                    detail=f"top-1 {acc['original_top1']:.2f}% -> {acc['onnx_top1']:.2f}% "
                    f"(drop {drop:.2f} points, allowed {allow})",
                )
            )
        else:
            report.checks.append(Check("accuracy_drop", BUDGET, "skipped", detail="no original model given"))

    # -- test data set for ONNX Runtime's own test tools
    if write_test_data:
        x0 = (
            first_real
            if first_real is not None
            else rng.standard_normal((batch, *sample_shape)).astype(np.float32)
        )
        if onnx_run.fixed_batch is not None and x0.shape[0] != onnx_run.fixed_batch:
            x0 = rng.standard_normal((onnx_run.fixed_batch, *sample_shape)).astype(np.float32)
        report.test_data_set = write_test_data_set(
            onnx_path, x0, torch_run(x0), input_name=onnx_run.name, output_name=onnx_run.out
        )
        report.test_data_set["source"] = (
            "real data" if first_real is not None and x0 is first_real else "random"
        )
        report.test_data_set["expected_output"] = "PyTorch reference model"

    # -- latency
    if latency:
        report.latency = _latency(
            onnx_path, orig_model, orig_onnx, target, onnx_run, batch, sample_shape, latency_budget_s, seed
        )
        report.latency["session"] = info.to_dict()
        report.latency["measured_on"] = machine_note(target)
        report.latency["clock"] = "wall"
        lat = report.latency["compressed"]
        limit = target.budget.latency_ms
        value = lat["at_percentile"]
        p = target.budget.percentile
        if limit is None:
            report.checks.append(
                Check(
                    "latency",
                    BUDGET,
                    "skipped",
                    value=value,
                    unit="ms",
                    detail=f"target {target.name!r} sets no latency budget (p{p:g} = {value:.3f} ms)",
                )
            )
        else:
            report.checks.append(
                Check(
                    "latency",
                    BUDGET,
                    "fail" if value > limit else "pass",
                    value=value,
                    limit=limit,
                    unit="ms",
                    detail=f"p{p:g} {value:.3f} ms vs budget {limit:g} ms (batch {lat['input_shape'][0]}, this machine)",
                )
            )
    else:
        report.checks.append(Check("latency", BUDGET, "skipped", detail="latency measurement switched off"))
    report.seconds = time.perf_counter() - t_start
    return report


def _latency(
    onnx_path: Path,
    orig_model: Any,
    orig_onnx: Path | None,
    target: Any,
    onnx_run: _OnnxRunner,
    batch: int,
    sample_shape: tuple[int, ...],
    budget_s: float,
    seed: int,
) -> dict[str, Any]:
    from compressor.export.runtime import make_session, summarize, time_sessions

    rng = np.random.default_rng(seed + 1)
    shape = (onnx_run.fixed_batch or batch, *sample_shape)
    x = rng.standard_normal(shape).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="compressor-orig-") as tmp:
        paths = [onnx_path]
        if orig_onnx is not None:
            paths.append(orig_onnx)
        elif orig_model is not None:
            from compressor.export.onnx_export import export_onnx

            p = Path(tmp) / "original.onnx"
            export_onnx(
                orig_model,
                p,
                input_shape=shape,
                opset=target.export.opset,
                dynamic_batch=onnx_run.fixed_batch is None,
            )
            paths.append(p)
        sessions = []
        for p in paths:
            s, _ = make_session(p, target.runtime)
            r = _OnnxRunner(s)
            sessions.append((s, {r.name: x}))
        times = time_sessions(sessions, time_budget_s=budget_s)
    out: dict[str, Any] = {"compressed": summarize(times[0], target.budget.percentile)}
    out["compressed"]["input_shape"] = list(shape)
    if len(times) > 1:
        out["original"] = summarize(times[1], target.budget.percentile)
        out["original"]["input_shape"] = list(shape)
        out["ratio_p50"] = out["compressed"]["p50"] / out["original"]["p50"]
        out["speedup_p50"] = out["original"]["p50"] / out["compressed"]["p50"]
    return out
