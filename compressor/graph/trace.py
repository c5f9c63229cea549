"""torch.fx tracing with errors that name the operation that could not be traced."""

from __future__ import annotations

import operator
import traceback
from collections.abc import Iterable, Sequence
from typing import Any

import torch
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

    def __init__(
        self, leaf_modules: Iterable[type[nn.Module]] = (), example: Sequence[Any] | None = None
    ) -> None:
        super().__init__()
        self.extra_leaves = tuple(leaf_modules)
        # copies: an in-place op of the model must not change the caller's tensors
        ex = None if example is None else [t.clone() if isinstance(t, torch.Tensor) else t for t in example]
        self.example = tuple(ex) if ex is not None else None
        self._env: dict[fx.Node, Any] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.extra_leaves and isinstance(m, self.extra_leaves):
            return True
        if handler_for(m) is not None:
            return is_handled(m)
        return super().is_leaf_module(m, module_qualified_name)

    def to_bool(self, obj: fx.Proxy) -> bool:
        """Python control flow on a traced value (``if pad_h or pad_w``, ``if H == ws``,
        ``if v.device.type != 'meta'``): with an example input, the value is computed from the
        graph traced so far (in eval mode: no BatchNorm statistic changes) and the branch that
        input takes is traced. The node is marked a *guard*; the propagation pass freezes the channels whose count it depends on, since a
        slimmed model could take the other branch (:meth:`Propagation._sizes`)."""
        if self.example is None or _unpatched() is None:
            return super().to_bool(obj)
        value = self.concrete(obj.node)
        if not self._shape_only(obj.node):  # a branch on tensor values: no single trace is right
            return super().to_bool(obj)
        result = bool(value)
        obj.node.meta["guard"] = True
        return result

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def concrete(self, node: fx.Node) -> Any:
        """``node``'s value on the example input (TraceError when it cannot be computed)."""
        unpatched = _unpatched()
        if self.example is None or unpatched is None:
            raise fx.proxy.TraceError(
                "symbolically traced variables cannot be used as inputs to control flow"
            )
        modes = [(m, m.training) for m in self.root.modules()]
        try:
            self.root.eval()  # a training-mode run would update BatchNorm statistics
            with unpatched():  # run the real modules, not fx's tracing wrappers
                return self._evaluate(node)
        except Exception as e:
            raise fx.proxy.TraceError(
                f"symbolically traced variables cannot be used as inputs to control flow ({e})"
            ) from e
        finally:
            for m, was in modes:
                m.training = was

    def _shape_only(self, node: fx.Node) -> bool:
        """Whether ``node`` depends on tensors only through their shape, device or dtype."""
        stack, seen = [node], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if isinstance(self._env.get(n), torch.Tensor):
                return False
            if not _reads_metadata(n):
                stack.extend(n.all_input_nodes)
        return True

    @torch.no_grad()
    def _evaluate(self, target: fx.Node) -> Any:
        """The value of ``target`` on the example input (nodes evaluated once, in graph order)."""
        interp = fx.Interpreter(self.root, graph=self.graph)
        interp.env = self._env
        ex = self.example or ()
        n_placeholders = 0
        for node in self.graph.nodes:
            if node.op == "placeholder":
                n_placeholders += 1
            if node not in self._env:
                if node.op == "placeholder":
                    i = n_placeholders - 1
                    self._env[node] = ex[i] if i < len(ex) else (node.args[0] if node.args else None)
                else:
                    self._env[node] = interp.run_node(node)
            if node is target:
                return self._env[node]
        raise fx.proxy.TraceError(f"{target.name} is not in the graph traced so far")


_METADATA_ATTRS = ("shape", "device", "dtype", "ndim", "is_cuda")


def _reads_metadata(n: fx.Node) -> bool:
    """``x.size()``, ``x.shape``, ``x.dim()``, ``x.device``...: reads a tensor's metadata only."""
    if n.op == "call_method":
        return n.target in ("size", "dim", "numel", "get_device")
    if n.op == "call_function" and n.target is getattr:
        return len(n.args) > 1 and n.args[1] in _METADATA_ATTRS
    return False


def _unpatched() -> Any:
    """torch.fx's context that lifts its tracing patches (None on a torch without it)."""
    from torch.fx import _symbolic_trace

    return getattr(_symbolic_trace, "_maybe_revert_all_patches", None)


class _Proxy(fx.Proxy):
    """A proxy whose ``device`` and ``dtype`` are the example input's (``torch.autocast(
    device_type=x.device.type)``): they never depend on channels."""

    def __getattr__(self, k: str) -> Any:
        tracer = self.tracer
        if k in ("device", "dtype", "is_cuda") and isinstance(tracer, ChannelTracer) and tracer.example:
            return getattr(tracer.concrete(self.node), k)
        return super().__getattr__(k)

    def __setitem__(self, key: Any, value: Any) -> None:
        """``x[...] = y`` (MViTv2's relative positions): recorded as ``operator.setitem``, an
        in-place write the propagation pass freezes (it does not follow the written part)."""
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch: where the untraceable operation is."""
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        f = fr.filename.replace("\\", "/")
        if "/torch/" not in f and "/compressor/graph/" not in f:
            return f"{fr.filename}:{fr.lineno} in {fr.name}: {fr.line}"
    return ""


def trace(
    model: nn.Module, leaf_modules: Iterable[type[nn.Module]] = (), example: Sequence[Any] | None = None
) -> fx.GraphModule:
    """Symbolically trace ``model``; raise :class:`TraceError` naming the operation on failure.

    ``example`` (the model's inputs): control flow on traced values follows the branch this
    input takes (:meth:`ChannelTracer.to_bool`); without it such control flow fails to trace."""
    tracer = ChannelTracer(leaf_modules, example)
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
