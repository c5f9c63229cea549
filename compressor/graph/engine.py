"""The channel graph: which channels must be pruned together, what each costs, and slimming.

How it works (see handlers.py for the per-module rules): the model is traced with torch.fx and
run once on an example input. Beside every real tensor the pass carries an int64 *id tensor*
of the same shape naming the channel each element belongs to. Producers (conv, linear) mint
fresh labels; elementwise ops with several tensor operands union the labels they combine
(residual adds, squeeze-excite multiplies, layer scales); shape ops (flatten, view, permute,
cat, chunk, getitem) are applied to the id tensors themselves, so concatenations, splits,
channel shuffles and flatten-into-linear move labels exactly as they move data. Union-find
over the labels gives *classes* (channels that live or die together) and *groups* (classes
tied to the same producers); a plan keeps classes of groups. Anything the engine does not
understand freezes the labels it touches, with the reason, so it is never mis-sliced.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from scipy.sparse.csgraph import connected_components
from torch.fx.node import map_aggregate

from compressor.errors import InternalError, TraceError, UsageError
from compressor.graph.handlers import ModuleRecord, handler_for
from compressor.graph.trace import trace
from compressor.plan import Plan

# --------------------------------------------------------------------------- op tables

_UNARY = {
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_",
    "sigmoid", "sigmoid_", "tanh", "tanh_", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "mish",
    "softplus", "hardtanh", "hardtanh_", "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "abs", "neg", "exp",
    "log", "sqrt", "rsqrt", "square", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to", "type",
    "type_as", "cpu", "cuda", "erf", "sign", "reciprocal", "logsigmoid", "softsign", "sin", "cos", "floor", "ceil",
    "round", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "nan_to_num",
    "requires_grad_", "logical_not", "bernoulli", "bernoulli_", "fill_", "zero_", "pow", "mish_",
    "rrelu", "threshold", "stochastic_depth", "tanhshrink", "hardshrink", "softshrink", "log_sigmoid", "expm1", "log1p",
}  # fmt: skip
_BINARY = {
    "add", "add_", "iadd", "sub", "sub_", "isub", "rsub", "mul", "mul_", "imul", "div", "div_", "truediv",
    "itruediv", "true_divide", "maximum", "minimum", "where", "gt", "lt", "ge", "le", "eq", "ne", "masked_fill",
    "masked_fill_", "addcmul", "lerp", "floordiv", "fmod", "remainder", "mod", "atan2", "hypot",
}  # fmt: skip
_SHAPE = {
    "flatten", "view", "reshape", "permute", "transpose", "squeeze", "unsqueeze", "expand", "expand_as", "t",
    "swapaxes", "swapdims", "movedim", "moveaxis", "unflatten", "view_as", "reshape_as", "repeat", "tile",
}  # fmt: skip
_LITERAL_SIZE_OPS = {"view", "reshape", "expand", "unflatten", "tile"}
_CAT = {"cat", "concat", "concatenate", "stack"}
_SPLIT = {"chunk", "split", "tensor_split", "unbind", "split_with_sizes"}
_REDUCE = {"mean", "sum", "amax", "amin", "prod", "std", "var", "logsumexp", "nansum", "nanmean"}
_SOFTMAX = {"softmax", "log_softmax", "_softmax"}
_SPATIAL_FN = {
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d,
    F.max_pool2d, F.max_pool3d, F.lp_pool1d, F.lp_pool2d, F.interpolate, F.upsample, F.upsample_nearest,
    F.upsample_bilinear, torch.adaptive_avg_pool1d, torch.avg_pool1d, torch.max_pool1d, torch.max_pool2d,
    torch.max_pool3d,
}  # fmt: skip
_NO_FLOPS = (
    _UNARY
    | _BINARY
    | _SHAPE
    | _CAT
    | _SPLIT
    | _REDUCE
    | _SOFTMAX
    | {"getitem", "getattr", "size", "dim", "pad"}
)


def _fn_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", str(t)).lstrip("_") if t is not operator.getitem else "getitem"


# --------------------------------------------------------------------------- results


@dataclass
class Cost:
    """Multiply-accumulates and parameters (``rows``: per module, from :func:`count`)."""

    macs: int
    params: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def ratio(self, other: Cost) -> float:
        return self.macs / other.macs if other.macs else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"macs": self.macs, "params": self.params}


@dataclass
class Group:
    """Channels that are pruned together: ``size`` channels, each a class of coupled labels."""

    name: str
    size: int
    frozen: bool
    reason: str | None
    members: list[tuple[str, str]]  # (module or parameter name, role: out | in | affine | param)
    classes: np.ndarray  # global class ids, in the group's channel order

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "frozen": self.frozen,
            "reason": self.reason,
            "members": [f"{m}:{r}" for m, r in self.members],
        }


@dataclass
class _Space:
    key: tuple[str, str]
    start: int
    size: int


class _Analysis:
    """Mutable state of one labelling pass (see module docstring)."""

    def __init__(self) -> None:
        self.n = 0
        self.spaces: dict[tuple[str, str], _Space] = {}
        self.pairs: list[torch.Tensor] = []  # (2, k) label pairs to union
        self.frozen: list[tuple[torch.Tensor, str]] = []
        self.records: dict[str, ModuleRecord] = {}
        self.recording = True
        self.mask: torch.Tensor | None = None  # keep flag per label (masked pass)
        self.params: dict[str, str] = {}  # get_attr target -> space key name
        self.ln_nodes: set[str] = set()

    # -- labels
    def _space(self, key: tuple[str, str], size: int) -> torch.Tensor:
        s = self.spaces.get(key)
        if s is None:
            if not self.recording:
                raise AssertionError(f"masked pass met a new space {key}")
            s = _Space(key, self.n, size)
            self.spaces[key] = s
            self.n += size
        elif s.size != size:
            raise TraceError(f"{key[1]} is called with {size} channels once and {s.size} another time")
        return torch.arange(s.start, s.start + s.size)

    def module_space(self, name: str, size: int) -> torch.Tensor:
        return self._space(("module", name), size)

    def record(self, name: str, kind: str) -> ModuleRecord:
        if not self.recording:
            return ModuleRecord(name, kind)
        rec = self.records.get(name)
        if rec is None:
            rec = self.records[name] = ModuleRecord(name, kind)
        rec.calls += 1
        return rec

    def merge_inputs(self, rec: ModuleRecord, labels: torch.Tensor) -> None:
        if rec.in_labels is None:
            rec.in_labels = labels
        else:
            self.union(rec.in_labels, labels)

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if self.recording and a.numel():
            self.pairs.append(torch.stack([a.reshape(-1), b.reshape(-1)]))

    def union_rows(self, rows: torch.Tensor) -> None:
        """Union the labels within each row of a 2-D tensor."""
        if rows.shape[1] > 1:
            self.union(rows[:, :1].expand(-1, rows.shape[1] - 1), rows[:, 1:])

    def union_all(self, labels: torch.Tensor) -> None:
        if labels.numel() > 1:
            self.union(labels[:1].expand(labels.numel() - 1), labels[1:])

    def freeze(self, ids: Any, reason: str) -> None:
        if not self.recording:
            return
        for t in _tensors(ids):
            self.frozen.append((t.reshape(-1).unique(), reason))

    def fresh_frozen(self, like: Any, reason: str, key: str | None = None) -> Any:
        """Labels for tensors the engine cannot see into: one label per channel, all frozen."""
        counter = [0]

        def one(t: Any) -> Any:
            if not isinstance(t, torch.Tensor):
                return None
            counter[0] += 1
            dim = 1 if t.dim() >= 2 else max(t.dim() - 1, 0)
            size = t.shape[dim] if t.dim() else 1
            lab = self._space(("node", f"{key or reason}#{counter[0]}"), size)
            self.freeze(lab, reason)
            return self.broadcast_labels(lab, t.shape, dim) if t.dim() else lab[0]

        return map_aggregate(like, one)

    # -- label geometry
    @staticmethod
    def broadcast_labels(lab: torch.Tensor, shape: Sequence[int], dim: int) -> torch.Tensor:
        view = [1] * len(shape)
        view[dim] = -1
        return lab.view(view).expand(*shape)

    def channel_labels(self, ids: torch.Tensor, dim: int, what: str) -> torch.Tensor:
        idx: list[Any] = [0] * ids.dim()
        idx[dim] = slice(None)
        lab = ids[tuple(idx)].clone()
        if not torch.equal(ids, self.broadcast_labels(lab, ids.shape, dim)):
            self.freeze(ids, f"{what}: channels are mixed with other dimensions")
        return lab

    @staticmethod
    def varying_dims(ids: torch.Tensor) -> list[int]:
        return [
            d
            for d in range(ids.dim())
            if ids.shape[d] > 1 and not torch.equal(ids, ids.narrow(d, 0, 1).expand_as(ids))
        ]

    def spatial(self, ids_in: torch.Tensor, out: torch.Tensor, what: str) -> torch.Tensor:
        """Ops that act on each channel separately (pooling, resizing, padding)."""
        if ids_in.dim() < 2 or out.dim() != ids_in.dim() or out.shape[1] != ids_in.shape[1]:
            self.freeze(ids_in, f"{what}: changes the channel dimension")
            return self.fresh_frozen(out, f"{what}: changes the channel dimension")
        lab = self.channel_labels(ids_in, 1, what)
        return self.broadcast_labels(lab, out.shape, 1)

    def along_dim_op(self, ids: torch.Tensor, dim: int, what: str) -> torch.Tensor:
        if dim in self.varying_dims(ids):
            self.freeze(ids, f"{what}: mixes channels (softmax/normalisation across them)")
        return ids

    def check_reshape(
        self, ids_in: torch.Tensor, res: torch.Tensor, literal_dims: set[int], what: str
    ) -> None:
        v = self.varying_dims(res)
        if len(v) > 2:
            self.freeze(res, f"{what}: splits channels into more than two dimensions")
        elif len(v) == 2:
            d0, d1 = v
            idx: list[Any] = [0] * res.dim()
            idx[d0] = slice(None)
            idx[d1] = slice(None)
            blocks = res[tuple(idx)]  # (g, k): channel b of every block must go together
            self.union_rows(blocks.t())
            if d1 in literal_dims:
                self.freeze(res, f"{what}: reshapes channels to a fixed size")
        elif len(v) == 1 and v[0] in literal_dims:
            self.freeze(res, f"{what}: reshapes channels to a fixed size")


def _tensors(x: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    map_aggregate(x, lambda t: out.append(t) if isinstance(t, torch.Tensor) else None)
    return out


# --------------------------------------------------------------------------- the pass


class _Pass:
    """Run a traced graph on real tensors while propagating id tensors beside them."""

    def __init__(self, gm: fx.GraphModule, st: _Analysis, tag: str = "", count_flops: bool = False) -> None:
        self.gm = gm
        self.st = st
        self.tag = tag
        self.modules = dict(gm.named_modules())
        self.count_flops = count_flops
        self.flops = 0
        self.taint: dict[fx.Node, list[tuple[torch.Tensor, int | None]]] = {}
        self.size_nodes: dict[fx.Node, torch.Tensor] = {}

    def _exec(self, fn: Any, *args: Any, count: bool = True, **kwargs: Any) -> Any:
        """Run one model op, counting its FLOPs; id-tensor ops are not counted.

        Convolutions and linear layers are counted analytically by their handlers (the same
        formula as torch.utils.flop_counter), and ops that cannot multiply matrices are not
        counted at all, so the counter's per-op cost is paid only where it is needed.
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
                r = _apply_mask(r, i, self.st.mask)
            real[node] = r
            ids[node] = i
            for dead in users_done.get(node, ()):
                real.pop(dead, None)
                ids.pop(dead, None)
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
        name = _fn_name(node)
        if not _tensors(out):
            src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
            x_ids = ids.get(src) if src is not None else None
            if isinstance(x_ids, torch.Tensor) and (
                name == "size" or (name == "getattr" and node.args[1] == "shape")
            ):
                varying = self.st.varying_dims(x_ids)
                dim = node.args[1] if name == "size" and len(node.args) > 1 else node.kwargs.get("dim")
                if isinstance(dim, int):
                    taint = [(x_ids, None)] if dim % x_ids.dim() in varying else []
                else:
                    taint = [(x_ids, None)] if varying else []
                    self.size_nodes[node] = x_ids
            elif name == "getitem" and src in self.size_nodes and isinstance(node.args[1], int):
                x_ids = self.size_nodes[src]
                taint = [(x_ids, None)] if node.args[1] % x_ids.dim() in self.st.varying_dims(x_ids) else []
            if taint:
                self.taint[node] = taint
            return
        if not taint:
            return
        data = ids.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        for src, _ in taint:
            same = (
                name in _SHAPE
                and isinstance(data, torch.Tensor)
                and torch.equal(torch.unique(src), torch.unique(data))
            )
            if not same:
                self.st.freeze(src, f"{node.name}: these channels' count shapes another tensor")

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
            v = _fetch_attr(self.gm, str(node.target))
            if not isinstance(v, torch.Tensor):
                return v, None
            st.params[str(node.target)] = str(node.target)
            lab = st._space(("param", str(node.target)), max(v.numel(), 1))
            return v, lab.view(v.shape) if v.dim() else lab[0]
        args = fx.node.map_arg(node.args, lambda n: real[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: real[n])
        if node.op == "call_module":
            m = self.modules[str(node.target)]
            if st.mask is not None and isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
                out = _masked_layer_norm(args[0], ids[node.args[0]], st.mask, m.weight, m.bias, m.eps)
            else:
                h = handler_for(m)
                out = self._exec(m, *args, count=h is None, **kwargs)
            return out, self.module_ids(node, m, ids, out)
        fn_name = _fn_name(node)
        if node.op == "call_function" and node.target is F.layer_norm and st.mask is not None:
            w = args[2] if len(args) > 2 else kwargs.get("weight")
            b = args[3] if len(args) > 3 else kwargs.get("bias")
            eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
            out = _masked_layer_norm(args[0], ids[node.args[0]], st.mask, w, b, eps)
        elif node.op == "call_method":
            self_obj, *rest = args
            out = self._exec(
                getattr(self_obj, str(node.target)), *rest, count=fn_name not in _NO_FLOPS, **kwargs
            )
        else:
            out = self._exec(
                node.target,
                *args,
                count=fn_name not in _NO_FLOPS and node.target not in _SPATIAL_FN,
                **kwargs,
            )
        return out, self.function_ids(node, fn_name, real, ids, out)

    def module_ids(self, node: fx.Node, m: nn.Module, ids: dict[fx.Node, Any], out: Any) -> Any:
        st = self.st
        name = str(node.target)
        h = handler_for(m)
        in_ids = [ids.get(a) for a in node.all_input_nodes]
        if (
            h is not None
            and len(node.args) == 1
            and not node.kwargs
            and isinstance(out, torch.Tensor)
            and isinstance(in_ids[0], torch.Tensor)
        ):
            res = h.propagate(st, name, m, in_ids[0], out)
            return self._checked(res, out, in_ids, name)
        reason = f"{name} ({type(m).__name__}) is not understood by the channel engine"
        st.freeze(in_ids, reason)
        return st.fresh_frozen(out, reason, key=f"{self.tag}{node.name}")

    def _checked(self, res: Any, out: Any, in_ids: Any, what: str) -> Any:
        ok = (
            isinstance(res, torch.Tensor)
            and isinstance(out, torch.Tensor)
            and tuple(res.shape) == tuple(out.shape)
        )
        if (
            not ok
            and isinstance(out, (tuple, list))
            and isinstance(res, (tuple, list))
            and len(res) == len(out)
        ):
            ok = all(
                (not isinstance(o, torch.Tensor)) or (isinstance(r, torch.Tensor) and r.shape == o.shape)
                for r, o in zip(res, out)
            )
        if ok:
            return res
        reason = f"{what}: the channel engine could not follow its output"
        self.st.freeze(in_ids, reason)
        return self.st.fresh_frozen(out, reason, key=f"{self.tag}chk:{what}")

    def function_ids(
        self, node: fx.Node, name: str, real: dict[fx.Node, Any], ids: dict[fx.Node, Any], out: Any
    ) -> Any:
        st = self.st
        in_ids = [ids.get(a) for a in node.all_input_nodes]
        tensor_in = [t for t in in_ids if isinstance(t, torch.Tensor)]
        has_tuple_in = any(isinstance(t, (tuple, list)) for t in in_ids)
        if not _tensors(out):
            if name == "getitem" and isinstance(ids.get(node.args[0]), (tuple, list)):
                return None
            return None
        if not tensor_in and not has_tuple_in:
            # a tensor made from nothing traced (torch.zeros(...), arange): a constant
            return st.fresh_frozen(
                out, f"{node.name}: tensor created inside the model", key=f"{self.tag}{node.name}"
            )
        what = f"{node.name} ({name})"

        def mixed(a: Any) -> Any:
            return fx.node.map_arg(
                a, lambda n: ids[n] if isinstance(ids.get(n), (torch.Tensor, tuple, list)) else real[n]
            )

        x_ids = ids.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None

        if name == "getitem":
            if isinstance(x_ids, (tuple, list)):
                return x_ids[node.args[1]]  # type: ignore[index]
            if isinstance(x_ids, torch.Tensor):
                self._check_index(x_ids, node.args[1], what)
                res = x_ids[fx.node.map_arg(node.args[1], lambda n: real[n])]  # the index is data, not labels
                return self._checked(res, out, in_ids, what)
        if node.target is F.layer_norm:
            return self._layer_norm(node, ids, out, what)
        if name in _UNARY or (name in _BINARY and len(tensor_in) == 1):
            if isinstance(x_ids, torch.Tensor) and isinstance(out, torch.Tensor):
                if x_ids.shape == out.shape:
                    return x_ids
                return self._binary(tensor_in, out, what)
        if name in _BINARY and isinstance(out, torch.Tensor):
            return self._binary(tensor_in, out, what)
        if node.target in _SPATIAL_FN and isinstance(x_ids, torch.Tensor) and isinstance(out, torch.Tensor):
            return st.spatial(x_ids, out, what)
        if name == "pad" and isinstance(x_ids, torch.Tensor):
            pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
            if isinstance(pad, (tuple, list)) and len(pad) <= 2 * (x_ids.dim() - 2):
                return st.spatial(x_ids, out, what)
        if name in _SOFTMAX and isinstance(x_ids, torch.Tensor):
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            if isinstance(dim, int):
                return st.along_dim_op(x_ids, dim % x_ids.dim(), what)
        if name in _REDUCE and isinstance(x_ids, torch.Tensor) and isinstance(out, torch.Tensor):
            return self._reduce(node, x_ids, out, what)
        if name in _SHAPE or name in _CAT or name in _SPLIT:
            if name in _SPLIT and isinstance(x_ids, torch.Tensor):
                self._check_split(node, name, x_ids, what)
            res = self._apply(node, mixed)
            if (
                name in _LITERAL_SIZE_OPS
                and isinstance(x_ids, torch.Tensor)
                and isinstance(res, torch.Tensor)
            ):
                st.check_reshape(x_ids, res, _literal_dims(node, name, res.dim()), what)
            return self._checked(res, out, in_ids, what)
        reason = f"{what} is not understood by the channel engine"
        st.freeze(in_ids, reason)
        return st.fresh_frozen(out, reason, key=f"{self.tag}{node.name}")

    def _apply(self, node: fx.Node, mixed: Any) -> Any:
        a = mixed(node.args)
        k = mixed(node.kwargs)
        if node.op == "call_method":
            # id tensors are often expanded views: reshape where the model views
            meth = {"view": "reshape", "view_as": "reshape_as"}.get(str(node.target), str(node.target))
            return getattr(a[0], meth)(*a[1:], **k)
        return node.target(*a, **k)  # type: ignore[operator]

    def _binary(self, operands: list[torch.Tensor], out: torch.Tensor, what: str) -> torch.Tensor:
        shape = out.shape
        expanded = []
        for t in operands:
            try:
                e = t.expand(shape) if t.dim() <= len(shape) else None
            except RuntimeError:
                e = None
            if e is None:
                self.st.freeze(operands, f"{what}: broadcasting the engine cannot follow")
                return self.st.fresh_frozen(out, f"{what}: broadcasting the engine cannot follow")
            expanded.append(e)
        live = [e for e in expanded if self.st.varying_dims(e)]
        if not live:
            return expanded[0]
        ref = live[0]
        ref_var = set(self.st.varying_dims(ref))
        for e in live[1:]:
            keep_dims = ref_var | set(self.st.varying_dims(e))
            idx = tuple(slice(None) if d in keep_dims else slice(0, 1) for d in range(ref.dim()))
            a, b = ref[idx].reshape(-1), e[idx].reshape(-1)
            code = torch.unique(a * self.st.n + b)  # distinct (a, b) pairs
            self.st.union(code // self.st.n, code % self.st.n)
        return ref

    def _reduce(self, node: fx.Node, x_ids: torch.Tensor, out: torch.Tensor, what: str) -> Any:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        nd = x_ids.dim()
        dims = list(range(nd)) if dim is None else [d % nd for d in ([dim] if isinstance(dim, int) else dim)]
        if set(dims) & set(self.st.varying_dims(x_ids)):
            self.st.freeze(x_ids, f"{what}: reduces over channels")
            return self.st.fresh_frozen(out, f"{what}: reduces over channels", key=f"{self.tag}{node.name}")
        res = x_ids
        for d in sorted(dims, reverse=True):
            res = res.narrow(d, 0, 1) if keep else res.select(d, 0)
        return self._checked(res, out, [x_ids], what)

    def _check_index(self, x_ids: torch.Tensor, index: Any, what: str) -> None:
        idx = index if isinstance(index, tuple) else (index,)
        varying = set(self.st.varying_dims(x_ids))
        n_consumed = sum(1 for i in idx if i is not None and i is not Ellipsis)
        d = 0
        for i in idx:
            if i is Ellipsis:
                d += x_ids.dim() - n_consumed
                continue
            if i is None:
                continue
            full = isinstance(i, slice) and i == slice(None, None, None)
            if not full and d in varying:
                self.st.freeze(x_ids, f"{what}: indexes or slices channels")
                return
            d += 1

    def _check_split(self, node: fx.Node, name: str, x_ids: torch.Tensor, what: str) -> None:
        if name == "unbind":
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        else:
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if not isinstance(dim, int):
            self.st.freeze(x_ids, f"{what}: split along a computed dimension")
            return
        dim %= x_ids.dim()
        if dim not in self.st.varying_dims(x_ids):
            return
        n = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks")
        c = x_ids.shape[dim]
        if name == "chunk" and isinstance(n, int) and c % n == 0:
            blocks = x_ids.movedim(dim, 0).reshape(n, c // n, -1)[:, :, 0]
            self.st.union_rows(blocks.t())  # equal chunks stay equal: channel b of each goes together
            return
        self.st.freeze(x_ids, f"{what}: splits channels at fixed sizes")

    def _layer_norm(self, node: fx.Node, ids: dict[fx.Node, Any], out: Any, what: str) -> Any:
        x_ids = ids[node.args[0]]
        shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
        if not isinstance(x_ids, torch.Tensor) or not isinstance(shape, (tuple, list)) or len(shape) != 1:
            self.st.freeze([x_ids], f"{what}: layer norm over several dimensions")
            return self.st.fresh_frozen(out, f"{what}", key=f"{self.tag}{node.name}")
        lab = self.st.channel_labels(x_ids, x_ids.dim() - 1, what)
        for arg in list(node.args[2:4]) + [node.kwargs.get("weight"), node.kwargs.get("bias")]:
            if isinstance(arg, fx.Node) and isinstance(ids.get(arg), torch.Tensor):
                self.st.union(lab, ids[arg].reshape(-1))
        self.st.ln_nodes.add(node.name)
        return x_ids


def _literal_dims(node: fx.Node, name: str, ndim: int) -> set[int]:
    """Output dims whose size is a literal int (not -1, not computed): they cannot shrink."""
    if name == "unflatten":
        return set(range(ndim))
    if name == "tile":
        return set()
    sizes: Any = node.args[1:] if node.op == "call_method" else node.args[1:]
    if node.kwargs.get("shape") is not None:
        sizes = (node.kwargs["shape"],)
    if node.kwargs.get("size") is not None:
        sizes = (node.kwargs["size"],)
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
        sizes = sizes[0]
    return {d for d, s in enumerate(sizes) if isinstance(s, int) and s not in (-1,) and d < ndim}


def _fetch_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _apply_mask(r: Any, i: Any, mask: torch.Tensor) -> Any:
    if (
        isinstance(r, torch.Tensor)
        and isinstance(i, torch.Tensor)
        and r.is_floating_point()
        and r.shape == i.shape
    ):
        return r * mask[i].to(r.dtype)
    if isinstance(r, (tuple, list)) and isinstance(i, (tuple, list)) and len(r) == len(i):
        return (
            type(r)(_apply_mask(a, b, mask) for a, b in zip(r, i))
            if not hasattr(r, "_fields")
            else type(r)(*(_apply_mask(a, b, mask) for a, b in zip(r, i)))
        )
    return r


def _masked_layer_norm(
    x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, weight: Any, bias: Any, eps: float = 1e-5
) -> torch.Tensor:
    m = mask[ids].to(x.dtype)
    cnt = m.sum(-1, keepdim=True).clamp_min(1)
    mean = (x * m).sum(-1, keepdim=True) / cnt
    var = (((x - mean) * m) ** 2).sum(-1, keepdim=True) / cnt
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y * m


# --------------------------------------------------------------------------- the graph


class ChannelGraph:
    """Coupled-channel groups of a model, with an analytic cost model and plan helpers.

    >>> g = build_graph(torchvision.models.resnet18(), input_shape=(1, 3, 64, 64))
    >>> plan = g.plan_from_counts(g.counts_for_flops(0.5), method="l1-uniform")
    >>> small = slim(model, plan, graph=g)
    """

    def __init__(
        self,
        model: nn.Module,
        gm: fx.GraphModule,
        st: _Analysis,
        input_shape: tuple[int, ...],
        total_macs: int,
    ) -> None:
        self.model = model
        self.gm = gm
        self.input_shape = tuple(input_shape)
        self._st = st
        self.records = st.records
        n = st.n
        self.n_labels = n
        pairs = torch.cat(st.pairs, dim=1).numpy() if st.pairs else np.zeros((2, 0), dtype=np.int64)
        adj = sp.coo_matrix((np.ones(pairs.shape[1], dtype=np.int8), (pairs[0], pairs[1])), shape=(n, n))
        n_cls, cls = connected_components(adj, directed=False)
        self.label_class = cls.astype(np.int64)
        self.n_classes = int(n_cls)
        # spaces tie classes into groups
        label_space = np.empty(n, dtype=np.int64)
        space_list = sorted(st.spaces.values(), key=lambda s: s.start)
        for si, s in enumerate(space_list):
            label_space[s.start : s.start + s.size] = si
        space_first = np.array([s.start for s in space_list], dtype=np.int64)
        rows = np.concatenate([pairs[0], np.arange(n)])
        cols = np.concatenate([pairs[1], space_first[label_space]])
        adj2 = sp.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
        _, grp = connected_components(adj2, directed=False)
        frozen_label = np.zeros(n, dtype=bool)
        label_reason: dict[int, str] = {}
        for labs, reason in st.frozen:
            ln = labs.numpy()
            frozen_label[ln] = True
            for g in np.unique(grp[ln]):
                label_reason.setdefault(int(g), reason)
        # producers and members
        producer_spaces: dict[int, str] = {}
        members: dict[int, list[tuple[str, str]]] = {}
        for rec in st.records.values():
            if rec.out_labels is not None and len(rec.out_labels):
                g = int(grp[int(rec.out_labels[0])])
                producer_spaces.setdefault(g, rec.name)
                for gg in np.unique(grp[rec.out_labels.numpy()]):
                    members.setdefault(int(gg), []).append((rec.name, "out"))
            if rec.in_labels is not None and len(rec.in_labels):
                for gg in np.unique(grp[rec.in_labels.numpy()]):
                    members.setdefault(int(gg), []).append((rec.name, "in"))
            if rec.labels is not None and len(rec.labels):
                for gg in np.unique(grp[rec.labels.numpy()]):
                    members.setdefault(int(gg), []).append((rec.name, "affine"))
        for key, s in st.spaces.items():
            if key[0] == "param":
                members.setdefault(int(grp[s.start]), []).append((key[1], "param"))
        class_frozen = np.zeros(self.n_classes, dtype=bool)
        np.logical_or.at(class_frozen, cls, frozen_label)
        # classes of each group, ordered by their smallest label
        first_label = np.full(self.n_classes, n, dtype=np.int64)
        np.minimum.at(first_label, cls, np.arange(n))
        class_group = grp[first_label]
        self.groups: list[Group] = []
        self.class_group_index = np.full(self.n_classes, -1, dtype=np.int64)
        self.class_pos = np.zeros(self.n_classes, dtype=np.int64)
        by_group: dict[int, list[int]] = {}
        for c in np.argsort(first_label, kind="stable"):
            by_group.setdefault(int(class_group[c]), []).append(int(c))
        group_order = sorted(producer_spaces, key=lambda g: min(first_label[by_group[g]]))
        used_names: set[str] = set()
        for g in group_order:
            classes = np.array(by_group[g], dtype=np.int64)
            frozen = bool(class_frozen[classes].any())
            reason = label_reason.get(g) if frozen else None
            name = producer_spaces[g]
            if name in used_names:
                name = f"{name}#{g}"
            used_names.add(name)
            self.class_group_index[classes] = len(self.groups)
            self.class_pos[classes] = np.arange(len(classes))
            self.groups.append(
                Group(name, len(classes), frozen, reason, _dedupe(members.get(g, [])), classes)
            )
        self._by_name = {g.name: g for g in self.groups}
        # producers that some plans could empty: those not present in every class of their group
        self._at_risk: list[np.ndarray] = []
        for rec in st.records.values():
            if rec.out_labels is None or not len(rec.out_labels):
                continue
            pcls = np.unique(self.label_class[rec.out_labels.numpy()])
            gi = self.class_group_index[pcls[0]]
            if gi >= 0 and len(pcls) < self.groups[gi].size:
                self._at_risk.append(pcls)
        self._build_cost_model(total_macs)
        self._scores: np.ndarray | None = None

    # ---------------------------------------------------------------- groups
    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if not g.frozen and g.size > 1]

    @property
    def frozen(self) -> list[Group]:
        return [g for g in self.groups if g.frozen]

    def group(self, name: str) -> Group:
        try:
            return self._by_name[name]
        except KeyError:
            raise UsageError(
                f"the model has no channel group {name!r}; groups: {', '.join(list(self._by_name)[:12])} ..."
            ) from None

    def summary(self) -> list[dict[str, Any]]:
        return [g.to_dict() for g in self.groups]

    # ---------------------------------------------------------------- importance
    def _producer_rows(self) -> Iterable[tuple[ModuleRecord, torch.Tensor]]:
        """(record, filters as rows (out_channels, D)) of every producer."""
        modules = dict(self.model.named_modules())
        for rec in self.records.values():
            if rec.out_labels is None:
                continue
            m = modules[rec.name]
            w = m.weight.detach()
            if rec.kind == "convT":
                g = m.groups
                w = w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:]).transpose(1, 2)
                w = w.reshape(m.out_channels, -1)
            else:
                w = w.reshape(w.shape[0], -1)
            yield rec, w

    def _class_scores(self) -> np.ndarray:
        if self._scores is None:
            score = np.zeros(self.n_classes, dtype=np.float64)
            for rec, w in self._producer_rows():
                assert rec.out_labels is not None
                np.add.at(
                    score, self.label_class[rec.out_labels.numpy()], w.abs().sum(1).double().cpu().numpy()
                )
            self._scores = score
        return self._scores

    def importance(self) -> dict[str, np.ndarray]:
        """L1 norm of each channel's filters, summed over a coupled group's producers."""
        score = self._class_scores()
        return {g.name: score[g.classes] for g in self.prunable}

    def channel_vectors(self, name: str) -> torch.Tensor:
        """(size, D): per channel of group ``name``, its producers' filters concatenated (EPruner)."""
        g = self.group(name)
        parts = []
        for rec, w in self._producer_rows():
            assert rec.out_labels is not None
            cls = self.label_class[rec.out_labels.numpy()]
            sel = self.class_group_index[cls] == self._index_of(g)
            if not sel.any():
                continue
            pos = self.class_pos[cls[sel]]
            rows = w[torch.from_numpy(np.nonzero(sel)[0])].double()
            counts = np.bincount(pos, minlength=g.size)
            if (counts == counts[0]).all() and counts[0] > 0:
                order = np.argsort(pos, kind="stable")
                parts.append(rows[torch.from_numpy(order)].reshape(g.size, -1))
            else:
                acc = torch.zeros(g.size, rows.shape[1], dtype=torch.float64)
                acc.index_add_(0, torch.from_numpy(pos), rows)
                parts.append(acc)
        if not parts:
            raise UsageError(f"group {name!r} has no producing layer with weights")
        return torch.cat(parts, dim=1).float()

    def _index_of(self, g: Group) -> int:
        return self.groups.index(g)

    # ---------------------------------------------------------------- plans
    def keep_classes(self, plan: Plan | dict[str, Sequence[int]]) -> np.ndarray:
        keep = np.ones(self.n_classes, dtype=bool)
        groups = plan.groups if isinstance(plan, Plan) else plan
        if isinstance(plan, Plan):
            for name, size in plan.group_sizes.items():
                if name in self._by_name and self._by_name[name].size != size:
                    raise UsageError(
                        f"plan group {name!r} has {size} channels but the model's has {self._by_name[name].size}: "
                        "the plan was made for another model"
                    )
        for name, kept in groups.items():
            g = self.group(name)
            if g.frozen:
                raise UsageError(f"plan prunes group {name!r}, which is frozen ({g.reason})")
            idx = np.asarray(sorted(set(int(i) for i in kept)), dtype=np.int64)
            if len(idx) == 0:
                raise UsageError(f"plan keeps no channel of group {name!r}; keep at least one")
            if idx.min() < 0 or idx.max() >= g.size:
                raise UsageError(
                    f"plan keeps channel index out of range for group {name!r}: indices must be in 0..{g.size - 1}"
                )
            keep[g.classes] = False
            keep[g.classes[idx]] = True
        return self._keep_producers(keep)

    def _keep_producers(self, keep: np.ndarray) -> np.ndarray:
        """A plan never empties a layer: a producer that would lose every output channel (a
        concatenation feeding a depthwise conv can put all kept channels on one side) keeps its
        most important one."""
        if self._at_risk:
            score = self._class_scores()
            for pcls in self._at_risk:
                if not keep[pcls].any():
                    keep[pcls[np.argmax(score[pcls])]] = True
        return keep

    def keep_labels(self, plan: Plan | dict[str, Sequence[int]]) -> torch.Tensor:
        return torch.from_numpy(self.keep_classes(plan)[self.label_class])

    def plan_from_counts(
        self,
        counts: dict[str, int],
        *,
        method: str,
        seed: int | None = None,
        importance: dict[str, np.ndarray] | None = None,
        flops_target: float | None = None,
        **info: Any,
    ) -> Plan:
        """Keep the ``counts[name]`` most important channels of each listed group."""
        imp = importance if importance is not None else self.importance()
        groups: dict[str, list[int]] = {}
        sizes: dict[str, int] = {}
        for name, k in counts.items():
            g = self.group(name)
            k = int(min(max(k, 1), g.size))
            if k == g.size:
                continue
            order = np.argsort(-np.asarray(imp[name]), kind="stable")
            groups[name] = sorted(int(i) for i in order[:k])
            sizes[name] = g.size
        return Plan(
            method=method,
            groups=groups,
            group_sizes=sizes,
            seed=seed,
            input_shape=list(self.input_shape),
            flops_target=flops_target,
            info=info,
        )

    def plan_from_ratios(self, ratios: dict[str, float], **kw: Any) -> Plan:
        """Remove ``floor(r * n)`` channels of each group (never all of them)."""
        counts = {n: self.group(n).size - math.floor(r * self.group(n).size) for n, r in ratios.items()}
        return self.plan_from_counts(counts, **kw)

    # ---------------------------------------------------------------- cost model
    def _build_cost_model(self, total_macs: int) -> None:
        modules = dict(self.model.named_modules())
        K = self.n_classes
        rows_in, rows_out, macs, w_numel, b_numel, n_in, n_out, grouped = [], [], [], [], [], [], [], []
        aff_rows, aff_per = [], []
        counted_params = 0
        for rec in self.records.values():
            m = modules[rec.name]
            if rec.out_labels is not None and rec.in_labels is not None:
                rows_in.append(self.label_class[rec.in_labels.numpy()])
                rows_out.append(self.label_class[rec.out_labels.numpy()])
                macs.append(rec.macs)
                w_numel.append(m.weight.numel())
                b_numel.append(m.bias.numel() if getattr(m, "bias", None) is not None else 0)
                n_in.append(len(rec.in_labels))
                n_out.append(len(rec.out_labels))
                grouped.append(getattr(m, "groups", 1) > 1)
                counted_params += w_numel[-1] + b_numel[-1]
            elif rec.labels is not None:
                per = sum(p.numel() for p in m.parameters(recurse=False)) / max(len(rec.labels), 1)
                aff_rows.append(self.label_class[rec.labels.numpy()])
                aff_per.append(per)
                counted_params += sum(p.numel() for p in m.parameters(recurse=False))
        param_rows = []
        for key, s in self._st.spaces.items():
            if key[0] == "param":
                t = _fetch_attr(self.model, key[1])
                if isinstance(t, nn.Parameter):
                    param_rows.append(self.label_class[s.start : s.start + s.size])
                    counted_params += t.numel()

        def mat(rows: list[np.ndarray]) -> sp.csr_matrix:
            if not rows:
                return sp.csr_matrix((0, K))
            r = np.concatenate([np.full(len(x), i) for i, x in enumerate(rows)])
            c = np.concatenate(rows)
            return sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(len(rows), K))

        self._A_in, self._A_out = mat(rows_in), mat(rows_out)
        self._A_aff, self._A_par = mat(aff_rows), mat(param_rows)
        self._macs = np.array(macs, dtype=np.float64)
        self._w = np.array(w_numel, dtype=np.float64)
        self._b = np.array(b_numel, dtype=np.float64)
        self._n_in = np.maximum(np.array(n_in, dtype=np.float64), 1)
        self._n_out = np.maximum(np.array(n_out, dtype=np.float64), 1)
        self._grouped = np.array(grouped, dtype=bool)
        self._aff_per = np.array(aff_per, dtype=np.float64)
        total_params = sum(p.numel() for p in self.model.parameters())
        self._const_macs = float(total_macs) - float(self._macs.sum())
        self._const_params = float(total_params - counted_params)
        self.full = Cost(int(total_macs), int(total_params))

    def cost(self, plan: Plan | dict[str, Sequence[int]] | None = None) -> Cost:
        """Analytic MACs and parameters of the model slimmed by ``plan``."""
        keep = np.ones(self.n_classes, dtype=bool) if plan is None else self.keep_classes(plan)
        return self._cost_of_keep(keep)

    def _cost_of_keep(self, keep: np.ndarray) -> Cost:
        k = keep.astype(np.float64)
        fin = (self._A_in @ k) / self._n_in
        fout = (self._A_out @ k) / self._n_out
        f = np.where(self._grouped, fout, fout * fin)
        macs = self._const_macs + float((self._macs * f).sum())
        params = self._const_params + float((self._w * f).sum() + (self._b * fout).sum())
        params += float((self._aff_per * (self._A_aff @ k)).sum()) + float((self._A_par @ k).sum())
        return Cost(int(round(macs)), int(round(params)))

    def cost_of_counts(self, counts: dict[str, int]) -> Cost:
        """Cost when each listed group keeps its ``counts[name]`` top-L1 channels (fast)."""
        return self._cost_of_keep(self._keep_from_counts(counts))

    def _keep_from_counts(self, counts: dict[str, int]) -> np.ndarray:
        keep = np.ones(self.n_classes, dtype=bool)
        rank = self._ranks()
        for name, k in counts.items():
            g = self._by_name[name]
            keep[g.classes] = rank[name] < max(int(k), 1)
        return self._keep_producers(keep)

    def _ranks(self) -> dict[str, np.ndarray]:
        if not hasattr(self, "_rank_cache"):
            self._rank_cache = {}
            for name, v in self.importance().items():
                order = np.argsort(-v, kind="stable")
                r = np.empty(len(v), dtype=np.int64)
                r[order] = np.arange(len(v))
                self._rank_cache[name] = r
        return self._rank_cache

    def counts_for_flops(
        self,
        fraction: float,
        shape: dict[str, float] | None = None,
        *,
        multiple: int = 1,
        max_ratio: float = 0.95,
    ) -> dict[str, int]:
        """Kept channels per prunable group so MACs ~= ``fraction`` of the full model.

        Pruning ratios ``s * shape[g]`` (capped at ``max_ratio``) share one scale ``s`` found by
        bisection; ``shape=None`` prunes every group by the same ratio. Kept widths are rounded
        to ``multiple`` channels where a group is large enough. When the target cannot be
        reached the most-pruned counts are returned (the caller reports the achieved ratio).
        """
        names = [g.name for g in self.prunable]
        if shape is not None:
            names = [n for n in names if n in shape]
        sizes = np.array([self._by_name[n].size for n in names], dtype=np.float64)
        rel = np.array([1.0 if shape is None else float(shape[n]) for n in names], dtype=np.float64)
        target = fraction * self.full.macs

        def counts_at(s: float) -> dict[str, int]:
            r = np.minimum(s * rel, max_ratio)
            kept = sizes - np.floor(r * sizes)
            if multiple > 1:
                kept = np.where(
                    sizes >= 2 * multiple, np.maximum(np.round(kept / multiple) * multiple, multiple), kept
                )
            kept = np.clip(kept, 1, sizes)
            return {n: int(k) for n, k in zip(names, kept)}

        if not names or rel.max() <= 0:
            return {n: int(s) for n, s in zip(names, sizes)}
        hi = max_ratio / rel[rel > 0].min()
        if self.cost_of_counts(counts_at(hi)).macs > target:
            return counts_at(hi)
        lo = 0.0
        for _ in range(50):
            mid = (lo + hi) / 2
            if self.cost_of_counts(counts_at(mid)).macs > target:
                lo = mid
            else:
                hi = mid
        a, b = counts_at(lo), counts_at(hi)
        ca, cb = self.cost_of_counts(a).macs, self.cost_of_counts(b).macs
        best = a if abs(ca - target) < abs(cb - target) else b
        step = {n: (multiple if multiple > 1 and z >= 2 * multiple else 1) for n, z in zip(names, sizes)}
        return self._refine(best, target, sizes={n: int(z) for n, z in zip(names, sizes)}, step=step)

    def _refine(
        self,
        counts: dict[str, int],
        target: float,
        *,
        sizes: dict[str, int],
        step: dict[str, int],
        steps: int = 200,
    ) -> dict[str, int]:
        """Nudge single groups by one step (a channel, or the rounding multiple) while that brings
        MACs closer to ``target``.

        A shared ratio moves in coarse steps on small networks; this closes the gap while
        keeping the shape (the least-pruned group loses, the most-pruned gains, first).
        """
        counts = dict(counts)
        cur = self.cost_of_counts(counts).macs
        for _ in range(steps):
            if abs(cur - target) <= 0.002 * target:
                break
            over = cur > target
            order = sorted(counts, key=lambda n: counts[n] / sizes[n], reverse=over)
            moved = False
            for n in order:
                k = counts[n] + (-step[n] if over else step[n])
                if not step[n] <= k <= sizes[n]:
                    continue
                trial = {**counts, n: k}
                c = self.cost_of_counts(trial).macs
                if abs(c - target) < abs(cur - target):
                    counts, cur, moved = trial, c, True
                    break
            if not moved:
                break
        return counts

    # ---------------------------------------------------------------- masks
    @torch.no_grad()
    def masked_forward(self, plan: Plan | dict[str, Sequence[int]], *inputs: torch.Tensor) -> Any:
        """The original model with every pruned channel forced to zero wherever it flows."""
        st = self._st
        st.recording = False
        st.mask = self.keep_labels(plan)
        try:
            was = self.model.training
            self.model.eval()
            out = _Pass(self.gm, st).run(*inputs)
            self.model.train(was)
        finally:
            st.recording = True
            st.mask = None
        return out

    @torch.no_grad()
    def verify(
        self,
        slim_model: nn.Module,
        plan: Plan | dict[str, Sequence[int]],
        inputs: Sequence[torch.Tensor] | None = None,
    ) -> float:
        """The max error relative to the output scale (``rel_err``) between the masked original
        and ``slim_model`` on random inputs: ``max |masked - slim| / max |masked|`` (the larger
        over inputs and outputs), so it means the same for a trained net and for an untrained one
        whose outputs are tiny or huge (float32 agreement is ~1e-6). Already divided by the
        scale: compare it with a relative tolerance, never divide it again.
        """
        if inputs is None:
            gen = torch.Generator().manual_seed(0)
            shape = (2, *self.input_shape[1:])
            inputs = [torch.randn(shape, generator=gen) for _ in range(2)]
        was = slim_model.training
        slim_model.eval()
        worst = 0.0
        for x in inputs:
            ref = _tensors(self.masked_forward(plan, x))
            got = _tensors(slim_model(x))
            if len(ref) != len(got):
                return float("inf")
            for a, b in zip(ref, got):
                if a.shape != b.shape:
                    return float("inf")
                if a.numel():
                    scale = float(a.float().abs().max())
                    diff = float((a.float() - b.float()).abs().max())
                    worst = max(worst, diff / scale if scale > 0 else diff)
        slim_model.train(was)
        return worst


def _dedupe(xs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for x in xs:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


# --------------------------------------------------------------------------- public functions


def _example(
    model: nn.Module, example_input: torch.Tensor | None, input_shape: Sequence[int] | None
) -> torch.Tensor:
    if example_input is not None:
        return example_input
    if input_shape is None:
        raise UsageError("build_graph needs an example input or an input shape such as (1, 3, 224, 224)")
    p = next(model.parameters(), None)
    device = p.device if p is not None and p.device.type != "meta" else torch.device("cpu")
    return torch.randn(tuple(int(s) for s in input_shape), device=device)


@torch.no_grad()
def build_graph(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    leaf_modules: Iterable[type[nn.Module]] = (),
) -> ChannelGraph:
    """Trace ``model`` and find its coupled channel groups (see :class:`ChannelGraph`)."""
    x = _example(model, example_input, input_shape)
    x = x[:1]
    leaf_modules = tuple(leaf_modules)
    was = model.training
    model.eval()
    try:
        gm = trace(model, leaf_modules)
        st = _Analysis()
        p = _Pass(gm, st, count_flops=True)
        p.run(x)
        total_macs = int(p.flops // 2) + sum(rec.macs for rec in st.records.values())
        # modules used only in training (auxiliary heads) are absent from the eval graph:
        # trace the training graph too so their input channels are known.
        used = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
        dead = [
            n
            for n, m in model.named_modules()
            if handler_for(m) is not None
            and next(m.parameters(recurse=False), None) is not None
            and n not in used
            and not any(n.startswith(u + ".") for u in used)
        ]
        if dead:
            model.train()
            try:
                gm_train = trace(model, leaf_modules)
            finally:
                model.eval()
            if any(n.op == "call_module" and str(n.target) in dead for n in gm_train.graph.nodes):
                macs = {name: rec.macs for name, rec in st.records.items()}
                xt = x
                for attempt in range(3):  # auxiliary heads may need a larger input than the eval graph
                    try:
                        _Pass(gm_train, st, tag=f"train{attempt}:").run(xt)
                        break
                    except (TraceError, UsageError):
                        if attempt == 2:
                            raise
                        xt = torch.randn(*xt.shape[:2], *(2 * s for s in xt.shape[2:]), device=xt.device)
                for name, rec in st.records.items():  # the cost model counts the eval graph only
                    rec.macs = macs.get(name, 0)
    finally:
        model.train(was)
    return ChannelGraph(model, gm, st, tuple(x.shape), total_macs)


def _sync_attrs(model: nn.Module) -> None:
    """Structural attributes of traced-through modules follow their (sliced) parameters."""
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.LayerNorm) and isinstance(w, torch.Tensor):
            m.normalized_shape = tuple(w.shape)
        elif isinstance(m, nn.modules.batchnorm._NormBase) and isinstance(w, torch.Tensor):
            m.num_features = w.shape[0]


@torch.no_grad()
def slim(
    model: nn.Module,
    plan: Plan | dict[str, Sequence[int]],
    *,
    graph: ChannelGraph | None = None,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """A new, physically smaller copy of ``model`` keeping the channels ``plan`` keeps."""
    if graph is None:
        shape = input_shape or (plan.input_shape if isinstance(plan, Plan) else None)
        graph = build_graph(model, input_shape=shape)
    keep_label = graph.keep_labels(plan)
    # share (not copy) the tensors that slimming replaces anyway; clone the leftovers below
    shared: dict[int, Any] = {}
    orig = dict(model.named_modules())
    for rec in graph.records.values():
        m = orig[rec.name]
        for t in list(m._parameters.values()) + list(m._buffers.values()):
            if t is not None:
                shared[id(t)] = t
    new = copy.deepcopy(model, memo=dict(shared))
    modules = dict(new.named_modules())
    for rec in graph.records.values():
        m = modules[rec.name]
        h = handler_for(m)
        if h is None or h.slim is None:
            continue
        if rec.labels is not None or (rec.in_labels is not None and rec.out_labels is not None):
            h.slim(m, rec, keep_label)
    for key, s in graph._st.spaces.items():
        if key[0] != "param":
            continue
        target = key[1]
        owner_name, _, pname = target.rpartition(".")
        owner = new.get_submodule(owner_name) if owner_name else new
        t = getattr(owner, pname)
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            continue
        keep_el = keep_label[s.start : s.start + s.size].view(t.shape)
        if bool(keep_el.all()):
            continue
        sliced = t.detach()
        for d in range(t.dim()):
            other = [i for i in range(t.dim()) if i != d]
            along = keep_el.any(dim=tuple(other)) if other else keep_el
            sliced = sliced.index_select(d, torch.nonzero(along).flatten().to(t.device))
        if sliced.numel() != int(keep_el.sum()):
            raise AssertionError(f"parameter {target} is not cut as a box")
        if isinstance(t, nn.Parameter):
            setattr(owner, pname, nn.Parameter(sliced.clone(), requires_grad=t.requires_grad))
        else:
            owner._buffers[pname] = sliced.clone()
    for m in new.modules():
        for store in (m._parameters, m._buffers):
            for k, t in store.items():
                if t is not None and id(t) in shared:
                    store[k] = (
                        nn.Parameter(t.detach().clone(), t.requires_grad)
                        if isinstance(t, nn.Parameter)
                        else t.clone()
                    )
    _sync_attrs(new)
    return new


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


def count(model: nn.Module, input_shape: Sequence[int]) -> Cost:
    """Ground-truth MACs (``torch.utils.flop_counter``: FLOPs / 2) and parameters, per module.

    A model on the ``meta`` device is counted without computing anything.
    """
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    x = torch.zeros(tuple(int(s) for s in input_shape), device=device)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x)
    except (TraceError, UsageError):
        raise
    except Exception as e:
        raise model_error(e, tuple(int(s) for s in input_shape)) from e
    finally:
        model.train(was)
    per = fc.get_flop_counts()
    root = type(model).__name__
    rows = []
    for name, m in model.named_modules():
        if name == "" or any(True for _ in m.children()):
            continue
        key = f"{root}.{name}"
        macs = sum(per.get(key, {}).values()) // 2
        params = sum(p.numel() for p in m.parameters(recurse=False))
        if macs or params:
            rows.append({"module": name, "type": type(m).__name__, "macs": int(macs), "params": int(params)})
    return Cost(int(fc.get_total_flops() // 2), int(sum(p.numel() for p in model.parameters())), rows)


@torch.no_grad()
def calibrate_bn(
    model: nn.Module, input_shape: Sequence[int], *, batches: int = 4, seed: int = 0
) -> nn.Module:
    """Give an untrained model's BatchNorm layers statistics from random inputs (in place).

    Untrained deep nets (EfficientNet at init) have vanishing activations in eval mode, which
    makes numerical checks vacuous; tests and benchmarks calibrate first.
    """
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    was = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in bns:
        m.train()
    for _ in range(batches):
        model(torch.randn((max(2, int(input_shape[0])), *input_shape[1:]), generator=gen))
    for m, (mom, tr) in zip(bns, saved):
        m.momentum = mom
        m.train(tr)
    model.train(was)
    return model
