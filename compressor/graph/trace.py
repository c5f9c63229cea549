"""torch.fx tracing with errors that name the operation that could not be traced."""

from __future__ import annotations

import traceback
from collections.abc import Iterable

import torch.fx as fx
import torch.nn as nn

from compressor.errors import TraceError
from compressor.graph.registry import handler_for, is_handled


class ChannelTracer(fx.Tracer):
    """torch.fx tracer whose leaves are the module types the engine has handlers for.

    A subclass of a handled type is a leaf too, unless it overrides ``forward`` (then its own
    forward is traced, so what it does is seen). ``leaf_modules`` adds user-chosen leaves (their
    channels are then frozen: the engine cannot see inside them).
    """

    def __init__(self, leaf_modules: Iterable[type[nn.Module]] = ()) -> None:
        super().__init__()
        self.extra_leaves = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.extra_leaves and isinstance(m, self.extra_leaves):
            return True
        if handler_for(m) is not None:
            return is_handled(m)
        return super().is_leaf_module(m, module_qualified_name)


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch: where the untraceable operation is."""
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        f = fr.filename.replace("\\", "/")
        if "/torch/" not in f and "/compressor/graph/" not in f:
            return f"{fr.filename}:{fr.lineno} in {fr.name}: {fr.line}"
    return ""


def trace(model: nn.Module, leaf_modules: Iterable[type[nn.Module]] = ()) -> fx.GraphModule:
    """Symbolically trace ``model``; raise :class:`TraceError` naming the operation on failure."""
    tracer = ChannelTracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as e:  # torch.fx raises TraceError, TypeError, RuntimeError, ...
        where = _user_frame(e)
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            + (f"\n  at {where}" if where else "")
            + "\nThe model's forward has Python control flow that depends on tensor values (or another "
            "untraceable construct). Rewrite that part without it, or wrap it in a module and pass it "
            "as a leaf module (its channels are then frozen)."
        ) from e
    return fx.GraphModule(tracer.root, graph, type(model).__name__)
