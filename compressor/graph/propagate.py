"""The propagation pass: run a traced graph on real tensors while carrying id tensors beside them.

How it works: the model is traced with torch.fx (:mod:`compressor.graph.trace`) and run once on
an example input. Beside every real tensor the pass carries an int64 *id tensor* of the same
shape naming the channel each element belongs to (:mod:`compressor.graph.labels`). Modules are
followed by their handlers (:mod:`compressor.graph.registry`), functions and methods by the
rules of :mod:`compressor.graph.function_rules`. Union-find over the labels then gives
*classes* (channels that live or die together) and *groups* (classes tied to the same
producers), in :class:`compressor.graph.channel_graph.ChannelGraph`.

The same pass, with a keep flag per label (``LabelState.mask``), runs the model with every pruned
channel forced to zero wherever it flows: the reference a slimmed model must equal.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from compressor.errors import InternalError, TraceError, UsageError
from compressor.graph import ops
from compressor.graph.function_rules import function_ids
from compressor.graph.labels import LabelState, apply_mask, masked_layer_norm, tensors
from compressor.graph.registry import handler_for


class Propagation:
    """One pass over ``gm`` with label state ``st``; ``tag`` prefixes the label spaces it mints
    for unknown ops (a second pass over the training graph must not reuse the first's)."""

    def __init__(self, gm: fx.GraphModule, st: LabelState, tag: str = "", count_flops: bool = False) -> None:
        self.gm = gm
        self.st = st
        self.tag = tag
        self.modules = dict(gm.named_modules())
        self.count_flops = count_flops
        self.flops = 0
        self.taint: dict[fx.Node, list[tuple[torch.Tensor, int | None]]] = {}
        #: (channels whose count shaped another tensor, that tensor, node): settled after the pass
        self.deferred: list[tuple[torch.Tensor, torch.Tensor, str]] = []
        self.size_nodes: dict[fx.Node, torch.Tensor] = {}

    def _exec(self, fn: Any, *args: Any, count: bool = True, **kwargs: Any) -> Any:
        """Run one model op, counting its FLOPs; id-tensor ops are not counted.

        Modules whose handler has a cost hook are counted analytically by their cost terms
        (convolutions and linear layers with the formula of torch.utils.flop_counter), and ops
        that cannot multiply matrices are not counted at all, so the counter's per-op cost is
        paid only where it is needed.
        """
        try:
            if not (self.count_flops and count):
                return fn(*args, **kwargs)
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as fc:
                out = fn(*args, **kwargs)
        except (TraceError, UsageError):
            raise
        except Exception as e:  # the model's own op failed on this input: not the engine's doing
            raise ModelOpError(e) from e
        self.flops += fc.get_total_flops()
        return out

    def run(self, *inputs: torch.Tensor) -> Any:
        real: dict[fx.Node, Any] = {}
        ids: dict[fx.Node, Any] = {}
        last_use: dict[fx.Node, fx.Node] = {}
        for node in self.gm.graph.nodes:
            for a in node.all_input_nodes:
                last_use[a] = node
        users_done: dict[fx.Node, list[fx.Node]] = {}
        for k, v in last_use.items():
            users_done.setdefault(v, []).append(k)
        it = iter(inputs)
        result = None
        for node in self.gm.graph.nodes:
            try:
                if node.op == "output":
                    out_ids = fx.node.map_arg(node.args[0], lambda n: ids.get(n))
                    self.st.freeze(out_ids, "network output")
                    result = fx.node.map_arg(node.args[0], lambda n: real[n])
                    break
                r, i = self.run_node(node, real, ids, it)
            except (TraceError, UsageError):
                raise
            except ModelOpError as e:  # the model's op on real values: the input is the user's
                shapes = [tuple(x.shape) for x in inputs if isinstance(x, torch.Tensor)]
                raise model_error(e.original, shapes[0] if shapes else None, where=node.format_node()) from e
            except Exception as e:  # the engine's own bookkeeping: a bug of ours, said as such
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise InternalError(
                    f"the channel engine failed at {node.format_node()}: {type(e).__name__}: {msg}"
                ) from e
            if node.op in ("call_function", "call_method", "call_module"):
                self._sizes(node, r, ids)
            if i is not None and self.st.mask is not None:
                r = apply_mask(r, i, self.st.mask)
            real[node] = r
            ids[node] = i
            for dead in users_done.get(node, ()):
                real.pop(dead, None)
                ids.pop(dead, None)
        self._settle()
        return result

    # ---------------------------------------------------------------- sizes
    def _sizes(self, node: fx.Node, out: Any, ids: dict[fx.Node, Any]) -> None:
        """Follow channel counts read with ``x.size()`` / ``x.shape`` into the ops they shape.

        ``D = x.size(1)`` used to reshape a *different* tensor ties that tensor's shape to x's
        channels (MaxViT attention); the engine cannot rewrite that, so x's channels freeze.
        Using it on the same channels (``x.view(x.size(0), x.size(1), -1)``, channel shuffle)
        is fine: both sides shrink together.
        """
        taint: list[tuple[torch.Tensor, int | None]] = [
            t for a in node.all_input_nodes for t in self.taint.get(a, [])
        ]
        name = ops.fn_name(node)
        args: Any = node.args
        src = args[0] if args and isinstance(args[0], fx.Node) else None
        if node.meta.get("guard") and taint:
            # a branch of the model's Python code was chosen on this value (traced for the example
            # input only): the channels whose count it reads must not change
            for t, _ in taint:
                self.st.freeze(t, f"{node.name}: the model branches on these channels' count")
        if not tensors(out):
            x_ids = ids.get(src) if src is not None else None
            if isinstance(x_ids, torch.Tensor) and (
                name == "size" or (name == "getattr" and args[1] == "shape")
            ):
                varying = self.st.varying_dims(x_ids)
                dim = args[1] if name == "size" and len(args) > 1 else node.kwargs.get("dim")
                if isinstance(dim, int):
                    taint = [(x_ids, None)] if dim % x_ids.dim() in varying else []
                else:
                    taint = [(x_ids, None)] if varying else []
                    self.size_nodes[node] = x_ids
            elif name == "getitem" and src in self.size_nodes and isinstance(args[1], int):
                x_ids = self.size_nodes[src]
                taint = [(x_ids, None)] if args[1] % x_ids.dim() in self.st.varying_dims(x_ids) else []
            if taint:
                self.taint[node] = taint
            return
        if not taint:
            return
        data = ids.get(src) if src is not None else None
        for t, _ in taint:
            if name in ops.SHAPE and isinstance(data, torch.Tensor):
                # the same channels (now, or once later ops unite them) shrink together
                self.deferred.append((t, data, node.name))
            else:
                self.st.freeze(t, f"{node.name}: these channels' count shapes another tensor")

    def _settle(self) -> None:
        """Freeze the channels whose count shaped a tensor that, after every union of the pass,
        still holds other channels (a reshape of ``y`` by ``x.size(1)`` is fine when ``x * y``
        later makes them one: SplitAttn's radix attention)."""
        if not self.deferred or not self.st.recording:
            return
        from compressor.graph.groups import _components

        pairs = torch.cat(self.st.pairs, dim=1).numpy() if self.st.pairs else None
        cls = _components(self.st.n, pairs[0], pairs[1])[1] if pairs is not None else None
        for t, data, name in self.deferred:
            a, b = torch.unique(t).numpy(), torch.unique(data).numpy()
            same = set(cls[a].tolist()) == set(cls[b].tolist()) if cls is not None else set(a) == set(b)
            if not same:
                # both counts must stay as they are: the reshape reads one to lay out the other
                self.st.freeze(t, f"{name}: these channels' count shapes another tensor")
                self.st.freeze(data, f"{name}: shaped by another tensor's channel count")
        self.deferred = []

    # ---------------------------------------------------------------- per node
    def run_node(
        self, node: fx.Node, real: dict[fx.Node, Any], ids: dict[fx.Node, Any], it: Any
    ) -> tuple[Any, Any]:
        st = self.st
        if node.op == "placeholder":
            try:
                x = next(it)
            except StopIteration:
                x = node.args[0] if node.args else None
            if not isinstance(x, torch.Tensor):
                return x, None
            return x, st.fresh_frozen(x, "network input", key=f"{self.tag}input:{node.name}")
        if node.op == "get_attr":
            v = fetch_attr(self.gm, str(node.target))
            if not isinstance(v, torch.Tensor):
                return v, None
            lab = st.space(("param", str(node.target)), max(v.numel(), 1))
            return v, lab.view(v.shape) if v.dim() else lab[0]
        args: Any = fx.node.map_arg(node.args, lambda n: real[n])
        kwargs: Any = fx.node.map_arg(node.kwargs, lambda n: real[n])
        if node.op == "call_module":
            m = self.modules[str(node.target)]
            h = handler_for(m)
            if st.mask is not None and h is not None and h.masked_forward_fn is not None:
                out = h.masked_forward(m, args[0], ids[node.args[0]], st.mask)  # type: ignore[index]
            else:
                # a handler's cost terms count its module; anything else is counted here
                out = self._exec(m, *args, count=h is None or h.cost_fn is None, **kwargs)
            return out, self.module_ids(node, m, ids, out)
        fn_name = ops.fn_name(node)
        if (
            node.op == "call_function"
            and node.target is torch.nn.functional.layer_norm
            and st.mask is not None
        ):
            w = args[2] if len(args) > 2 else kwargs.get("weight")
            b = args[3] if len(args) > 3 else kwargs.get("bias")
            eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
            out = masked_layer_norm(args[0], ids[node.args[0]], st.mask, w, b, eps)  # type: ignore[index]
        elif node.op == "call_method":
            self_obj, *rest = args
            out = self._exec(
                getattr(self_obj, str(node.target)), *rest, count=fn_name not in ops.NO_FLOPS, **kwargs
            )
        else:
            out = self._exec(
                node.target,
                *args,
                count=fn_name not in ops.NO_FLOPS and node.target not in ops.SPATIAL_FN,
                **kwargs,
            )
        return out, function_ids(st, self.tag, node, fn_name, real, ids, out)

    def module_ids(self, node: fx.Node, m: torch.nn.Module, ids: dict[fx.Node, Any], out: Any) -> Any:
        st = self.st
        name = str(node.target)
        h = handler_for(m)
        in_ids = [ids.get(a) for a in node.all_input_nodes]
        if h is not None and h.fixed_extra_inputs and len(node.args) > 1 and not node.kwargs:
            first = ids.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
            extra = [ids.get(a) for a in node.args[1:] if isinstance(a, fx.Node)]
            st.freeze(extra, f"{name} ({type(m).__name__}): its further inputs keep their size")
            in_ids = [first, *(t for t in in_ids if t is not first)]
        if (
            h is not None
            and (len(node.args) == 1 or h.fixed_extra_inputs)
            and not node.kwargs
            and isinstance(out, torch.Tensor)
            and isinstance(in_ids[0], torch.Tensor)
        ):
            res = h.propagate(st, name, m, in_ids[0], out)
            return st.checked(res, out, in_ids, name, key=f"{self.tag}chk:{name}")
        reason = f"{name} ({type(m).__name__}) is not understood by the channel engine"
        st.freeze(in_ids, reason)
        return st.fresh_frozen(out, reason, key=f"{self.tag}{node.name}")


class ModelOpError(Exception):
    """A model's own operation raised while the engine ran it (carried to name the input as the cause)."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def model_error(e: BaseException, shape: Any, *, where: str | None = None) -> Exception:
    """The error to raise when the model itself fails on an input of ``shape``: out of memory says
    so (exit 2: a smaller input or another device), anything else is the model rejecting that
    input (exit 2). Engine-internal failures never come here (they are :class:`InternalError`)."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    at = f" at {where}" if where else ""
    if isinstance(e, torch.OutOfMemoryError) or "out of memory" in msg.lower():
        return UsageError(
            f"ran out of memory running the model on input shape {shape}{at} ({msg}); use a smaller "
            "input or batch, or another device"
        )
    return UsageError(
        f"the model rejects input shape {shape}{at}: {type(e).__name__}: {msg}. Pass the shape the model "
        "expects (--input-shape C,H,W)."
    )


def fetch_attr(root: torch.nn.Module, target: str) -> Any:
    """The attribute at dotted path ``target`` of ``root`` (a parameter, buffer or constant)."""
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
