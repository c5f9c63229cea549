"""File-to-file entry points behind ``compress export`` and ``compress validate``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from compressor.export.onnx_export import ExportResult, export_onnx
from compressor.export.validate import ValidationReport


def resolve_input_shape(
    target: Any, meta: dict[str, Any] | None = None, input_shape: tuple[int, ...] | list[int] | None = None
) -> tuple[int, ...]:
    """The full input shape to export with: ``(batch, C, H, W)``.

    The sample shape C,H,W is ``input_shape`` if given, else the checkpoint's
    ``meta["input_shape"]``, else the target's ``[input].shape``
    (:func:`compressor.shapes.resolve_input_shape`); the batch is the target's ``[input].batch``.
    """
    from compressor.shapes import resolve_input_shape as sample_shape_of
    from compressor.targets import load_target

    target = load_target(target)
    return (int(target.input.batch), *sample_shape_of(input_shape, meta, target))


def export_for_target(
    model: Any,
    path: str | os.PathLike[str],
    *,
    target: Any,
    meta: dict[str, Any] | None = None,
    input_shape: tuple[int, ...] | list[int] | None = None,
    simplify: bool = True,
    exporter: str = "auto",
) -> ExportResult:
    """Export ``model`` with ``target``'s opset, batch and dynamic-batch setting (see
    :func:`resolve_input_shape` for where the input shape comes from)."""
    from compressor.targets import load_target

    target = load_target(target)
    shape = resolve_input_shape(target, meta, input_shape)
    return export_onnx(
        model,
        path,
        input_shape=shape,
        opset=target.export.opset,
        dynamic_batch=target.export.dynamic_batch,
        simplify=simplify,
        exporter=exporter,
    )


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    target: Any = "mobile",
    arch: str | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | list[int] | None = None,
    simplify: bool = True,
    exporter: str = "auto",
    **overrides: Any,
) -> ExportResult:
    """Load ``checkpoint`` and export it to ONNX at ``out`` for ``target``.

    ``overrides`` are target overrides (``opset=``, ``batch=``, ``dynamic_batch=``, ``shape=`` ...);
    ``input_shape`` (C,H,W) beats the checkpoint's and the target's shape; the batch is the
    target's (``batch=`` overrides it).
    """
    from compressor.checkpoint import load_checkpoint
    from compressor.targets import load_target

    t = load_target(target, **overrides)
    model, meta = load_checkpoint(checkpoint, arch=arch, trust_pickle=trust_pickle)
    return export_for_target(
        model, out, target=t, meta=meta, input_shape=input_shape, simplify=simplify, exporter=exporter
    )


def validate_checkpoint(
    onnx_path: str | os.PathLike[str],
    *,
    reference: str | os.PathLike[str],
    target: Any = "mobile",
    data: str | None = None,
    original: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    max_batches: int | None = None,
    batch_size: int = 64,
    latency: bool = True,
    latency_budget_s: float = 3.0,
    **overrides: Any,
) -> ValidationReport:
    """Validate ``onnx_path`` against the PyTorch checkpoint ``reference`` on ``target``.

    ``data`` is a :func:`compressor.data.load_data` spec (``mnist5k``, ``cifar10:DIR`` ...), loaded
    with the reference checkpoint's meta (shape, normalisation); its test split is used.
    ``original`` is the uncompressed checkpoint (or its ``.onnx``), for the accuracy drop and the
    latency side by side. Returns the report; call ``report.raise_for_status()`` to fail.
    """
    from compressor.checkpoint import load_checkpoint
    from compressor.export.validate import validate
    from compressor.targets import load_target

    t = load_target(target, **overrides)
    model, meta = load_checkpoint(reference, arch=arch, trust_pickle=trust_pickle)
    orig: Any = None
    if original is not None:
        if str(original).endswith(".onnx"):
            orig = Path(original)
        else:
            orig, _ = load_checkpoint(original, trust_pickle=trust_pickle)
    bundle = None
    if data is not None:
        from compressor.data import load_data

        bundle = load_data(data, meta=meta)
    return validate(
        onnx_path,
        model,
        target=t,
        data=bundle,
        original=orig,
        atol=atol,
        rtol=rtol,
        max_batches=max_batches,
        batch_size=batch_size,
        latency=latency,
        latency_budget_s=latency_budget_s,
    )
