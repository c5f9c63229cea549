"""compressor: deployment-oriented channel pruning for CNNs.

The public API (a contract)::

    import compressor
    model, meta = compressor.load_checkpoint("model.pt", arch=None, trust_pickle=False)
    compressor.save_checkpoint(model, "slim.pt", meta=meta)
    cost = compressor.count(model, input_shape=(1, 3, 224, 224))
    plan = compressor.search(model, method="eagleeye", flops=0.5, data=...)
    slim = compressor.slim(model, plan)
    report = compressor.run(checkpoint="model.pt", target="mobile", flops=0.5, out="out/")

Attributes are imported lazily so that importing the package (and ``compress --help``) is fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_checkpoint": "compressor.checkpoint",
    "save_checkpoint": "compressor.checkpoint",
    "build_graph": "compressor.graph",
    "ChannelGraph": "compressor.graph",
    "count": "compressor.graph",
    "slim": "compressor.graph",
    "Plan": "compressor.plan",
    "search": "compressor.methods",
    "list_methods": "compressor.methods",
    "load_data": "compressor.data",
    "finetune": "compressor.train",
    "accuracy": "compressor.evaluate",
    "adaptive_bn": "compressor.bn",
    "load_target": "compressor.targets",
    "list_targets": "compressor.targets",
    "export_onnx": "compressor.export",
    "validate": "compressor.export",
    "run": "compressor.pipeline",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
