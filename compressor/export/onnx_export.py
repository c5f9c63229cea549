"""PyTorch -> ONNX export and onnxsim simplification.

The exporter is torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``): for the
convolutional classifiers this tool compresses it is mature, fast (~1 s for ResNet-18) and writes
one self-contained file at exactly the opset asked for (11 to 20: a target may need an old opset
for an old runtime), while the torch.export-based exporter (``dynamo=True``) takes two to three
times as long, needs onnxscript, and with torch 2.15 writes opset 18 or newer only (asked for 17, its
version conversion fails and it keeps 18). ``exporter="auto"`` (the
default) tries TorchScript first and falls back to the torch.export-based exporter when the
TorchScript exporter is missing or fails; the result records which one wrote the file.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compressor.errors import UsageError, ValidationError
from compressor.io import atomic_write

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXPORTERS = ("auto", "torchscript", "dynamo")


@dataclass
class SimplifyResult:
    """What onnxsim did. ``simplified`` is False when the unsimplified model was kept."""

    simplified: bool
    nodes_before: int
    nodes_after: int
    seconds: float
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExportResult:
    """What ``export_onnx`` wrote and how."""

    path: str
    opset: int
    input_name: str
    output_name: str
    input_shape: list[int]
    dynamic_batch: bool
    exporter: str
    export_seconds: float
    simplify: SimplifyResult | None
    size_bytes: int
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def simplified(self) -> bool:
        return bool(self.simplify and self.simplify.simplified)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["simplified"] = self.simplified
        return d


def versions() -> dict[str, str]:
    """Versions of the packages that produced and run the ONNX file."""
    import onnx
    import onnxruntime
    import torch

    out = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import onnxsim

        out["onnxsim"] = str(getattr(onnxsim, "__version__", "unknown")).lstrip("v")
    except ImportError:  # pragma: no cover - onnxsim is a dependency
        out["onnxsim"] = "not installed"
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation chatter (the result records what matters)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _check_shape(input_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise UsageError(
            f"input_shape {input_shape!r} is not a sequence of integers, e.g. (1, 3, 224, 224)"
        ) from None
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise UsageError(f"input_shape {shape} must include the batch and be positive, e.g. (1, 3, 224, 224)")
    return shape


def _export_to(model: Any, x: Any, tmp: str, *, opset: int, dynamic_batch: bool, exporter: str) -> None:
    import torch

    if exporter == "torchscript":
        dyn = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
        torch.onnx.export(
            model,
            (x,),
            tmp,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dyn,
            do_constant_folding=True,
            dynamo=False,
        )
        return
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    prog = torch.onnx.export(
        model,
        (x,),
        None,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=shapes,
        dynamo=True,
        external_data=False,
        optimize=True,
    )
    assert prog is not None
    prog.save(tmp, external_data=False)


def _opset_of(proto: Any, default: int) -> int:
    """The default-domain opset a model imports."""
    return int(next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default))


def _convert_opset(tmp: str, opset: int, written: int, *, exporter: str, tried: list[str]) -> None:
    """Convert the ONNX file ``tmp`` (written at opset ``written``) to ``opset`` in place; when
    that is impossible, a :class:`UsageError` (exit 2) saying which opset could be written."""
    import onnx
    from onnx import version_converter

    why = ""
    try:
        conv = version_converter.convert_version(onnx.load(tmp), opset)
        onnx.checker.check_model(conv)
        if _opset_of(conv, opset) == opset:
            onnx.save(conv, tmp)
            return
        why = f"the converter produced opset {_opset_of(conv, opset)}"
    except Exception as e:  # noqa: BLE001 - reported to the user below
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    earlier = f"; earlier: {'; '.join(tried)}" if tried else ""
    raise UsageError(
        f"the target asks for ONNX opset {opset}, but the model could be written only at opset {written} "
        f"(by the {exporter} exporter{earlier}; converting to opset {opset} failed: {why}). Use a target "
        f"whose [export] opset is {written} or higher, or a model the torchscript exporter handles"
    )


def export_onnx(
    model: Any,
    path: str | os.PathLike[str],
    *,
    input_shape: tuple[int, ...] | list[int],
    opset: int = 17,
    dynamic_batch: bool = True,
    simplify: bool = True,
    exporter: str = "auto",
) -> ExportResult:
    """Export ``model`` (an ``nn.Module`` classifier) to ONNX at ``path``, then simplify it.

    ``input_shape`` includes the batch, e.g. ``(1, 3, 224, 224)``. The graph has one input named
    ``"input"`` and one output named ``"logits"``; with ``dynamic_batch`` the batch dimension is
    the symbol ``"batch"``. The file is checked with ``onnx.checker`` and written atomically. When
    onnxsim fails or its own check fails, the unsimplified model is kept and
    ``result.simplify.message`` says why.
    """
    import onnx
    import torch

    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    shape = _check_shape(input_shape)
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        device = next(iter(model.parameters())).device
    except StopIteration:
        device = torch.device("cpu")
    x = torch.randn(*shape, device=device)
    try:  # a shape the model rejects is bad input (exit 2), not a failed export
        with torch.no_grad():
            model(x)
    except RuntimeError as e:
        model.train(was_training)
        raise UsageError(
            f"the model rejects input shape {tuple(shape)}: {str(e).splitlines()[0]}; "
            "pass the shape it expects (--input-shape N,C,H,W)"
        ) from e
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    notes: list[str] = []
    info: dict[str, Any] = {}

    def build(tmp: str) -> None:
        """Export, check, simplify and stamp into ``tmp``; renamed onto ``path`` only when all is done."""
        t0 = time.perf_counter()
        for i, name in enumerate(order):
            try:
                with _quiet(), contextlib.redirect_stdout(io.StringIO()):
                    _export_to(model, x, tmp, opset=opset, dynamic_batch=dynamic_batch, exporter=name)
                info["used"] = name
                break
            except UsageError:
                raise
            except Exception as e:  # noqa: BLE001 - reported, then the next exporter is tried
                msg = (
                    f"{name} exporter failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                )
                if i + 1 == len(order):
                    raise ValidationError(
                        f"cannot export the model to ONNX (opset {opset}): {msg}"
                        + (f"; earlier: {'; '.join(notes)}" if notes else "")
                    ) from e
                notes.append(msg)
        info["seconds"] = time.perf_counter() - t0
        proto = onnx.load(tmp)
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as e:
            raise ValidationError(f"the exported ONNX model fails onnx.checker: {e}") from e
        real = _opset_of(proto, opset)
        sim = simplify_onnx(tmp) if simplify else None
        info["sim"] = sim
        if real != opset:  # the target's opset, converted, or exit 2 naming what could be written
            _convert_opset(tmp, opset, real, exporter=info["used"], tried=notes)
            notes.append(
                f"the {info['used']} exporter wrote opset {real}; converted to the asked opset {opset}"
            )
            real = opset
        info["opset"] = int(real)
        _stamp(
            Path(tmp),
            {
                "exporter": info["used"],
                "opset": str(real),
                "input_shape": "x".join(map(str, shape)),
                "dynamic_batch": str(dynamic_batch).lower(),
                "simplified": str(bool(sim and sim.simplified)).lower(),
                **{f"{k}_version": v for k, v in versions().items()},
            },
        )

    try:
        atomic_write(path, build)
    finally:
        model.train(was_training)
    sim = info["sim"]
    used, real_opset, export_seconds = info["used"], info["opset"], info["seconds"]
    return ExportResult(
        path=str(path),
        opset=int(real_opset),
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        input_shape=list(shape),
        dynamic_batch=dynamic_batch,
        exporter=used,
        export_seconds=round(export_seconds, 3),
        simplify=sim,
        size_bytes=path.stat().st_size,
        versions=versions(),
        notes=notes,
    )


def _stamp(path: Path, props: dict[str, str]) -> None:
    """Record how the file was made in its own metadata (``metadata_props``, prefixed ``compressor.``)."""
    import onnx

    from compressor import __version__

    model = onnx.load(str(path))
    model.producer_name = "compressor"
    model.producer_version = __version__
    keep = [p for p in model.metadata_props if not p.key.startswith("compressor.")]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"compressor.{k}", v
    atomic_write(path, lambda tmp: onnx.save(model, tmp))


def simplify_onnx(
    path: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None, check_n: int = 3
) -> SimplifyResult:
    """Simplify the ONNX file at ``path`` with onnxsim, in place (or into ``out``).

    onnxsim compares the simplified and the original model on ``check_n`` random inputs; when it
    raises or its check fails, the unsimplified model is kept (copied to ``out`` if given) and the
    result says so. A model with a symbolic batch is checked at batch 1.
    """
    import onnx

    path = Path(path)
    dest = Path(out) if out is not None else path
    model = onnx.load(str(path))
    before = len(model.graph.node)
    t0 = time.perf_counter()
    message = ""
    simplified = None
    try:
        import onnxsim

        with _quiet(), contextlib.redirect_stdout(io.StringIO()):
            simplified, ok = onnxsim.simplify(model, check_n=check_n, test_input_shapes=_test_shapes(model))
        if not ok:
            message = "onnxsim's own check failed (simplified outputs differ); kept the unsimplified model"
            simplified = None
    except Exception as e:  # noqa: BLE001 - onnxsim failing must not lose the model
        message = f"onnxsim failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); kept the unsimplified model"
        simplified = None
    seconds = time.perf_counter() - t0
    if simplified is not None:
        try:
            onnx.checker.check_model(simplified)
        except Exception as e:  # noqa: BLE001
            message = f"the simplified model fails onnx.checker ({e}); kept the unsimplified model"
            simplified = None
    result_model = simplified if simplified is not None else model
    if simplified is not None or dest != path:
        atomic_write(dest, lambda tmp: onnx.save(result_model, tmp))
    after = len(result_model.graph.node)
    if simplified is not None:
        message = f"simplified with onnxsim: {before} -> {after} nodes"
    return SimplifyResult(
        simplified=simplified is not None,
        nodes_before=before,
        nodes_after=after,
        seconds=round(seconds, 3),
        message=message,
    )


def _test_shapes(model: Any) -> dict[str, list[int]] | None:
    """Concrete shapes (symbolic dims -> 1) onnxsim uses to check a model with a dynamic batch."""
    shapes: dict[str, list[int]] = {}
    init = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init:
            continue
        dims = inp.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            shapes[inp.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    return shapes or None
