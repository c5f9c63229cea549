"""File-to-file entry points behind ``compress export`` and ``compress validate``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from compressor.export.onnx_export import ExportResult
from compressor.export.validate import ValidationReport


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
    ``input_shape`` (C, H, W, or with the batch) beats the checkpoint's and the target's shape.
    """
    from compressor.checkpoint import load_checkpoint
    from compressor.export import export_for_target
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
