"""ONNX export, simplification and validation on ONNX Runtime against a deploy target.

>>> from compressor.export import export_for_target, validate
>>> res = export_for_target(model, "out/model.onnx", target="mobile", meta=meta)   # doctest: +SKIP
>>> report = validate("out/model.onnx", model, target="mobile", data=bundle, original=orig)  # doctest: +SKIP
>>> report.raise_for_status()     # ValidationError (exit 4) or BudgetError (exit 3)  # doctest: +SKIP
"""

from __future__ import annotations

from compressor.export.api import (
    export_checkpoint,
    export_for_target,
    resolve_input_shape,
    validate_checkpoint,
)
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
