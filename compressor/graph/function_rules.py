"""How labels flow through functions and methods (``call_function`` / ``call_method`` nodes).

Modules have handlers (:mod:`compressor.graph.registry`); functions are classified by the op
tables (:mod:`compressor.graph.ops`): elementwise ops keep or unite labels, shape ops are applied
to the id tensors themselves, reductions and softmax are followed unless they act across
channels, and anything else freezes the channels it touches. In particular:

* a slice that takes a whole channel dimension with literal bounds is a no-op (GhostNet's
  ``cat([x1, x2])[:, :out_chs]``); one that cuts it freezes;
* a reduction or softmax over parts stacked along a dimension (SelectiveKernel's paths,
  ResNeSt's radix) unites the parts; over the channels themselves it freezes (a mean or max
  over channels changes with their count: CBAM's spatial gate);
* ``a @ b`` carries a's row channels and b's column channels; a sum over channels
  (``q @ k.T``) unites both sides; ``F.scaled_dot_product_attention`` likewise, its default
  scale freezing q and k (it reads their count);
* ``cat`` along a dimension without channels (a class token before the patch tokens) unites
  the parts channel by channel;
* ``repeat_interleave`` by an int repeats labels with the values: along the batch (GCViT's
  global query, one per window) it copies them, along the channels every copy keeps its label;
* channels reshaped into several dimensions (``3 x heads x head_dim``) keep the same innermost
  positions in every block; ``F.pad`` that pads no channel dimension is spatial.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from compressor.graph import ops
from compressor.graph.labels import LabelState, tensors


def function_ids(
    st: LabelState,
    tag: str,
    node: fx.Node,
    name: str,
    real: dict[fx.Node, Any],
    ids: dict[fx.Node, Any],
    out: Any,
) -> Any:
    """The id tensor(s) of ``node``'s output ``out``; ``tag`` prefixes the label spaces it mints."""
    in_ids = [ids.get(a) for a in node.all_input_nodes]
    tensor_in = [t for t in in_ids if isinstance(t, torch.Tensor)]
    has_tuple_in = any(isinstance(t, (tuple, list)) for t in in_ids)
    if node.target is operator.setitem:
        # x[...] = y writes y's values into part of x in place: neither side is followed
        reason = f"{node.name}: an in-place write into part of a tensor (x[...] = y) is not followed"
        st.freeze([t for t in in_ids if isinstance(t, torch.Tensor)], reason)
        return None
    if not tensors(out):
        return None
    if not tensor_in and not has_tuple_in:
        # a tensor made from nothing traced (torch.zeros(...), arange): a constant
        return st.fresh_frozen(out, f"{node.name}: tensor created inside the model", key=f"{tag}{node.name}")
    what = f"{node.name} ({name})"
    args: Any = node.args

    def checked(res: Any) -> Any:
        return st.checked(res, out, in_ids, what, key=f"{tag}chk:{what}")

    def mixed(a: Any) -> Any:
        return fx.node.map_arg(
            a, lambda n: ids[n] if isinstance(ids.get(n), (torch.Tensor, tuple, list)) else real[n]
        )

    x_ids = ids.get(args[0]) if args and isinstance(args[0], fx.Node) else None

    if name == "getitem":
        if isinstance(x_ids, (tuple, list)):
            return x_ids[args[1]]
        if isinstance(x_ids, torch.Tensor):
            _check_index(st, x_ids, args[1], what)
            res = x_ids[fx.node.map_arg(args[1], lambda n: real[n])]  # the index is data, not labels
            return checked(res)
    if node.target is F.layer_norm:
        return _layer_norm(st, tag, node, ids, out, what)
    if name == "scaled_dot_product_attention" and isinstance(out, torch.Tensor):
        res = _sdpa(st, node, ids, out, what)
        if res is not None:
            return res
    if name in ops.MATMUL and len(in_ids) == 2:
        a, b = in_ids
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            res = _matmul(st, tag, node, a, b, out, what)
            if res is not None:
                return res
    if name in ops.UNARY or (name in ops.BINARY and len(tensor_in) == 1):
        if isinstance(x_ids, torch.Tensor) and isinstance(out, torch.Tensor):
            if x_ids.shape == out.shape:
                return x_ids
            return _binary(st, tensor_in, out, what)
    if name in ops.BINARY and isinstance(out, torch.Tensor):
        return _binary(st, tensor_in, out, what)
    if node.target in ops.SPATIAL_FN and isinstance(x_ids, torch.Tensor) and isinstance(out, torch.Tensor):
        return st.spatial(x_ids, out, what)
    if name == "pad" and isinstance(x_ids, torch.Tensor) and isinstance(out, torch.Tensor):
        padded = _pad(st, x_ids, fx.node.map_arg(ops.arg(node, 1, "pad"), lambda n: real[n]), out)
        if padded is not None:
            return padded
    if name in ops.SOFTMAX and isinstance(x_ids, torch.Tensor):
        dim = ops.arg(node, 1, "dim")
        if isinstance(dim, int):
            d = dim % x_ids.dim()
            if d in st.varying_dims(x_ids) and _unite_along(st, x_ids, [d]):
                return x_ids  # a softmax over stacked parts (radix), each channel's parts as one
            return st.along_dim_op(x_ids, d, what)
    if name in ops.REDUCE and isinstance(x_ids, torch.Tensor) and isinstance(out, torch.Tensor):
        return _reduce(st, tag, node, x_ids, out, what)
    if name == "repeat_interleave" and isinstance(x_ids, torch.Tensor) and isinstance(out, torch.Tensor):
        repeated = _repeat_interleave(node, x_ids, mixed)
        if repeated is not None:
            return checked(repeated)
    if name in ops.CAT and name != "stack" and isinstance(out, torch.Tensor):
        joined = _cat_along_tokens(st, node, in_ids, out)
        if joined is not None:
            return joined
    if name in ops.SHAPE or name in ops.CAT or name in ops.SPLIT:
        if name in ops.SPLIT and isinstance(x_ids, torch.Tensor):
            _check_split(st, node, name, x_ids, what)
        res = _apply(node, mixed)
        if name in ops.LITERAL_SIZE_OPS and isinstance(x_ids, torch.Tensor) and isinstance(res, torch.Tensor):
            literal = _literal_dims(node, name, res.dim())
            if len(st.varying_dims(res)) > 2:
                _split_many(st, res, literal, what)
            else:
                st.check_reshape(x_ids, res, literal, what)
        return checked(res)
    reason = f"{what} is not understood by the channel engine"
    st.freeze(in_ids, reason)
    return st.fresh_frozen(out, reason, key=f"{tag}{node.name}")


def _apply(node: fx.Node, mixed: Any) -> Any:
    a = mixed(node.args)
    k = mixed(node.kwargs)
    if node.op == "call_method":
        # id tensors are often expanded views: reshape where the model views
        meth = {"view": "reshape", "view_as": "reshape_as"}.get(str(node.target), str(node.target))
        return getattr(a[0], meth)(*a[1:], **k)
    target: Any = node.target
    return target(*a, **k)


def _binary(st: LabelState, operands: list[torch.Tensor], out: torch.Tensor, what: str) -> torch.Tensor:
    shape = out.shape
    expanded = []
    for t in operands:
        try:
            e = t.expand(shape) if t.dim() <= len(shape) else None
        except RuntimeError:
            e = None
        if e is None:
            st.freeze(operands, f"{what}: broadcasting the engine cannot follow")
            res: torch.Tensor = st.fresh_frozen(out, f"{what}: broadcasting the engine cannot follow")
            return res
        expanded.append(e)
    live = [e for e in expanded if st.varying_dims(e)]
    if not live:
        return expanded[0]
    ref = live[0]
    ref_var = set(st.varying_dims(ref))
    for e in live[1:]:
        keep_dims = ref_var | set(st.varying_dims(e))
        idx = tuple(slice(None) if d in keep_dims else slice(0, 1) for d in range(ref.dim()))
        a, b = ref[idx].reshape(-1), e[idx].reshape(-1)
        code = torch.unique(a * st.n + b)  # distinct (a, b) pairs
        st.union(code // st.n, code % st.n)
    return ref


def _matmul(
    st: LabelState, tag: str, node: fx.Node, a: torch.Tensor, b: torch.Tensor, out: Any, what: str
) -> Any:
    """``a @ b`` over the last two dimensions (leading ones broadcast), or None (not followed).

    Output element ``[..., i, j]`` reads row ``i`` of ``a`` and column ``j`` of ``b``, so its labels
    are ``a``'s along the rows and ``b``'s along the columns (united where both vary, as an
    elementwise op). The contracted dimension is a sum: when it carries channels (``a`` varies
    along its last dimension only, ``b`` along its second-to-last only, as ``q @ k.T``), a pruned
    channel is zero in both operands or gone from both, so the two sides are united channel by
    channel; the output, which no channel owns, gets one label that is never pruned.
    """
    if not isinstance(out, torch.Tensor) or a.dim() < 2 or b.dim() < 2 or out.dim() < 2:
        return None
    va, vb = set(st.varying_dims(a)), set(st.varying_dims(b))
    ka, kb = a.dim() - 1, b.dim() - 2
    if ka not in va and kb not in vb:
        rows = a.narrow(ka, 0, 1)
        cols = b.narrow(kb, 0, 1)
        return _binary(st, [rows, cols], out, what)
    if ka - 1 in va or kb + 1 in vb:
        return None  # channels both contracted and kept: not a box the engine can cut
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    ak = a.select(ka - 1, 0).expand(*batch, a.shape[-1]).reshape(-1)
    bk = b.select(kb + 1, 0).expand(*batch, b.shape[-2]).reshape(-1)
    code = torch.unique(ak * st.n + bk)
    st.union(code // st.n, code % st.n)
    # one label, in a space no producer owns: never pruned, and never tying what it meets
    # (``attn @ v`` leaves v's channels free)
    lab = st.space(("node", f"{tag}{node.name}: sum over channels"), 1)
    return lab.view([1] * out.dim()).expand(out.shape)


def _reduce(
    st: LabelState, tag: str, node: fx.Node, x_ids: torch.Tensor, out: torch.Tensor, what: str
) -> Any:
    dim = ops.arg(node, 1, "dim")
    keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    nd = x_ids.dim()
    dims = list(range(nd)) if dim is None else [d % nd for d in ([dim] if isinstance(dim, int) else dim)]
    if set(dims) & set(st.varying_dims(x_ids)) and not _unite_along(st, x_ids, dims):
        st.freeze(x_ids, f"{what}: reduces over channels")
        return st.fresh_frozen(out, f"{what}: reduces over channels", key=f"{tag}{node.name}")
    res = x_ids
    for d in sorted(dims, reverse=True):
        res = res.narrow(d, 0, 1) if keep else res.select(d, 0)
    return st.checked(res, out, [x_ids], what, key=f"{tag}chk:{what}")


def _sdpa(st: LabelState, node: fx.Node, ids: dict[fx.Node, Any], out: torch.Tensor, what: str) -> Any:
    """``F.scaled_dot_product_attention(q, k, v)``: ``softmax(q @ k.T * scale) @ v``. The product
    of q and k sums over their channels (united, as :func:`_matmul`); the output carries v's
    channels. Without an explicit ``scale`` the op reads q's channel count (``1 / sqrt(E)``), so
    q's and k's channels are frozen; v's stay free. None (not followed) with a mask or a shape
    the rule does not cover."""
    qkv = [ops.arg(node, i, key) for i, key in enumerate(("query", "key", "value"))]
    mask = ops.arg(node, 3, "attn_mask")
    if mask is not None or not all(isinstance(a, fx.Node) for a in qkv):
        return None
    q, k, v = (ids.get(a) for a in qkv)
    if not all(isinstance(t, torch.Tensor) and t.dim() >= 2 for t in (q, k, v)):
        return None
    assert isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
    if any(t.dim() - 2 in st.varying_dims(t) for t in (q, k, v)):
        return None  # channels along the token dimension
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    qe = q.select(-2, 0).expand(*batch, q.shape[-1]).reshape(-1)
    ke = k.select(-2, 0).expand(*batch, k.shape[-1]).reshape(-1)
    code = torch.unique(qe * st.n + ke)
    st.union(code // st.n, code % st.n)
    if ops.arg(node, 6, "scale") is None:
        st.freeze([q, k], f"{what}: its default scale reads the query's channel count")
    try:
        return v.narrow(-2, 0, 1).expand(out.shape)
    except RuntimeError:
        return None


def _cat_along_tokens(st: LabelState, node: fx.Node, in_ids: list[Any], out: torch.Tensor) -> Any:
    """``cat`` along a dimension that carries no channels in any part (a ViT's class token put
    before its patch tokens): every part holds the same channels at each position of the other
    dimensions, and whatever reads the result (a linear layer, a layer norm) treats a channel
    alike in all of them, so the parts are united element by element and the result carries the
    first part's labels. None (the generic rule) when some part varies along ``dim``."""
    parts = in_ids[0] if len(in_ids) == 1 and isinstance(in_ids[0], (tuple, list)) else in_ids
    dim = ops.arg(node, 1, "dim", 0)
    if not isinstance(dim, int) or len(parts) < 2 or not all(isinstance(p, torch.Tensor) for p in parts):
        return None
    d = dim % out.dim()
    if any(p.dim() != out.dim() or d in st.varying_dims(p) for p in parts):
        return None
    first = [p.narrow(d, 0, 1) for p in parts]
    if any(f.shape != first[0].shape for f in first) or not st.varying_dims(first[0]):
        return None
    for f in first[1:]:
        code = torch.unique(first[0].reshape(-1) * st.n + f.reshape(-1))
        st.union(code // st.n, code % st.n)
    return first[0].expand(out.shape)


def _repeat_interleave(node: fx.Node, x_ids: torch.Tensor, mixed: Any) -> Any:
    """``x.repeat_interleave(n, dim)`` with an int ``n``: each element repeated ``n`` times in place
    (GCViT's global query repeated over the windows of the batch). Applied to the id tensor: along
    a dimension without channels it just copies their labels; along the channels, every copy of a
    channel keeps its label, so the copies are kept or cut together and the slim model repeats
    what is left. None (not followed) for per-element counts (a tensor ``n``) or no ``dim``."""
    repeats, dim = mixed(ops.arg(node, 1, "repeats")), ops.arg(node, 2, "dim")
    if type(repeats) is not int or not isinstance(dim, int):
        return None
    return x_ids.repeat_interleave(repeats, dim=dim)


def _split_many(st: LabelState, res: torch.Tensor, literal: set[int], what: str) -> None:
    """A reshape that splits channels into several dimensions (``(B, N, 3 * heads * d)`` to
    ``(B, N, 3, heads, d)``): channel ``i`` of the innermost one goes together in every block of
    the outer ones, so all blocks keep the same positions and the outer sizes (literals such as
    ``3`` or ``num_heads``) never change; the innermost must not be a literal."""
    v = st.varying_dims(res)
    inner = v[-1]
    idx: list[Any] = [0] * res.dim()
    for d in v:
        idx[d] = slice(None)
    blocks = res[tuple(idx)]  # the varying dims only, in order
    st.union_rows(blocks.reshape(-1, blocks.shape[-1]).t())
    if inner in literal:
        st.freeze(res, f"{what}: reshapes channels to a fixed size")


def _pad(st: LabelState, x_ids: torch.Tensor, pad: Any, out: torch.Tensor) -> torch.Tensor | None:
    """``F.pad`` that pads no dimension carrying channels (NCHW's H and W, NHWC's H and W with
    ``(0, 0)`` for C): the output's labels are the input's, spread over the new positions.
    None when a channel dimension is padded or the padding is not a tuple of ints."""
    if not isinstance(pad, (tuple, list)) or not all(type(p) is int for p in pad):
        return None
    if len(pad) > 2 * x_ids.dim() or out.dim() != x_ids.dim():
        return None
    padded = {x_ids.dim() - 1 - i // 2 for i, p in enumerate(pad) if p != 0}
    if padded & set(st.varying_dims(x_ids)):
        return None
    base = x_ids
    for d in padded:
        base = base.narrow(d, 0, 1)
    return base.expand(out.shape)


def _unite_along(st: LabelState, x_ids: torch.Tensor, dims: list[int]) -> bool:
    """A reduction (or softmax) along ``dims`` that vary, when the other dimensions still carry
    channels: the parts stacked along ``dims`` (SelectiveKernel's paths, ResNeSt's radix splits)
    are united element by element, so every position is kept or cut along all of ``dims`` at
    once, and the op computes the same on the kept positions. False (nothing united) when
    nothing else varies: then ``dims`` are the channels themselves (a mean over channels
    changes with their count) and the caller freezes them."""
    if not set(st.varying_dims(x_ids)) - set(dims):
        return False
    first = x_ids
    for d in dims:
        first = first.narrow(d, 0, 1)
    code = torch.unique(first.expand_as(x_ids).reshape(-1) * st.n + x_ids.reshape(-1))
    st.union(code // st.n, code % st.n)
    return True


def _check_index(st: LabelState, x_ids: torch.Tensor, index: Any, what: str) -> None:
    idx = index if isinstance(index, tuple) else (index,)
    varying = set(st.varying_dims(x_ids))
    n_consumed = sum(1 for i in idx if i is not None and i is not Ellipsis)
    d = 0
    for i in idx:
        if i is Ellipsis:
            d += x_ids.dim() - n_consumed
            continue
        if i is None:
            continue
        if not _covers(i, x_ids.shape[d]) and d in varying:
            st.freeze(x_ids, f"{what}: indexes or slices channels")
            return
        d += 1


def _covers(i: Any, size: int) -> bool:
    """Whether index ``i`` takes the whole of a dimension of ``size`` in order, at this size and at
    any smaller one: ``:``, or a slice from 0 with step 1 whose stop is a literal int >= ``size``
    (GhostNet's ``cat([x1, x2])[:, :out_chs]`` when the parts add up to ``out_chs``; Python clamps
    the stop, so the slim model's narrower tensor is taken whole too). A computed bound is not."""
    if not isinstance(i, slice):
        return False
    start_ok = i.start is None or (type(i.start) is int and i.start == 0)
    step_ok = i.step is None or (type(i.step) is int and i.step == 1)
    stop_ok = i.stop is None or (type(i.stop) is int and i.stop >= size)
    return start_ok and step_ok and stop_ok


def _check_split(st: LabelState, node: fx.Node, name: str, x_ids: torch.Tensor, what: str) -> None:
    dim = ops.arg(node, 1, "dim", 0) if name == "unbind" else ops.arg(node, 2, "dim", 0)
    if not isinstance(dim, int):
        st.freeze(x_ids, f"{what}: split along a computed dimension")
        return
    dim %= x_ids.dim()
    if dim not in st.varying_dims(x_ids):
        return
    if name == "unbind" and _unite_along(st, x_ids, [dim]):
        return  # every position of ``dim`` is kept or cut together: its size never changes
    n = ops.arg(node, 1, "chunks")
    c = x_ids.shape[dim]
    if name == "chunk" and isinstance(n, int) and c % n == 0:
        blocks = x_ids.movedim(dim, 0).reshape(n, c // n, -1)[:, :, 0]
        st.union_rows(blocks.t())  # equal chunks stay equal: channel b of each goes together
        return
    st.freeze(x_ids, f"{what}: splits channels at fixed sizes")


def _layer_norm(st: LabelState, tag: str, node: fx.Node, ids: dict[fx.Node, Any], out: Any, what: str) -> Any:
    x_ids = ids[node.args[0]]  # type: ignore[index]
    shape = ops.arg(node, 1, "normalized_shape")
    if not isinstance(x_ids, torch.Tensor) or not isinstance(shape, (tuple, list)) or len(shape) != 1:
        st.freeze([x_ids], f"{what}: layer norm over several dimensions")
        return st.fresh_frozen(out, f"{what}", key=f"{tag}{node.name}")
    lab = st.channel_labels(x_ids, x_ids.dim() - 1, what)
    for a in list(node.args[2:4]) + [node.kwargs.get("weight"), node.kwargs.get("bias")]:
        if isinstance(a, fx.Node) and isinstance(ids.get(a), torch.Tensor):
            st.union(lab, ids[a].reshape(-1))
    return x_ids


def _literal_dims(node: fx.Node, name: str, ndim: int) -> set[int]:
    """Output dims whose size is a literal int (not -1, not computed): they cannot shrink."""
    if name == "unflatten":
        return set(range(ndim))
    if name == "tile":
        return set()
    sizes: Any = node.args[1:]
    if node.kwargs.get("shape") is not None:
        sizes = (node.kwargs["shape"],)
    if node.kwargs.get("size") is not None:
        sizes = (node.kwargs["size"],)
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
        sizes = sizes[0]
    return {d for d, s in enumerate(sizes) if isinstance(s, int) and s not in (-1,) and d < ndim}
