"""INT8 post-training quantization on ONNX Runtime, shipped only when measured accurate and fast.

INT8 is a large win on some networks and a trap on others (quantize/dequantize pairs that the
runtime cannot fuse, around SiLU and sigmoid gates, can make a model slower than FP32), so
nothing is assumed: every choice is measured on ONNX Runtime with the deploy target's runtime
settings.

:func:`quantize_onnx` takes an FP32 ONNX classifier and returns a :class:`QuantDecision`:

1. **Pre-processing**: ONNX Runtime's ``quant_pre_process`` (symbolic shape inference and graph
   optimisation), as ONNX Runtime asks before quantization.
2. **Calibration**: ONNX Runtime's calibrators (min-max, entropy, percentile) over batches of the
   training split (seeded, the count configurable), fed in small chunks so memory stays bounded;
   the ranges are computed once per method for every tensor and reused by every candidate.
3. **Candidates**: ``quantize_static`` in QDQ format, per-channel INT8 weights, UINT8
   activations (MLAS's fast path on x86 and ARM), for each operator selection of
   :data:`SELECTIONS`: every operator ONNX Runtime quantizes; the same without the elementwise
   gate/activation operators (``Sigmoid``, ``Mul``: SiLU and squeeze-excitation gates); weighted
   layers only (``Conv``, ``Gemm``, ``MatMul``). Selections that quantize the same nodes of this
   graph are tried once. The calibration method is chosen on the first selection by top-1 on the
   validation split (ties: the smaller output error against FP32), then used for the others.
4. **Accuracy gate**: a candidate passes when its top-1 on the validation split is at most
   ``max_acc_drop`` points below the FP32 model's (both on ONNX Runtime).
5. **Layer sensitivity** (only when a selection fails the gate): every node the selections
   quantize is quantized *alone* (everything else FP32) and scored by the relative error of the
   logits against FP32 on the first ``sensitivity_samples`` validation images (top-1 drop
   recorded beside it). One quantization per node and one pass over a few hundred images: cheap
   on the networks this tool targets, and, unlike "all but one", it attributes the error to the
   node that causes it rather than to whatever else stays quantized. Then the k most sensitive
   nodes are kept in FP32 (``nodes_to_exclude``), each k re-quantized and re-checked on the
   whole validation split: first k = ``max_excluded`` (default: half of the nodes), and if even
   that misses the budget INT8 is given up for that selection; else the fewest k that passes is
   found by bisection (each node more in FP32 moves the model towards FP32), a few
   quantizations instead of one per node.
6. **Latency gate**: the FP32 model and every candidate that passed accuracy are timed
   interleaved in one run (:func:`compressor.export.runtime.measure_latency`, the target's
   threads and optimisation level), ``latency_repeats`` times; the medians of the p50s decide.
   With ``precision="auto"`` the fastest passing candidate ships only if it is at least
   ``latency_margin`` (10%) faster than FP32; otherwise FP32 ships, and the decision says why,
   with both latencies. ``precision="int8"`` ships the fastest candidate that passed accuracy,
   and is a budget failure (exit 3) when none did.
7. **Numerics** of the shipped INT8 model against the reference (the PyTorch model when given,
   else the FP32 ONNX model) within :class:`Int8Tolerance` (exit 4 beyond it).
8. **Metadata**: the shipped file's ``metadata_props`` say how to feed it (input name, layout,
   shape, normalisation, classes), its precision and how it was quantized, the compressor
   version and the plan hash; see :func:`deploy_metadata`. Written atomically, and only when
   every check passed.

>>> from compressor.export.quantize import quantize_with_data
>>> d = quantize_with_data("model.onnx", "model.int8.onnx", data=bundle, target="mobile")  # doctest: +SKIP
>>> d.precision, d.reason                                                                 # doctest: +SKIP
('int8', 'INT8 p50 0.104 ms is 0.58x FP32 (0.180 ms) ...')
>>> d.raise_for_status()      # BudgetError (exit 3) or ValidationError (exit 4)           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import BudgetError, DataError, UsageError, ValidationError
from compressor.io import atomic_write
from compressor.targets import PRECISIONS

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")

#: INT8 ships under ``precision="auto"`` only when its p50 is at least this much below FP32's.
LATENCY_MARGIN = 0.10

#: Elementwise operators of activations and gates (SiLU = x * sigmoid(x), squeeze-excitation's
#: sigmoid gate and multiply): ONNX Runtime's CPU provider leaves many of their QDQ pairs unfused.
GATE_OP_TYPES = ("Sigmoid", "Mul", "HardSigmoid", "HardSwish", "Softmax", "Tanh")
#: Operators with weights.
WEIGHTED_OP_TYPES = ("Conv", "Gemm", "MatMul")

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpSelection:
    """Which operator types a candidate quantizes: ``op_types`` (``None``: every type ONNX
    Runtime quantizes) minus ``exclude_op_types``."""

    name: str
    description: str
    op_types: tuple[str, ...] | None = None
    exclude_op_types: tuple[str, ...] = ()

    def resolve(self, supported: Sequence[str]) -> list[str]:
        base = list(self.op_types) if self.op_types is not None else list(supported)
        return sorted(t for t in base if t not in self.exclude_op_types)


SELECTIONS: tuple[OpSelection, ...] = (
    OpSelection("all", "every operator ONNX Runtime quantizes"),
    OpSelection(
        "no-gates",
        "all but the elementwise activation and gate operators (Sigmoid, Mul, ...): SiLU and "
        "squeeze-excitation gates stay FP32",
        exclude_op_types=GATE_OP_TYPES,
    ),
    OpSelection("conv-gemm", "weighted layers only (Conv, Gemm, MatMul)", op_types=WEIGHTED_OP_TYPES),
)


@dataclass(frozen=True)
class Int8Tolerance:
    """How far a shipped INT8 model may be from its reference (PyTorch or the FP32 ONNX model).

    ``min_top1_agreement``: percent of inputs whose top-1 class matches the reference's.
    ``max_rel_error``: ``||int8 - ref|| / ||ref||`` over all logits of the validation inputs
    (Frobenius norms). FP32 exports are checked to ~1e-5; INT8 rounds every activation to 256
    levels, so its bound is a different kind of number. Measured on the demo models (README,
    docs/int8.md): agreement 99.8-100%, relative error 0.02-0.10 for the models that pass
    the accuracy gate. The defaults leave a margin over those and still fail a model whose
    quantization is broken (a wrong scale or zero point gives errors of order 1 and agreement
    near chance).
    """

    min_top1_agreement: float = 95.0
    max_rel_error: float = 0.25


# ------------------------------------------------------------------------------------------ data
class Batches:
    """Re-iterable numpy batches ``(x, y)`` (``y`` None when unlabelled) over ``dataset[indices]``.

    Every iteration reads the dataset again, so a large image folder is never held in memory.
    """

    def __init__(self, dataset: Any, indices: Sequence[int], batch_size: int = 64, labels: bool = True):
        if batch_size < 1:
            raise UsageError(f"batch size must be >= 1, got {batch_size}")
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        self.batch_size, self.labels = int(batch_size), labels

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        import torch

        for s in range(0, len(self.indices), self.batch_size):
            items = [self.dataset[i] for i in self.indices[s : s + self.batch_size]]
            x = torch.stack([torch.as_tensor(it[0]) for it in items]).numpy().astype(np.float32)
            y = np.asarray([int(it[1]) for it in items], dtype=np.int64) if self.labels else None
            yield x, y


def _pick(n_total: int, n: int | None, seed: int | None) -> list[int]:
    if n is None or n >= n_total:
        return list(range(n_total))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_total, size=n, replace=False))


def calibration_batches(data: Any, n_batches: int = 8, *, batch_size: int = 32, seed: int = 0) -> Batches:
    """``n_batches`` batches of ``batch_size`` images drawn (seeded) from the training split of a
    :class:`~compressor.data.DataBundle`, with evaluation transforms (no augmentation)."""
    if n_batches < 1:
        raise UsageError(f"calibration batches must be >= 1, got {n_batches}")
    ds = data.train_eval
    return Batches(ds, _pick(len(ds), n_batches * batch_size, seed), batch_size, labels=False)


def validation_batches(
    data: Any, split: str = "val", *, batch_size: int = 64, max_samples: int | None = None, seed: int = 0
) -> Batches:
    """The labelled ``split`` (``val`` or ``test``) of a DataBundle, all of it or a seeded subset."""
    if split not in ("val", "test"):
        raise UsageError(f"split must be 'val' or 'test', got {split!r}")
    ds = getattr(data, split)
    return Batches(ds, _pick(len(ds), max_samples, seed), batch_size)


# ------------------------------------------------------------------------------------- records
@dataclass
class Candidate:
    """One quantized model that was built and measured."""

    name: str
    selection: str
    calibration: str
    op_types: list[str]
    excluded: list[str] = field(default_factory=list)
    qdq_nodes: int = 0
    top1: float | None = None
    drop: float | None = None
    agreement: float | None = None
    rel_error: float | None = None
    accuracy: str = "skipped"  # pass | fail | skipped
    latency_p50: float | None = None
    latency_p90: float | None = None
    latency_ratio: float | None = None
    size_bytes: int = 0
    seconds: float = 0.0
    note: str = ""
    path: str = ""  # scratch file; not reported

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return d


@dataclass
class LayerSensitivity:
    """A node quantized alone: its error against FP32 on the sensitivity images."""

    node: str
    op_type: str
    rel_error: float
    top1_drop: float | None
    kept_fp32: bool = False
    reason: str = ""


@dataclass
class QuantDecision:
    """What :func:`quantize_onnx` measured and decided; ``to_dict()`` is what reports show.

    ``status``: ``ok`` (``out`` written), ``budget_failed`` (``precision="int8"`` and no INT8
    within the accuracy budget: exit 3) or ``validation_failed`` (the INT8 model is beyond the
    INT8 tolerance of its reference: exit 4). Nothing is written unless the status is ``ok``.
    """

    requested: str
    precision: str
    status: str
    reason: str
    source: str
    out: str | None
    max_acc_drop: float
    latency_margin: float
    fp32: dict[str, Any] = field(default_factory=dict)
    chosen: Candidate | None = None
    candidates: list[Candidate] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    sensitivity: list[LayerSensitivity] = field(default_factory=list)
    kept_fp32: list[dict[str, Any]] = field(default_factory=list)
    numerics: dict[str, Any] | None = None
    latency: dict[str, Any] = field(default_factory=dict)
    report_split: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "ok"

    @property
    def exit_code(self) -> int:
        return {"ok": 0, "budget_failed": 3, "validation_failed": 4}[self.status]

    def raise_for_status(self) -> None:
        if self.status == "budget_failed":
            raise BudgetError(self.reason)
        if self.status == "validation_failed":
            raise ValidationError(self.reason)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chosen"] = self.chosen.to_dict() if self.chosen else None
        d["candidates"] = [c.to_dict() for c in self.candidates]
        d["passed"], d["exit_code"] = self.passed, self.exit_code
        return d


# ----------------------------------------------------------------------------------- runtime
class _Runner:
    """An ONNX Runtime session for a one-input classifier; runs any number of samples (a fixed
    batch is filled chunk by chunk, the last chunk padded with copies of its last sample)."""

    def __init__(self, path: str | os.PathLike[str], runtime: Any) -> None:
        from compressor.export.runtime import input_meta, make_session

        self.sess, self.info = make_session(path, runtime)
        self.name, shape, self.out = input_meta(self.sess)
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.sample_shape = tuple(shape[1:])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        b = self.fixed_batch
        if b is None:
            return np.asarray(self.sess.run([self.out], {self.name: x})[0])
        outs = []
        for s in range(0, len(x), b):
            chunk = x[s : s + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - n, axis=0)])
            outs.append(np.asarray(self.sess.run([self.out], {self.name: chunk})[0])[:n])
        return np.concatenate(outs)


def _top1(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    return float(100.0 * (logits.argmax(1) == labels).mean())


def _compare(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement in percent, relative Frobenius error) of ``got`` against ``ref``."""
    agree = float(100.0 * (got.argmax(1) == ref.argmax(1)).mean())
    den = float(np.linalg.norm(ref)) or 1.0
    return agree, float(np.linalg.norm(got.astype(np.float64) - ref) / den)


@dataclass
class _Split:
    """Inputs, labels and FP32 logits of the validation split, read once."""

    x: list[np.ndarray]
    y: np.ndarray | None
    ref: np.ndarray

    @property
    def n(self) -> int:
        return len(self.ref)


def _run_all(run: Callable[[np.ndarray], np.ndarray], xs: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([run(x) for x in xs])


# ------------------------------------------------------------------------------ ORT quant tools
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantization tools print and log progress; keep the console for our table."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _ort_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[name]


def supported_op_types() -> list[str]:
    """Operator types ONNX Runtime's static QDQ quantizer handles (its registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


def preprocess(src: Path, dst: Path) -> dict[str, Any]:
    """``quant_pre_process`` (symbolic shape inference + ONNX Runtime graph optimisation); falls back
    to shape inference only, then to the model as is, saying so."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    notes: list[str] = []
    t0 = time.perf_counter()
    for kwargs in ({}, {"skip_optimization": True}, {"skip_optimization": True, "skip_symbolic_shape": True}):
        try:
            with _quiet():
                quant_pre_process(str(src), str(dst), **kwargs)
            return {"options": kwargs, "seconds": round(time.perf_counter() - t0, 3), "notes": notes}
        except Exception as e:  # noqa: BLE001 - reported; the next, lighter pre-processing is tried
            notes.append(f"quant_pre_process{kwargs or ''} failed: {type(e).__name__}: {str(e)[:200]}")
    shutil.copyfile(src, dst)
    notes.append("pre-processing failed; the model is quantized as exported")
    return {"options": None, "seconds": round(time.perf_counter() - t0, 3), "notes": notes}


class _Reader:
    """CalibrationDataReader over in-memory samples, in the model's batch size."""

    def __init__(self, name: str, samples: np.ndarray, batch: int) -> None:
        self.name, self.samples, self.batch, self.i = name, samples, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.samples):
            return None
        chunk = self.samples[self.i : self.i + self.batch]
        self.i += self.batch
        if len(chunk) < self.batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - len(chunk), axis=0)])
        return {self.name: chunk}

    def __len__(self) -> int:
        return -(-len(self.samples) // self.batch)


def calibrate(
    model: Path,
    method: str,
    calibration: Iterable[tuple[np.ndarray, Any]] | Iterable[np.ndarray],
    cache: Path,
    *,
    input_name: str,
    batch: int,
    chunk: int = 16,
) -> dict[str, Any]:
    """Compute activation ranges of every tensor of ``model`` with ONNX Runtime's calibrator for
    ``method`` and save them to ``cache`` (the JSON ``quantize_static`` reads back). Samples are
    fed ``chunk`` at a time: the calibrators keep every intermediate output of a chunk in memory."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    t0 = time.perf_counter()
    n = 0
    with tempfile.TemporaryDirectory(prefix="compressor-calib-") as tmp, _quiet():
        calibrator = create_calibrator(
            str(model),
            None,  # every float tensor: one calibration serves every operator selection
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=_ort_method(method),
            extra_options={},
        )
        pending: list[np.ndarray] = []

        def flush() -> None:
            if pending:
                calibrator.collect_data(_Reader(input_name, np.concatenate(pending), batch))
                pending.clear()

        for item in calibration:
            x = item[0] if isinstance(item, (tuple, list)) else item
            x = np.asarray(x, dtype=np.float32)
            n += len(x)
            pending.append(x)
            if sum(len(p) for p in pending) >= chunk:
                flush()
        flush()
        if n == 0:
            raise DataError("the calibration data yielded no samples")
        ranges = calibrator.compute_data()
        save_tensors_data(ranges, cache)
    return {"method": method, "samples": n, "seconds": round(time.perf_counter() - t0, 3)}


def _quantize(
    prep: Path,
    out: Path,
    *,
    method: str,
    cache: Path,
    op_types: Sequence[str],
    nodes_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] | None = None,
) -> int:
    """``quantize_static`` (QDQ, per-channel INT8 weights, UINT8 activations) from cached ranges.
    Returns the number of QuantizeLinear + DequantizeLinear nodes written."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with _quiet():
        quantize_static(
            str(prep),
            str(out),
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize else None,
            nodes_to_exclude=list(nodes_to_exclude) if nodes_to_exclude else None,
            calibrate_method=_ort_method(method),
            calibration_cache_path=str(cache),
        )
    g = onnx.load(str(out), load_external_data=False).graph
    return sum(1 for nd in g.node if nd.op_type in ("QuantizeLinear", "DequantizeLinear"))


# ------------------------------------------------------------------------------------ metadata
def plan_hash(plan: Any) -> str:
    """SHA-256 of a plan's canonical JSON (a :class:`~compressor.plan.Plan`, its dict, or a path)."""
    if isinstance(plan, (str, os.PathLike)):
        from compressor.plan import Plan

        plan = Plan.load(plan)
    d = plan.to_dict() if hasattr(plan, "to_dict") else dict(plan)
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def deploy_metadata(
    *,
    data: Any = None,
    meta: dict[str, Any] | None = None,
    plan: Any = None,
    existing: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What an embedded team needs to feed the model, from what is known: a checkpoint ``meta``
    (mean, std, num_classes, classes, dataset) beats the ``data`` bundle's values, which beat
    the ONNX file's ``existing`` ``compressor.*`` metadata; ``plan`` (a Plan or plan file) gives
    the plan hash. Keys whose value is unknown are left out."""
    out: dict[str, Any] = {}
    ex = {
        k.removeprefix("compressor."): v for k, v in (existing or {}).items() if k.startswith("compressor.")
    }
    for key in ("mean", "std", "classes", "num_classes", "dataset", "plan_hash"):
        if key in ex:
            try:
                out[key] = json.loads(ex[key])
            except json.JSONDecodeError:
                out[key] = ex[key]
    if data is not None:
        out.update(mean=list(data.mean), std=list(data.std), num_classes=data.num_classes, dataset=data.name)
        if data.classes:
            out["classes"] = list(data.classes)
    for key in ("mean", "std", "num_classes", "classes", "dataset"):
        if meta and meta.get(key) is not None:
            out[key] = meta[key]
    if plan is not None:
        out["plan_hash"] = plan_hash(plan)
    return out


def _props(model_path: Path) -> dict[str, str]:
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def _write_shipped(
    src: Path, dst: Path, props: dict[str, Any], *, drop_prefixes: tuple[str, ...] = ("onnx.quant.",)
) -> dict[str, str]:
    """Copy ``src`` to ``dst`` atomically with ``props`` as ``compressor.*`` metadata."""
    import onnx

    from compressor import __version__

    model = onnx.load(str(src))
    model.producer_name, model.producer_version = "compressor", __version__
    keep = [
        p
        for p in model.metadata_props
        if not p.key.startswith(drop_prefixes) and p.key.removeprefix("compressor.") not in props
    ]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    written: dict[str, str] = {}
    for k, v in props.items():
        e = model.metadata_props.add()
        e.key = f"compressor.{k}"
        e.value = v if isinstance(v, str) else json.dumps(v)
        written[e.key] = e.value
    atomic_write(dst, lambda tmp: onnx.save(model, tmp))
    return written


def _io_props(run: _Runner) -> dict[str, Any]:
    shape = [run.fixed_batch if run.fixed_batch is not None else "batch", *run.sample_shape]
    return {
        "input_name": run.name,
        "input_layout": "NCHW" if len(run.sample_shape) == 3 else "N" + "x" * len(run.sample_shape),
        "input_shape": "x".join(str(s) for s in shape),
        "input_dtype": "float32",
        "normalization": "input = (pixel / 255 - mean) / std per channel, pixels in [0, 255]",
        "output_name": run.out,
        "output": "logits (unnormalised class scores); the predicted class is the argmax",
    }


# ----------------------------------------------------------------------------------------- main
def _check_paths(model: Path, out: Path) -> None:
    if not model.is_file():
        raise UsageError(f"ONNX model {str(model)!r} does not exist")
    if out.exists() and out.is_dir():
        raise UsageError(f"output {str(out)!r} is a folder; give a file name such as model.int8.onnx")
    if model.resolve() == out.resolve() or (out.exists() and os.path.samefile(model, out)):
        raise UsageError(
            f"output {str(out)!r} is the input model: quantize never overwrites its input; "
            "pick another output file (e.g. model.int8.onnx)"
        )


def quantize_onnx(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    calibration: Iterable[Any],
    validation: Iterable[tuple[np.ndarray, np.ndarray | None]] | None = None,
    target: Any = "mobile",
    precision: str = "auto",
    max_acc_drop: float | None = None,
    methods: Sequence[str] = CALIBRATION_METHODS,
    selections: Sequence[OpSelection] = SELECTIONS,
    latency_margin: float = LATENCY_MARGIN,
    latency_budget_s: float = 1.0,
    latency_repeats: int = 3,
    max_excluded: int | None = None,
    sensitivity_samples: int = 256,
    reference: Any = None,
    tolerance: Int8Tolerance | None = None,
    metadata: dict[str, Any] | None = None,
    report_split: Iterable[tuple[np.ndarray, np.ndarray | None]] | None = None,
    log: Callable[[str], None] | None = None,
) -> QuantDecision:
    """Quantize the FP32 ONNX classifier ``model`` to INT8 on ONNX Runtime and write what
    ``precision`` and the measurements choose to ``out`` (see the module docstring).

    ``calibration``: batches of model inputs (arrays, or ``(x, y)`` pairs) from the training
    split. ``validation``: ``(x, y)`` batches the gates are decided on (``y`` None: no labels,
    the accuracy gate is skipped and said so). ``target``: a deploy target (name, path or
    :class:`~compressor.targets.Target`): its runtime settings for every measurement and its
    ``max_acc_drop`` unless ``max_acc_drop`` is given. ``reference``: the PyTorch model (or any
    callable numpy -> numpy) the numerics are checked against; default the FP32 ONNX model.
    ``metadata``: extra ``compressor.*`` metadata (see :func:`deploy_metadata`).
    ``report_split``: labelled batches (the test split) on which the FP32 and the shipped model's
    top-1 are reported; nothing is decided on them. Never raises for a failed gate: see
    :meth:`QuantDecision.raise_for_status`.
    """
    from compressor.export.runtime import machine_note
    from compressor.targets import load_target

    t_start = time.perf_counter()
    say = log or (lambda s: None)
    if precision not in PRECISIONS:
        raise UsageError(f"precision {precision!r} is invalid; valid: {', '.join(PRECISIONS)}")
    bad = [m for m in methods if m not in CALIBRATION_METHODS]
    if bad or not methods:
        raise UsageError(
            f"calibration method(s) {bad or methods!r} invalid; valid: {', '.join(CALIBRATION_METHODS)}"
        )
    if not selections:
        raise UsageError("at least one operator selection is needed")
    if not 0.0 <= latency_margin < 1.0:
        raise UsageError(f"latency_margin must be in [0, 1), got {latency_margin}")
    if latency_repeats < 1 or latency_budget_s <= 0:
        raise UsageError("latency_repeats must be >= 1 and latency_budget_s > 0")
    src, dst = Path(model), Path(out)
    _check_paths(src, dst)
    target = load_target(target)
    allow = float(target.budget.max_acc_drop if max_acc_drop is None else max_acc_drop)
    tol = tolerance or Int8Tolerance()
    fp32 = _Runner(src, target.runtime)
    decision = QuantDecision(
        requested=precision,
        precision="fp32",
        status="ok",
        reason="",
        source=str(src),
        out=None,
        max_acc_drop=allow,
        latency_margin=latency_margin,
    )
    base_props: dict[str, Any] = {**_io_props(fp32), **(metadata or {})}
    from compressor import __version__

    base_props["version"] = __version__

    # ---- the validation split, read once, with the FP32 model's logits
    split: _Split | None = None
    if validation is not None:
        xs, ys, labelled = [], [], True
        for x, y in validation:
            x = np.asarray(x, dtype=np.float32)
            if tuple(x.shape[1:]) != tuple(fp32.sample_shape):
                raise DataError(
                    f"validation images have shape {tuple(x.shape[1:])}; the ONNX model expects "
                    f"{tuple(fp32.sample_shape)}: pass the data the model was trained on"
                )
            xs.append(x)
            if y is None:
                labelled = False
            else:
                ys.append(np.asarray(y, dtype=np.int64).reshape(-1))
        if not xs:
            raise DataError("the validation data yielded no samples")
        split = _Split(xs, np.concatenate(ys) if labelled else None, _run_all(fp32, xs))
    fp32_top1 = _top1(split.ref, split.y) if split else None
    decision.fp32 = {
        "top1": fp32_top1,
        "size_bytes": src.stat().st_size,
        "validation_samples": split.n if split else 0,
    }
    decision.latency = {
        "margin": latency_margin,
        "repeats": latency_repeats,
        "budget_s_per_repeat": latency_budget_s,
        "session": fp32.info.to_dict(),
        "measured_on": machine_note(target),
        "statistic": "median over repeats of each repeat's p50 (and p90); all models timed interleaved",
    }

    def finish_report(shipped: Path | None) -> None:
        if report_split is None or shipped is None:
            return
        rx, ry = [], []
        for x, y in report_split:
            rx.append(np.asarray(x, dtype=np.float32))
            if y is not None:
                ry.append(np.asarray(y, dtype=np.int64).reshape(-1))
        if not rx or len(ry) != len(rx):
            return
        labels = np.concatenate(ry)
        ref = _run_all(fp32, rx)
        got = ref if shipped == src else _run_all(_Runner(shipped, target.runtime), rx)
        decision.report_split = {
            "samples": len(labels),
            "fp32_top1": _top1(ref, labels),
            "shipped_top1": _top1(got, labels),
            "note": "reported only: no decision was taken on this split",
        }

    if precision == "fp32":
        decision.reason = "precision 'fp32' requested: the FP32 model ships unchanged"
        decision.metadata = _write_shipped(
            src, dst, {**base_props, "precision": "fp32", "quantization": "none"}
        )
        decision.out = str(dst)
        finish_report(src)
        decision.seconds = round(time.perf_counter() - t_start, 3)
        return decision

    with tempfile.TemporaryDirectory(prefix="compressor-quant-") as tmp_s:
        tmp = Path(tmp_s)
        prep = tmp / "prep.onnx"
        say("pre-processing (ONNX Runtime quant_pre_process)")
        decision.preprocess = preprocess(src, prep)
        decision.notes += decision.preprocess["notes"]
        supported = supported_op_types()
        present = _node_types(prep)

        # ---- calibration, once per method, every tensor
        calib_samples: list[np.ndarray] = []
        for item in calibration:
            x = item[0] if isinstance(item, (tuple, list)) else item
            x = np.asarray(x, dtype=np.float32)
            if tuple(x.shape[1:]) != tuple(fp32.sample_shape):
                raise DataError(
                    f"calibration images have shape {tuple(x.shape[1:])}; the ONNX model expects "
                    f"{tuple(fp32.sample_shape)}"
                )
            calib_samples.append(x)
        if not calib_samples:
            raise DataError("the calibration data yielded no samples")
        caches: dict[str, Path] = {}
        cal_info: dict[str, Any] = {}
        for m in methods:
            say(f"calibrating ({m})")
            caches[m] = tmp / f"ranges-{m}.json"
            cal_info[m] = calibrate(
                prep, m, calib_samples, caches[m], input_name=fp32.name, batch=fp32.fixed_batch or 16
            )
        decision.calibration = {
            "samples": sum(len(x) for x in calib_samples),
            "batches": len(calib_samples),
            "methods": cal_info,
            "chosen": None,
            "rule": "highest top-1 on the validation split with the first operator selection; ties: "
            "the smallest relative error of the logits against FP32",
        }

        # ---- candidates
        counter = [0]

        def build(
            sel: OpSelection,
            method: str,
            excluded: Sequence[str] = (),
            only: Sequence[str] | None = None,
            evaluate_on: _Split | None = None,
        ) -> Candidate:
            counter[0] += 1
            path = tmp / f"cand-{counter[0]}.onnx"
            t0 = time.perf_counter()
            op_types = sel.resolve(supported)
            n_qdq = _quantize(
                prep,
                path,
                method=method,
                cache=caches[method],
                op_types=op_types,
                nodes_to_quantize=only,
                nodes_to_exclude=excluded,
            )
            name = f"{sel.name}/{method}" + (f" -{len(excluded)} fp32" if excluded else "")
            c = Candidate(
                name=name,
                selection=sel.name,
                calibration=method,
                op_types=[t for t in op_types if t in present],
                excluded=list(excluded),
                qdq_nodes=n_qdq,
                size_bytes=path.stat().st_size,
                path=str(path),
            )
            ev = evaluate_on if evaluate_on is not None else split
            if ev is not None:
                got = _run_all(_Runner(path, target.runtime), ev.x)
                c.agreement, c.rel_error = _compare(got, ev.ref)
                c.top1 = _top1(got, ev.y)
                if c.top1 is not None and ev.y is not None:
                    c.drop = _top1(ev.ref, ev.y) - c.top1  # type: ignore[operator]
                    c.accuracy = "pass" if c.drop <= allow + 1e-9 else "fail"
            c.seconds = round(time.perf_counter() - t0, 3)
            return c

        def key(c: Candidate) -> tuple[float, float]:
            return (-(c.top1 if c.top1 is not None else 0.0), c.rel_error if c.rel_error is not None else 0.0)

        # distinct selections for this graph (same quantized op types present = same model)
        distinct: list[OpSelection] = []
        seen: set[tuple[str, ...]] = set()
        for sel in selections:
            sig = tuple(t for t in sel.resolve(supported) if t in present)
            if not sig:
                decision.notes.append(f"selection {sel.name!r} quantizes nothing in this graph; skipped")
                continue
            if sig in seen:
                decision.notes.append(
                    f"selection {sel.name!r} quantizes the same operators as an earlier one; skipped"
                )
                continue
            seen.add(sig)
            distinct.append(sel)
        if not distinct:
            raise UsageError(
                f"none of the operator selections quantizes anything in {src} (its operators: "
                f"{', '.join(sorted(present))})"
            )

        first = distinct[0]
        say(f"choosing the calibration method on selection {first.name!r}")
        by_method = [build(first, m) for m in methods]
        decision.candidates += by_method
        method = min(by_method, key=key).calibration if split is not None else methods[0]
        decision.calibration["chosen"] = method
        if split is None:
            decision.calibration["rule"] = f"no validation data: the first method ({methods[0]})"
        best: dict[str, Candidate] = {first.name: next(c for c in by_method if c.calibration == method)}
        for sel in distinct[1:]:
            say(f"quantizing selection {sel.name!r}")
            c = build(sel, method)
            decision.candidates.append(c)
            best[sel.name] = c

        # ---- sensitivity and FP32 fallbacks for selections that miss the accuracy budget
        failing = [s for s in distinct if best[s.name].accuracy == "fail"]
        if failing and split is not None:
            say(f"measuring layer sensitivity ({', '.join(s.name for s in failing)} miss the budget)")
            sens = _sensitivity(
                build,
                prep,
                failing,
                supported,
                split,
                sensitivity_samples,
                decision,
                allow_top1=split.y is not None,
            )
            for sel in failing:
                types = set(sel.resolve(supported))
                ranked = [s for s in sens if s.op_type in types]
                limit = min(
                    max_excluded if max_excluded is not None else max(1, len(ranked) // 2), len(ranked)
                )
                if limit < 1:
                    decision.notes.append(f"selection {sel.name!r}: no node to keep in FP32; gave up")
                    continue
                # the most FP32 nodes allowed first: when even that misses the budget, give up at once;
                # else bisect for the fewest (a node more in FP32 moves the model towards FP32)
                top = build(sel, method, excluded=[s.node for s in ranked[:limit]])
                if top.accuracy != "pass":
                    top.note = f"still over budget with the {limit} most sensitive nodes in FP32; gave up"
                    decision.candidates.append(top)
                    best[sel.name] = top
                    decision.notes.append(
                        f"selection {sel.name!r}: no INT8 within {allow:g} points with up to {limit} nodes kept FP32"
                    )
                    continue
                lo, hi, found = 0, limit, top  # lo: misses the budget (0 = the plain candidate); hi: passes
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    c = build(sel, method, excluded=[s.node for s in ranked[:mid]])
                    if c.accuracy == "pass":
                        hi, found = mid, c
                    else:
                        lo = mid
                if lo:
                    found.note = f"the {lo} most sensitive node(s) in FP32 were not enough"
                decision.candidates.append(found)
                best[sel.name] = found
                for s in ranked[:hi]:
                    s.kept_fp32 = True
                    s.reason = s.reason or (
                        f"among the {hi} most sensitive nodes of selection {sel.name!r}: "
                        f"quantized alone it moves the logits by {s.rel_error:.3g} (relative)"
                    )

        passing = [best[s.name] for s in distinct if best[s.name].accuracy in ("pass", "skipped")]

        if not passing:
            closest = min((best[s.name] for s in distinct), key=key)
            why = (
                f"no INT8 model stays within the accuracy budget of {allow:g} points: the closest, "
                f"{closest.name}, reaches top-1 {closest.top1:.2f}% vs FP32 {fp32_top1:.2f}% "
                f"(drop {closest.drop:.2f} points)"
            )
            if precision == "int8":
                decision.status, decision.reason = "budget_failed", why
                decision.seconds = round(time.perf_counter() - t_start, 3)
                return decision
            decision.reason = why + "; the FP32 model ships"
            decision.metadata = _write_shipped(
                src, dst, {**base_props, "precision": "fp32", "quantization": "none (" + why + ")"}
            )
            decision.out = str(dst)
            finish_report(src)
            decision.seconds = round(time.perf_counter() - t_start, 3)
            return decision

        # ---- latency: FP32 and every passing candidate, interleaved, repeated
        say(f"timing FP32 and {len(passing)} INT8 candidate(s), interleaved, {latency_repeats}x")
        lat = _time_interleaved(
            [src, *[Path(c.path) for c in passing]], target, latency_budget_s, latency_repeats
        )
        decision.fp32["latency_p50"], decision.fp32["latency_p90"] = lat[0]
        for c, (p50, p90) in zip(passing, lat[1:]):
            c.latency_p50, c.latency_p90 = p50, p90
            c.latency_ratio = p50 / lat[0][0] if lat[0][0] else None
        fastest = min(passing, key=lambda c: c.latency_p50 or float("inf"))
        fp50 = lat[0][0]
        ratio = fastest.latency_ratio or 1.0
        lat_msg = (
            f"{fastest.name}: p50 {fastest.latency_p50:.3f} ms vs FP32 {fp50:.3f} ms "
            f"(x{ratio:.2f}; p90 {fastest.latency_p90:.3f} vs {lat[0][1]:.3f} ms)"
        )
        if precision == "auto" and ratio > 1.0 - latency_margin:
            decision.reason = (
                f"INT8 is not at least {latency_margin:.0%} faster than FP32 on this runtime: fastest {lat_msg}; "
                "the FP32 model ships"
            )
            decision.metadata = _write_shipped(
                src,
                dst,
                {
                    **base_props,
                    "precision": "fp32",
                    "quantization": f"none (INT8 x{ratio:.2f} of FP32 latency)",
                },
            )
            decision.out = str(dst)
            finish_report(src)
            decision.seconds = round(time.perf_counter() - t_start, 3)
            return decision

        # ---- numerics of the chosen INT8 against the reference
        chosen = fastest
        decision.chosen, decision.precision = chosen, "int8"
        decision.kept_fp32 = [
            {"node": s.node, "op_type": s.op_type, "rel_error": s.rel_error, "reason": s.reason}
            for s in decision.sensitivity
            if s.node in chosen.excluded
        ]
        if split is not None:
            decision.numerics = _numerics(Path(chosen.path), split, reference, tol, target.runtime)
            if not decision.numerics["passed"]:
                decision.status = "validation_failed"
                decision.reason = (
                    f"the INT8 model {chosen.name} is beyond the INT8 tolerance of its reference: "
                    f"{decision.numerics['detail']}"
                )
                decision.seconds = round(time.perf_counter() - t_start, 3)
                return decision
        acc_msg = (
            f"top-1 {chosen.top1:.2f}% vs FP32 {fp32_top1:.2f}% (drop {chosen.drop:.2f} <= {allow:g} points)"
            if chosen.top1 is not None and fp32_top1 is not None
            else "accuracy not checked (no labelled validation data)"
        )
        decision.reason = f"INT8 ships: {lat_msg}; {acc_msg}" + (
            f"; {len(chosen.excluded)} sensitive node(s) kept FP32" if chosen.excluded else ""
        )
        qinfo = {
            "format": "QDQ",
            "weights": "int8, per channel",
            "activations": "uint8, per tensor",
            "calibration": chosen.calibration,
            "calibration_samples": decision.calibration["samples"],
            "op_selection": chosen.selection,
            "op_types": chosen.op_types,
            "nodes_kept_fp32": chosen.excluded,
            "tool": "onnxruntime.quantization.quantize_static",
        }
        decision.metadata = _write_shipped(
            Path(chosen.path), dst, {**base_props, "precision": "int8", "quantization": qinfo}
        )
        decision.out = str(dst)
        chosen.size_bytes = dst.stat().st_size
        finish_report(dst)
    decision.seconds = round(time.perf_counter() - t_start, 3)
    return decision


def _node_types(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def _nodes(path: Path) -> list[tuple[str, str]]:
    import onnx

    return [(n.name, n.op_type) for n in onnx.load(str(path), load_external_data=False).graph.node]


def _sensitivity(
    build: Callable[..., Candidate],
    prep: Path,
    failing: Sequence[OpSelection],
    supported: Sequence[str],
    split: _Split,
    samples: int,
    decision: QuantDecision,
    *,
    allow_top1: bool,
) -> list[LayerSensitivity]:
    """Quantize each node the failing selections quantize, alone; rank by the logits' error."""
    xs, n = [], 0
    for x in split.x:  # the first ``samples`` validation images
        take = x[: max(0, samples - n)]
        if not len(take):
            break
        xs.append(take)
        n += len(take)
    labels = split.y[:n] if (allow_top1 and split.y is not None) else None
    sub = _Split(xs, labels, split.ref[:n])
    types = sorted(set().union(*(set(s.resolve(supported)) for s in failing)))
    widest = OpSelection("sensitivity", "union of the failing selections", op_types=tuple(types))
    done = {s.node for s in decision.sensitivity}
    for name, op in _nodes(prep):
        if op not in types or name in done or not name:
            continue
        c = build(widest, decision.calibration["chosen"], only=[name], evaluate_on=sub)
        if c.qdq_nodes == 0:
            continue  # nothing to quantize there on its own (e.g. a shape op)
        decision.sensitivity.append(
            LayerSensitivity(node=name, op_type=op, rel_error=c.rel_error or 0.0, top1_drop=c.drop)
        )
    decision.sensitivity.sort(key=lambda s: (-s.rel_error, s.node))
    decision.calibration["sensitivity"] = {
        "scheme": "each node quantized alone (all others FP32); relative error of the logits against FP32",
        "samples": n,
        "nodes": len(decision.sensitivity),
    }
    return decision.sensitivity


def _time_interleaved(
    paths: Sequence[Path], target: Any, budget_s: float, repeats: int
) -> list[tuple[float, float]]:
    """(median p50, median p90) in ms per model over ``repeats`` interleaved timing runs."""
    from compressor.export.runtime import measure_latency

    runs = []
    for r in range(repeats):
        res = measure_latency(list(paths), target=target, time_budget_s=budget_s, seed=r)
        runs.append([(m["p50"], m["p90"]) for m in res["models"]])
    arr = np.asarray(runs, dtype=np.float64)  # repeats x models x 2
    med = np.median(arr, axis=0)
    return [(round(float(a), 4), round(float(b), 4)) for a, b in med]


def _as_callable(reference: Any) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(reference, torch.nn.Module):
        net = reference.eval()
        dev = next(iter(net.parameters()), torch.zeros(())).device

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return net(torch.from_numpy(x).to(dev)).float().cpu().numpy()

        return run, "the PyTorch reference model"
    if callable(reference):
        return reference, "the reference callable"
    raise UsageError(f"reference must be a torch.nn.Module or a callable, got {type(reference).__name__}")


def _numerics(path: Path, split: _Split, reference: Any, tol: Int8Tolerance, runtime: Any) -> dict[str, Any]:
    if reference is None:
        return check_numerics(
            path,
            split.x,
            split.ref,
            tolerance=tol,
            runtime=runtime,
            against="the FP32 ONNX model on ONNX Runtime",
        )
    return check_numerics(path, split.x, reference, tolerance=tol, runtime=runtime)


def check_numerics(
    int8_model: str | os.PathLike[str],
    inputs: Sequence[np.ndarray],
    reference: Any,
    *,
    tolerance: Int8Tolerance | None = None,
    runtime: Any = None,
    against: str = "the reference logits",
) -> dict[str, Any]:
    """Compare the INT8 ONNX model's logits on ``inputs`` (a list of batches) with ``reference``:
    a PyTorch model, a callable (numpy -> numpy), or the reference logits themselves (an array
    with one row per input). Returns the measurements and ``passed`` against ``tolerance``."""
    from compressor.targets import Runtime

    tol = tolerance or Int8Tolerance()
    got = _run_all(_Runner(int8_model, runtime or Runtime()), inputs)
    if isinstance(reference, np.ndarray):
        ref = reference
    else:
        fn, against = _as_callable(reference)
        ref = _run_all(fn, inputs)
    agree, rel = _compare(got, ref)
    passed = agree >= tol.min_top1_agreement - 1e-9 and rel <= tol.max_rel_error + 1e-12
    return {
        "against": against,
        "samples": len(ref),
        "top1_agreement": agree,
        "rel_error": rel,
        "max_abs_diff": float(np.abs(got - ref).max()),
        "tolerance": asdict(tol),
        "passed": passed,
        "detail": f"top-1 agreement {agree:.2f}% (at least {tol.min_top1_agreement:g}% allowed), relative error "
        f"of the logits {rel:.4f} (at most {tol.max_rel_error:g}) over {len(ref)} validation inputs against {against}",
    }


def onnx_top1(
    model: str | os.PathLike[str],
    batches: Iterable[tuple[np.ndarray, np.ndarray | None]],
    *,
    runtime: Any = None,
) -> float:
    """Top-1 (%) of an ONNX classifier on ONNX Runtime over labelled ``(x, y)`` batches (any batch
    size, also for a model with a fixed batch)."""
    from compressor.targets import Runtime

    run = _Runner(model, runtime or Runtime())
    correct = total = 0
    for x, y in batches:
        if y is None:
            raise DataError("onnx_top1 needs labelled batches")
        logits = run(np.asarray(x, dtype=np.float32))
        correct += int((logits.argmax(1) == np.asarray(y).reshape(-1)).sum())
        total += len(logits)
    if total == 0:
        raise DataError("the data yielded no samples")
    return 100.0 * correct / total


# ------------------------------------------------------------------------------ entry points
def quantize_with_data(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    data: Any,
    target: Any = "mobile",
    precision: str = "auto",
    calib_batches: int = 8,
    calib_batch_size: int = 32,
    max_acc_drop: float | None = None,
    reference: Any = None,
    meta: dict[str, Any] | None = None,
    plan: Any = None,
    seed: int = 0,
    val_samples: int | None = None,
    report_test: bool = True,
    **options: Any,
) -> QuantDecision:
    """:func:`quantize_onnx` fed from a :class:`~compressor.data.DataBundle` (the call the
    pipeline's quantize stage makes): calibration on ``calib_batches`` seeded batches of the
    training split, decisions on the validation split (``val_samples``: a seeded subset), top-1
    on the test split reported only. ``meta`` (the checkpoint's) and ``plan`` complete the
    deployment metadata; ``options`` go to :func:`quantize_onnx`."""
    props = deploy_metadata(
        data=data, meta=meta, plan=plan, existing=_props(Path(model)) if Path(model).is_file() else None
    )
    props.update(options.pop("metadata", None) or {})
    return quantize_onnx(
        model,
        out,
        calibration=calibration_batches(data, calib_batches, batch_size=calib_batch_size, seed=seed),
        validation=validation_batches(data, "val", max_samples=val_samples, seed=seed),
        report_split=validation_batches(data, "test") if report_test else None,
        target=target,
        precision=precision,
        max_acc_drop=max_acc_drop,
        reference=reference,
        metadata=props,
        **options,
    )


def quantize_file(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    data: str,
    target: Any = "mobile",
    reference: str | os.PathLike[str] | None = None,
    plan: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    **options: Any,
) -> QuantDecision:
    """File-to-file entry point behind ``compress quantize``: ``data`` is a data spec
    (:func:`compressor.data.load_data`), transformed for the ONNX model's input shape with the
    normalisation of the ``reference`` checkpoint's meta when given, else of the ONNX file's
    ``compressor.mean``/``std`` metadata, else the dataset's own. The ``reference`` checkpoint
    (the PyTorch model the ONNX file was exported from) is also the numerics reference."""
    from compressor.data import load_data
    from compressor.export.runtime import input_meta
    from compressor.targets import load_target

    src, dst = Path(model), Path(out)
    _check_paths(src, dst)
    t = load_target(target)
    run = _Runner(src, t.runtime)
    if any(not isinstance(s, int) for s in run.sample_shape):
        raise UsageError(
            f"the ONNX model's input has symbolic dimensions besides the batch: {run.sample_shape}"
        )
    existing = _props(src)
    ref_model, meta = None, None
    if reference is not None:
        from compressor.checkpoint import load_checkpoint

        ref_model, meta = load_checkpoint(reference, arch=arch, trust_pickle=trust_pickle)
    data_meta: dict[str, Any] = {"input_shape": list(run.sample_shape)}
    known = deploy_metadata(meta=meta, existing=existing)
    for key in ("mean", "std", "num_classes"):
        if key in known:
            data_meta[key] = known[key]
    bundle = load_data(data, meta=data_meta)
    _, _, out_name = input_meta(run.sess)
    out_shape = run.sess.get_outputs()[0].shape
    classes = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None
    if classes is not None and classes != bundle.num_classes:
        raise DataError(
            f"the ONNX model predicts {classes} classes but dataset {bundle.name!r} has {bundle.num_classes}; "
            "pass the data the model was trained on (--data)"
        )
    decision = quantize_with_data(
        src, dst, data=bundle, target=t, meta=meta, plan=plan, reference=ref_model, **options
    )
    if "mean" not in known:
        decision.notes.append(
            f"normalisation {list(bundle.mean)}/{list(bundle.std)} is the dataset's own: neither a reference "
            "checkpoint nor the ONNX metadata gave one (pass --reference CKPT if the model was trained otherwise)"
        )
    return decision
