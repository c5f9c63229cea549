"""The built-in layer handlers: torch.nn's convolutions, linear layers, normalisations, activations,
pooling, padding and reshaping modules. Each is registered with
:func:`compressor.graph.registry.register_handler`, exactly as a plug-in would be (the hooks'
contracts are the Protocols there). Importing :mod:`compressor.graph` registers them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from compressor.graph.cost import CostTerm
from compressor.graph.labels import LabelState, ModuleRecord, masked_layer_norm
from compressor.graph.registry import kept_positions, register_handler

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONVT_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
IN_TYPES = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Tanhshrink, nn.Softsign,
    nn.LogSigmoid, nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.RReLU,
)  # fmt: skip
SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
    nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
)  # fmt: skip


# --------------------------------------------------------------------------- helpers


def _index(t: torch.Tensor | None, dim: int, idx: torch.Tensor) -> torch.Tensor | None:
    if t is None:
        return None
    return t.detach().index_select(dim, idx.to(t.device)).clone()


def _set_param(m: nn.Module, pname: str, value: torch.Tensor | None) -> None:
    old = getattr(m, pname, None)
    if value is None or old is None:
        return
    if isinstance(old, nn.Parameter):
        m._parameters[pname] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        m._buffers[pname] = value


def _io(rec: ModuleRecord) -> tuple[torch.Tensor, torch.Tensor]:
    if rec.in_labels is None or rec.out_labels is None:
        raise AssertionError(f"{rec.name}: a producer's record has no input or output labels")
    return rec.in_labels, rec.out_labels


def _n_params(m: nn.Module, *names: str) -> int:
    return sum(t.numel() for n in names if isinstance(t := getattr(m, n, None), nn.Parameter))


# --------------------------------------------------------------------------- convolutions

WHOLE_GROUPS = "whole"
WITHIN_GROUPS = "within"
GROUPED_MODES = ("auto", WHOLE_GROUPS, WITHIN_GROUPS)


def has_structure_choice(m: Any) -> bool:
    """Whether grouped conv ``m`` can usefully be pruned either way: ``1 < groups`` and more than
    one input and one output channel per group. A depthwise conv (one input per group) is always
    cut per group, which is per channel; so is a conv with one output per group (within groups,
    its outputs would all be one class, which would also merge whatever they are added to)."""
    g = int(getattr(m, "groups", 1))
    return g > 1 and m.in_channels // g > 1 and m.out_channels // g > 1


def grouped_structure(st: LabelState, name: str, m: Any) -> str:
    """How the channels of grouped conv ``m`` are tied: ``"whole"`` or ``"within"`` groups.

    * whole groups: input group ``a`` and output group ``a`` are one class; removing it removes
      a group (``groups`` shrinks). ``g`` classes.
    * within groups: the number of groups stays and every group loses the same channels: the
      input channel at position ``j`` of every group is one class, and so is the output channel
      at position ``j`` (inputs and outputs independently). ``in/g + out/g`` classes.

    The rule (``st.grouped == "auto"``): the structure with more classes, i.e. more independent
    cut decisions, which lets a FLOPs or latency target be met more closely and lets importance
    choose among more channels; a tie keeps whole groups (fewer groups run faster on most
    back ends). So ResNeXt's and RegNet's few wide groups are cut within groups, many narrow
    groups as whole groups. ``build_graph`` then revisits every conv left with whole groups whose
    channels collapsed into fewer than two prunable classes (a channel shuffle after it ties
    position ``j`` of every group: with whole groups everything becomes one class) and cuts it
    within groups instead. ``st.grouped`` ``"whole"`` or ``"within"`` forces one structure;
    ``st.grouped_override`` forces it per conv.
    """
    if not has_structure_choice(m):
        return WHOLE_GROUPS
    forced = st.grouped_override.get(name)
    if forced is not None:
        return forced
    if st.grouped != "auto":
        return st.grouped
    g = int(m.groups)
    return WITHIN_GROUPS if m.in_channels // g + m.out_channels // g > g else WHOLE_GROUPS


def _prop_conv(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    transposed = isinstance(m, CONVT_TYPES)
    cin = st.channel_labels(ids_in, 1, f"input of {name}")
    rec = st.record(name, "convT" if transposed else "conv")
    out_labels = st.module_space(name, m.out_channels)
    g = m.groups
    if g > 1:
        structure = grouped_structure(st, name, m)
        if has_structure_choice(m):
            rec.extra["grouped"] = structure
        if structure == WITHIN_GROUPS:
            # keep the groups: position j of every group goes together, inputs and outputs apart
            st.union_rows(cin.view(g, -1).t())
            st.union_rows(out_labels.view(g, -1).t())
        else:
            # whole groups: input group a feeds only output group a
            st.union_rows(torch.cat([cin.view(g, -1), out_labels.view(g, -1)], dim=1))
    st.merge_inputs(rec, cin)
    rec.out_labels = out_labels
    k = int(torch.tensor(m.kernel_size).prod())
    # every sample counts (the graph is traced at batch 1, but a model may fold windows or
    # patches into the batch dimension before a layer)
    if transposed:
        rec.macs += ids_in.numel() * (m.out_channels // g) * k
    else:
        rec.macs += out.numel() * (m.in_channels // g) * k
    return st.broadcast_labels(out_labels, out.shape, 1)


def _within_positions(idx: torch.Tensor, g: int, per_group: int, name: str) -> torch.Tensor:
    """The positions inside a group that ``idx`` (kept channels of ``g`` groups of ``per_group``)
    keeps: the same in every group (guarded by the within-group unions)."""
    if len(idx) % g:
        raise AssertionError(f"{name}: within-group cut keeps {len(idx)} channels of {g} groups")
    local = idx.view(g, -1) - torch.arange(g).view(g, 1) * per_group
    if not bool((local == local[:1]).all()) or bool((local < 0).any()) or bool((local >= per_group).any()):
        raise AssertionError(f"{name}: within-group cut keeps other positions in different groups")
    return local[0].clone()


def _slim_conv(m: Any, rec: ModuleRecord, keep: torch.Tensor) -> None:
    in_labels, out_labels = _io(rec)
    out_idx = kept_positions(out_labels, keep)
    in_idx = kept_positions(in_labels, keep)
    g = m.groups
    transposed = isinstance(m, CONVT_TYPES)
    if g > 1 and rec.extra.get("grouped") == WITHIN_GROUPS:
        # groups stay; (out, in/g, *k) loses kept-position columns (transposed: (in, out/g, *k))
        out_pos = _within_positions(out_idx, g, m.out_channels // g, rec.name)
        in_pos = _within_positions(in_idx, g, m.in_channels // g, rec.name)
        if transposed:
            w = _index(_index(m.weight, 0, in_idx), 1, out_pos)
        else:
            w = _index(_index(m.weight, 0, out_idx), 1, in_pos)
    elif g > 1:
        opg = m.out_channels // g
        ipg = m.in_channels // g
        new_g = len(out_idx) // opg
        if len(out_idx) != new_g * opg or len(in_idx) != new_g * ipg:  # guarded by the group unions
            raise AssertionError(f"{rec.name}: grouped conv cut across groups")
        w = _index(m.weight, 0, in_idx if transposed else out_idx)
        m.groups = new_g
    else:
        w = m.weight
        if transposed:
            w = _index(_index(w, 0, in_idx), 1, out_idx)
        else:
            w = _index(_index(w, 0, out_idx), 1, in_idx)
    _set_param(m, "weight", w)
    _set_param(m, "bias", _index(m.bias, 0, out_idx))
    m.in_channels, m.out_channels = len(in_idx), len(out_idx)


def _cost_producer(m: Any, rec: ModuleRecord) -> list[CostTerm]:
    """Conv and linear: MACs and weights scale with inputs and outputs kept (outputs only when
    cut in whole groups: a group's inputs go with its outputs), the bias with the outputs."""
    in_labels, out_labels = _io(rec)
    w, b = _n_params(m, "weight"), _n_params(m, "bias")
    if getattr(m, "groups", 1) > 1 and rec.extra.get("grouped") != WITHIN_GROUPS:
        return [CostTerm(rec.macs, w + b, (out_labels,))]
    return [CostTerm(rec.macs, w, (in_labels, out_labels)), CostTerm(0, b, (out_labels,))]


def _filters_conv(m: Any, rec: ModuleRecord) -> torch.Tensor:
    w = m.weight.detach()
    if isinstance(m, CONVT_TYPES):  # (in, out / groups, *k): gather each output channel's filters
        g = m.groups
        w = w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:]).transpose(1, 2)
        return w.reshape(m.out_channels, -1)
    return w.reshape(w.shape[0], -1)


for _conv in CONV_TYPES + CONVT_TYPES:
    register_handler(_conv, propagate=_prop_conv, slim=_slim_conv, cost=_cost_producer, filters=_filters_conv)


# --------------------------------------------------------------------------- linear


def _prop_linear(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    fin = st.channel_labels(ids_in, ids_in.dim() - 1, f"input of {name}")
    rec = st.record(name, "linear")
    st.merge_inputs(rec, fin)
    rec.out_labels = st.module_space(name, m.out_features)
    rec.macs += out.numel() * m.in_features  # every row, windows folded into the batch included
    return st.broadcast_labels(rec.out_labels, out.shape, out.dim() - 1)


def _slim_linear(m: Any, rec: ModuleRecord, keep: torch.Tensor) -> None:
    in_labels, out_labels = _io(rec)
    out_idx = kept_positions(out_labels, keep)
    in_idx = kept_positions(in_labels, keep)
    _set_param(m, "weight", _index(_index(m.weight, 0, out_idx), 1, in_idx))
    _set_param(m, "bias", _index(m.bias, 0, out_idx))
    m.in_features, m.out_features = len(in_idx), len(out_idx)


def _filters_linear(m: Any, rec: ModuleRecord) -> torch.Tensor:
    w = m.weight.detach()
    return w.reshape(w.shape[0], -1)


register_handler(
    nn.Linear, propagate=_prop_linear, slim=_slim_linear, cost=_cost_producer, filters=_filters_linear
)


# --------------------------------------------------------------------------- per-channel modules


def _per_channel(st: LabelState, name: str, lab: torch.Tensor, kind: str) -> None:
    rec = st.record(name, kind)
    if rec.labels is None:
        rec.labels = lab
    else:
        st.union(rec.labels, lab)


def _prop_norm(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """BatchNorm, InstanceNorm: statistics and affine parameters per channel (dim 1)."""
    _per_channel(st, name, st.channel_labels(ids_in, 1, f"input of {name}"), "affine")
    return ids_in


def _prop_group_norm(
    st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    lab = st.channel_labels(ids_in, 1, f"input of {name}")
    st.union_rows(lab.view(m.num_groups, -1))  # statistics are per group: prune whole groups
    _per_channel(st, name, lab, "groupnorm")
    return ids_in


def _prop_layer_norm(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> Any:
    if len(m.normalized_shape) != 1:
        st.freeze(ids_in, f"{name}: LayerNorm over several dimensions")
        return st.fresh_frozen(out, f"{name}: LayerNorm over several dimensions")
    _per_channel(st, name, st.channel_labels(ids_in, ids_in.dim() - 1, f"input of {name}"), "layernorm")
    return ids_in


def _prop_prelu(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    lab = st.channel_labels(ids_in, 1, f"input of {name}")
    if m.num_parameters > 1:  # one slope for all channels: nothing to cut
        _per_channel(st, name, lab, "affine")
    return ids_in


def _slice_per_channel(m: Any, rec: ModuleRecord, keep: torch.Tensor) -> int:
    """Slice every per-channel parameter and buffer; returns the kept channel count."""
    if rec.labels is None:
        raise AssertionError(f"{rec.name}: a per-channel module's record has no labels")
    idx = kept_positions(rec.labels, keep)
    for p in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(m, p, None)
        if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == len(rec.labels):
            _set_param(m, p, _index(t, 0, idx))
    return len(idx)


def _slim_norm(m: Any, rec: ModuleRecord, keep: torch.Tensor) -> None:
    m.num_features = _slice_per_channel(m, rec, keep)


def _slim_group_norm(m: Any, rec: ModuleRecord, keep: torch.Tensor) -> None:
    n = _slice_per_channel(m, rec, keep)
    m.num_groups = m.num_groups * n // m.num_channels
    m.num_channels = n


def _slim_layer_norm(m: Any, rec: ModuleRecord, keep: torch.Tensor) -> None:
    m.normalized_shape = (_slice_per_channel(m, rec, keep),)


def _slim_prelu(m: Any, rec: ModuleRecord, keep: torch.Tensor) -> None:
    m.num_parameters = _slice_per_channel(m, rec, keep)


def _cost_per_channel(m: Any, rec: ModuleRecord) -> list[CostTerm]:
    """Parameters per channel (statistics are buffers, not parameters); no MACs."""
    if rec.labels is None:
        raise AssertionError(f"{rec.name}: a per-channel module's record has no labels")
    return [CostTerm(0, sum(p.numel() for p in m.parameters(recurse=False)), (rec.labels,))]


def _masked_layer_norm(m: Any, x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if len(m.normalized_shape) != 1:
        return m(x)  # frozen: nothing of it is pruned
    return masked_layer_norm(x, ids, mask, m.weight, m.bias, m.eps)


for _norm in BN_TYPES + IN_TYPES:
    register_handler(_norm, propagate=_prop_norm, slim=_slim_norm, cost=_cost_per_channel)
register_handler(nn.GroupNorm, propagate=_prop_group_norm, slim=_slim_group_norm, cost=_cost_per_channel)
register_handler(
    nn.LayerNorm,
    propagate=_prop_layer_norm,
    slim=_slim_layer_norm,
    cost=_cost_per_channel,
    masked_forward=_masked_layer_norm,
)
register_handler(nn.PReLU, propagate=_prop_prelu, slim=_slim_prelu, cost=_cost_per_channel)


# --------------------------------------------------------------------------- parameter-free modules


def _prop_spatial(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return st.spatial(ids_in, out, name)


def _prop_elementwise(
    st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    if tuple(out.shape) == tuple(ids_in.shape):
        return ids_in
    return _prop_spatial(st, name, m, ids_in, out)


def _prop_flatten(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return ids_in.flatten(m.start_dim, m.end_dim)


def _prop_unflatten(
    st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    res = ids_in.unflatten(m.dim, m.unflattened_size)
    st.check_reshape(ids_in, res, literal_dims=set(range(res.dim())), what=name)
    return res


def _prop_shuffle(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    g = m.groups
    n, c = ids_in.shape[0], ids_in.shape[1]
    v = ids_in.reshape(n, g, c // g, *ids_in.shape[2:])
    st.check_reshape(ids_in, v, literal_dims={1}, what=name)
    return v.transpose(1, 2).reshape(ids_in.shape)


def _prop_softmax(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    dim = m.dim if m.dim is not None else ids_in.dim() - 1
    return st.along_dim_op(ids_in, dim % ids_in.dim(), name)


for _elementwise in ELEMENTWISE_MODULES:
    register_handler(_elementwise, propagate=_prop_elementwise)
for _spatial in SPATIAL_MODULES:
    register_handler(_spatial, propagate=_prop_spatial)
register_handler(nn.Flatten, propagate=_prop_flatten)
register_handler(nn.Unflatten, propagate=_prop_unflatten)
register_handler(nn.ChannelShuffle, propagate=_prop_shuffle)
register_handler(nn.Softmax, propagate=_prop_softmax)
register_handler(nn.LogSoftmax, propagate=_prop_softmax)
