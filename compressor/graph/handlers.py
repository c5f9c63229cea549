"""One handler per layer type: how its channels couple, how it is slimmed, how it costs.

Channels are tracked as integer *labels*: every tensor in the traced graph carries an int64
"id tensor" of its shape whose entries name the channel each element belongs to. A producer
(conv, linear) creates fresh labels for its output channels; elementwise ops union the labels
they combine; shape ops move labels around exactly as they move the data. Handlers below say,
per module type, how labels flow and how the module is cut down to the kept labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from compressor.graph.engine import _Analysis


@dataclass
class ModuleRecord:
    """What the analysis learned about one leaf module (all calls of it merged)."""

    name: str
    kind: str  # "conv", "convT", "linear", "affine", "layernorm", "groupnorm"
    in_labels: torch.Tensor | None = None  # label per input channel / feature
    out_labels: torch.Tensor | None = None  # label per output channel (producers)
    labels: torch.Tensor | None = None  # label per channel (affine modules)
    macs: int = 0  # multiply-accumulates of the unpruned module, all calls
    calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- module types

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


def _prop_conv(
    st: _Analysis, name: str, m: nn.Module, ids_in: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    transposed = isinstance(m, CONVT_TYPES)
    cin = st.channel_labels(ids_in, 1, f"input of {name}")
    rec = st.record(name, "convT" if transposed else "conv")
    out_labels = st.module_space(name, m.out_channels)
    g = m.groups
    if g > 1:
        # grouped / depthwise: input group a feeds only output group a -> prune whole groups
        st.union_rows(torch.cat([cin.view(g, -1), out_labels.view(g, -1)], dim=1))
    st.merge_inputs(rec, cin)
    rec.out_labels = out_labels
    k = int(torch.tensor(m.kernel_size).prod())
    if transposed:
        rec.macs += ids_in[0].numel() * (m.out_channels // g) * k
    else:
        rec.macs += out[0].numel() * (m.in_channels // g) * k
    return st.broadcast_labels(out_labels, out.shape, 1)


def _prop_linear(
    st: _Analysis, name: str, m: nn.Module, ids_in: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    fin = st.channel_labels(ids_in, ids_in.dim() - 1, f"input of {name}")
    rec = st.record(name, "linear")
    st.merge_inputs(rec, fin)
    rec.out_labels = st.module_space(name, m.out_features)
    rec.macs += out[0].numel() * m.in_features if out.dim() > 1 else out.numel() * m.in_features
    return st.broadcast_labels(rec.out_labels, out.shape, out.dim() - 1)


def _prop_affine(
    st: _Analysis, name: str, m: nn.Module, ids_in: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    if isinstance(m, nn.LayerNorm):
        if len(m.normalized_shape) != 1:
            st.freeze(ids_in, f"{name}: LayerNorm over several dimensions")
            return st.fresh_frozen(out, f"{name}: LayerNorm over several dimensions")
        dim, kind = ids_in.dim() - 1, "layernorm"
    else:
        dim, kind = 1, "affine"
    lab = st.channel_labels(ids_in, dim, f"input of {name}")
    if isinstance(m, nn.GroupNorm):
        kind = "groupnorm"
        st.union_rows(lab.view(m.num_groups, -1))  # statistics are per group: prune whole groups
    if isinstance(m, nn.PReLU) and m.num_parameters == 1:
        return ids_in
    rec = st.record(name, kind)
    if rec.labels is None:
        rec.labels = lab
    else:
        st.union(rec.labels, lab)
    return ids_in


def _prop_elementwise(
    st: _Analysis, name: str, m: nn.Module, ids_in: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    if tuple(out.shape) == tuple(ids_in.shape):
        return ids_in
    return _prop_spatial(st, name, m, ids_in, out)


def _prop_spatial(
    st: _Analysis, name: str, m: nn.Module, ids_in: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    return st.spatial(ids_in, out, name)


def _prop_flatten(
    st: _Analysis, name: str, m: nn.Module, ids_in: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    return ids_in.flatten(m.start_dim, m.end_dim)


def _prop_unflatten(
    st: _Analysis, name: str, m: nn.Module, ids_in: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    res = ids_in.unflatten(m.dim, m.unflattened_size)
    st.check_reshape(ids_in, res, literal_dims=set(range(res.dim())), what=name)
    return res


def _prop_shuffle(
    st: _Analysis, name: str, m: nn.Module, ids_in: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    g = m.groups
    n, c = ids_in.shape[0], ids_in.shape[1]
    v = ids_in.reshape(n, g, c // g, *ids_in.shape[2:])
    st.check_reshape(ids_in, v, literal_dims={1}, what=name)
    return v.transpose(1, 2).reshape(ids_in.shape)


def _prop_softmax(
    st: _Analysis, name: str, m: nn.Module, ids_in: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    dim = m.dim if m.dim is not None else ids_in.dim() - 1
    return st.along_dim_op(ids_in, dim % ids_in.dim(), name)


# --------------------------------------------------------------------------- slimming


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


def kept_positions(labels: torch.Tensor, keep_label: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(keep_label[labels], as_tuple=False).flatten()


def _expect(m: nn.Module, types: tuple[type, ...], rec: ModuleRecord) -> None:
    if not isinstance(m, types):
        raise TypeError(
            f"{rec.name}: handler for {', '.join(t.__name__ for t in types)} got {type(m).__name__}"
        )


def _slim_conv(m: nn.Module, rec: ModuleRecord, keep_label: torch.Tensor) -> None:
    _expect(m, CONV_TYPES + CONVT_TYPES, rec)
    assert rec.in_labels is not None and rec.out_labels is not None
    out_idx = kept_positions(rec.out_labels, keep_label)
    in_idx = kept_positions(rec.in_labels, keep_label)
    g = m.groups
    transposed = isinstance(m, CONVT_TYPES)
    if g > 1:
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


def _slim_linear(m: nn.Module, rec: ModuleRecord, keep_label: torch.Tensor) -> None:
    _expect(m, (nn.Linear,), rec)
    assert rec.in_labels is not None and rec.out_labels is not None
    out_idx = kept_positions(rec.out_labels, keep_label)
    in_idx = kept_positions(rec.in_labels, keep_label)
    _set_param(m, "weight", _index(_index(m.weight, 0, out_idx), 1, in_idx))
    _set_param(m, "bias", _index(m.bias, 0, out_idx))
    m.in_features, m.out_features = len(in_idx), len(out_idx)


def _slim_affine(m: nn.Module, rec: ModuleRecord, keep_label: torch.Tensor) -> None:
    _expect(m, BN_TYPES + IN_TYPES + (nn.GroupNorm, nn.LayerNorm, nn.PReLU), rec)
    assert rec.labels is not None
    idx = kept_positions(rec.labels, keep_label)
    n = len(idx)
    for p in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(m, p, None)
        if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == len(rec.labels):
            _set_param(m, p, _index(t, 0, idx))
    if isinstance(m, nn.GroupNorm):
        m.num_groups = m.num_groups * n // m.num_channels
        m.num_channels = n
    elif isinstance(m, nn.LayerNorm):
        m.normalized_shape = (n,)
    elif isinstance(m, nn.PReLU):
        m.num_parameters = n
    else:
        m.num_features = n


@dataclass(frozen=True)
class Handler:
    propagate: Any
    slim: Any = None


MODULE_HANDLERS: dict[type[nn.Module], Handler] = {}
for _t in CONV_TYPES + CONVT_TYPES:
    MODULE_HANDLERS[_t] = Handler(_prop_conv, _slim_conv)
MODULE_HANDLERS[nn.Linear] = Handler(_prop_linear, _slim_linear)
for _t in BN_TYPES + IN_TYPES + (nn.GroupNorm, nn.LayerNorm, nn.PReLU):
    MODULE_HANDLERS[_t] = Handler(_prop_affine, _slim_affine)
for _t in ELEMENTWISE_MODULES:
    MODULE_HANDLERS[_t] = Handler(_prop_elementwise)
for _t in SPATIAL_MODULES:
    MODULE_HANDLERS[_t] = Handler(_prop_spatial)
MODULE_HANDLERS[nn.Flatten] = Handler(_prop_flatten)
MODULE_HANDLERS[nn.Unflatten] = Handler(_prop_unflatten)
MODULE_HANDLERS[nn.ChannelShuffle] = Handler(_prop_shuffle)
MODULE_HANDLERS[nn.Softmax] = Handler(_prop_softmax)
MODULE_HANDLERS[nn.LogSoftmax] = Handler(_prop_softmax)


def handler_for(m: nn.Module) -> Handler | None:
    """The handler of ``m``'s type (or of the handled base class it subclasses)."""
    for base in type(m).__mro__:
        h = MODULE_HANDLERS.get(base)
        if h is not None:
            return h
    return None


def is_affine_instance_norm(m: nn.Module) -> bool:
    return isinstance(m, IN_TYPES) and (m.affine or m.track_running_stats)
