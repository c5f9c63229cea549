"""ONNX export, simplification and validation on ONNX Runtime against a deploy target.

>>> from compressor.export import export_for_target, validate
>>> res = export_for_target(model, "out/model.onnx", target="mobile", meta=meta)   # doctest: +SKIP
>>> report = validate("out/model.onnx", model, target="mobile", data=bundle, original=orig)  # doctest: +SKIP
>>> report.raise_for_status()     # ValidationError (exit 4) or BudgetError (exit 3)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

from compressor.errors import UsageError
from compressor.export.api import export_checkpoint, validate_checkpoint
from compressor.export.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportResult,
    SimplifyResult,
    export_onnx,
    simplify_onnx,
    versions,
)
from compressor.export.runtime import make_session, measure_latency
from compressor.export.validate import (
    Check,
    ValidationReport,
    read_tensor,
    validate,
    write_test_data_set,
)

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "Check",
    "ExportResult",
    "SimplifyResult",
    "ValidationReport",
    "export_checkpoint",
    "export_for_target",
    "export_onnx",
    "validate_checkpoint",
    "make_session",
    "measure_latency",
    "read_tensor",
    "resolve_input_shape",
    "simplify_onnx",
    "validate",
    "versions",
    "write_test_data_set",
]


def resolve_input_shape(
    target: Any, meta: dict[str, Any] | None = None, input_shape: tuple[int, ...] | list[int] | None = None
) -> tuple[int, ...]:
    """The full input shape (batch first) to export with.

    The sample shape (C, H, W) comes from ``input_shape`` if given (with or without the batch),
    else the checkpoint's ``meta["input_shape"]``, else the target's ``[input].shape``; the batch
    from a 4-d ``input_shape``, else the target's ``[input].batch``.
    """
    from compressor.targets import load_target

    target = load_target(target)
    batch = target.input.batch
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == 4:
            return shape
        sample: tuple[int, ...] | None = shape
    elif meta and meta.get("input_shape"):
        sample = tuple(int(s) for s in meta["input_shape"])
    else:
        sample = target.input.shape
    if not sample:
        raise UsageError(
            f"no input shape: the checkpoint does not record one and target {target.name!r} has no "
            "[input].shape; pass --input-shape C,H,W (e.g. 3,224,224)"
        )
    if any(s <= 0 for s in sample):
        raise UsageError(f"input shape {sample} must be positive, e.g. 3,224,224")
    return (batch, *sample)


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
