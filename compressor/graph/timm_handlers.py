"""Handlers for timm's building blocks (loaded when a model holds timm modules, see
:func:`load_for`), registered with :func:`compressor.graph.registry.register_handler` like any
plug-in:

* ``BatchNormAct2d`` / ``SyncBatchNormAct`` (BatchNorm, then dropout and an activation),
  ``GroupNormAct``: per-channel normalisation followed by an element-wise activation, so they
  are cut like ``BatchNorm2d`` / ``GroupNorm``. An activation with parameters (a per-channel
  PReLU) or one the engine does not know freezes the channels, naming it.
* timm's ``Linear`` (``nn.Linear`` whose forward only casts the weights under torchscript);
* ``Conv2dSame`` (TensorFlow "same" padding computed from the input size, which torch.fx
  cannot trace): a leaf cut like ``Conv2d``; its padding depends only on the spatial size,
  never on the channels.
* ``MixedConv2d`` (MixNet): a leaf; its parts are followed and cut by the convolution handler
  (records ``name.i``) and its own split sizes (``splits``, a table of the module, recorded in
  a checkpoint's widths) are rewritten to the kept channels of each part.

* ``StdConv2d`` / ``StdConv2dSame`` / ``ScaledStdConv2d`` / ``ScaledStdConv2dSame`` (weight
  standardisation: ResNetV2-BiT, NFNet, the ViT hybrids): leaves cut like ``Conv2d``. Each
  filter is standardised over its own inputs (``F.batch_norm`` over ``in/groups x kh x kw``),
  so removing **output** channels is exact: the rows (and ``gain``) are sliced and the layer
  stays a weight-standardised convolution, which keeps standardising while it is fine-tuned.
  Removing **input** channels would change every filter's mean and variance, so then the
  layer is **folded** (:func:`fold_weight_standardization`): the slim model holds a plain
  ``nn.Conv2d`` (``Conv2dSame`` for dynamic "same" padding) whose weights are the standardised
  (and ``gain * scale``-scaled) weights of the original, cut like any convolution. The output
  is exactly the original's; the folded layer is fine-tuned as a plain convolution. The
  checkpoint records the fold as the width ``weight_standardization_folded = 1``, which
  :func:`compressor.graph.widths.apply_widths` replays on a freshly built model.
* ``CondConv2d`` (EfficientNet-CondConv): ``num_experts`` filter sets mixed per sample by
  routing weights (its second input). A leaf cut like the convolution the experts share: every
  expert loses the same filters and inputs (``weight_shape`` / ``bias_shape`` follow, and are
  recorded in a checkpoint's widths); the routing weights keep their size. Its MACs include
  mixing the experts' filters, which scales with the kept filters.
* ``GlobalResponseNorm`` (ConvNeXt-V2): cut like a layer norm. Its statistic is the mean, over
  the channels, of each channel's L2 norm over the positions; the slim layer takes it over the
  channels it keeps, exactly as a slim ``LayerNorm`` does (the masked pass computes the same).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.graph import handlers as H
from compressor.graph.cost import CostTerm
from compressor.graph.labels import LabelState, ModuleRecord
from compressor.graph.registry import handler_for, is_handled, kept_positions, register_handler

_loaded = False


def _elementwise(m: nn.Module | None) -> bool:
    """Whether ``m`` is applied element by element with nothing per channel."""
    if m is None or isinstance(m, nn.Identity):
        return True
    if next(m.parameters(), None) is not None:
        return False
    if type(m).__module__.startswith("timm.layers.activations"):
        return True
    h = handler_for(m)
    return h is not None and h.propagate_fn is H._prop_elementwise


def _check_act(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> bool:
    for part in ("drop", "act"):
        sub = getattr(m, part, None)
        if not _elementwise(sub):
            why = f"{name}.{part} ({type(sub).__name__}) is not an element-wise activation the engine knows"
            st.freeze(ids_in, why)
            return False
    return tuple(out.shape) == tuple(ids_in.shape)


def _prop_norm_act(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> Any:
    if not _check_act(st, name, m, ids_in, out):
        return st.fresh_frozen(out, f"{name}: activation not understood")
    return H._prop_norm(st, name, m, ids_in, out)


def _prop_group_norm_act(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> Any:
    if not _check_act(st, name, m, ids_in, out):
        return st.fresh_frozen(out, f"{name}: activation not understood")
    return H._prop_group_norm(st, name, m, ids_in, out)


def _prop_mixed_conv(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> Any:
    """``MixedConv2d``: the input split at ``m.splits``, part ``i`` through convolution ``i`` (a
    child, followed and cut by its own handler, recorded as ``name.i``), the outputs concatenated.
    The split sizes are the module's own table, so slimming rewrites them (:func:`_slim_mixed_conv`)."""
    cin = st.channel_labels(ids_in, 1, f"input of {name}")
    convs = list(m.values())
    outs = [c.out_channels for c in convs]
    if sum(m.splits) != len(cin) or sum(outs) != out.shape[1] or len(convs) != len(m.splits):
        st.freeze(ids_in, f"{name}: MixedConv2d whose splits do not add up")
        return st.fresh_frozen(out, f"{name}: MixedConv2d whose splits do not add up")
    parts = []
    for i, (conv, lab, o) in enumerate(zip(convs, cin.split(list(m.splits)), out.split(outs, 1))):
        h = handler_for(conv)
        if h is None or h.propagate_fn is not H._prop_conv or not is_handled(conv):
            st.freeze(ids_in, f"{name}.{i} ({type(conv).__name__}) is not a convolution the engine knows")
            return st.fresh_frozen(out, f"{name}: a part is not understood")
        sub_in = st.broadcast_labels(lab, (ids_in.shape[0], len(lab), *ids_in.shape[2:]), 1)
        parts.append(h.propagate(st, f"{name}.{i}", conv, sub_in, o))
    rec = st.record(name, "mixedconv")
    st.merge_inputs(rec, cin)
    rec.extra["splits"] = list(m.splits)
    res = torch.cat(parts, 1)
    rec.out_labels = res.reshape(res.shape[0], res.shape[1], -1)[0, :, 0].clone()
    return res


def _slim_mixed_conv(m: Any, rec: ModuleRecord, keep: torch.Tensor) -> None:
    """New split sizes: the kept input channels of each part (the children are cut by their own
    handlers); ``in_channels`` / ``out_channels`` follow."""
    assert rec.in_labels is not None
    parts = rec.in_labels.split(rec.extra["splits"])
    m.splits = [len(kept_positions(p, keep)) for p in parts]
    m.in_channels = sum(m.splits)
    assert rec.out_labels is not None
    m.out_channels = len(kept_positions(rec.out_labels, keep))


_STD_CONVS = ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")
#: the width a folded weight-standardised convolution records (see :func:`fold_weight_standardization`)
FOLDED = "weight_standardization_folded"


def is_std_conv(m: nn.Module) -> bool:
    """Whether ``m`` is one of timm's weight-standardised convolutions (not yet folded)."""
    return type(m).__name__ in _STD_CONVS and type(m).__module__.startswith("timm.")


@torch.no_grad()
def standardized_weight(m: Any) -> torch.Tensor:
    """The weight ``m`` convolves with: each filter standardised over its inputs, then scaled by
    ``gain * scale`` for the scaled variants (timm's own forward, without the convolution)."""
    w = m.weight
    gain = getattr(m, "gain", None)
    scale = (gain * m.scale).reshape(-1) if isinstance(gain, torch.Tensor) else None
    flat = F.batch_norm(
        w.reshape(1, w.shape[0], -1), None, None, weight=scale, training=True, momentum=0.0, eps=m.eps
    )
    return flat.reshape_as(w)


@torch.no_grad()
def fold_weight_standardization(m: Any) -> None:
    """Turn the weight-standardised convolution ``m`` into the plain convolution it computes, in
    place: its weight becomes :func:`standardized_weight`, ``gain`` and the standardisation's
    attributes go, and its class becomes ``nn.Conv2d`` (timm's ``Conv2dSame`` when it pads
    "same" dynamically). Both are bases of timm's classes, so the object stays valid."""
    from timm.layers.conv2d_same import Conv2dSame

    w = standardized_weight(m)
    dynamic = bool(getattr(m, "same_pad", False))
    m._parameters["weight"] = nn.Parameter(w.clone(), requires_grad=m.weight.requires_grad)
    m._parameters.pop("gain", None)
    for a in ("eps", "scale", "gain_init", "same_pad"):
        m.__dict__.pop(a, None)
    m.__class__ = Conv2dSame if dynamic else nn.Conv2d
    m.__dict__[FOLDED] = 1


def _slim_std_conv(m: Any, rec: ModuleRecord, keep: torch.Tensor) -> None:
    """Cut like a convolution; fold the standardisation first when a filter loses inputs (a
    whole-group cut keeps every remaining filter's inputs)."""
    in_labels, out_labels = H._io(rec)
    in_idx = kept_positions(in_labels, keep)
    whole_groups = m.groups > 1 and rec.extra.get("grouped") != H.WITHIN_GROUPS
    if len(in_idx) < m.in_channels and not whole_groups:
        fold_weight_standardization(m)
        H._slim_conv(m, rec, keep)
        return
    out_idx = kept_positions(out_labels, keep)
    H._slim_conv(m, rec, keep)
    if isinstance(getattr(m, "gain", None), torch.Tensor):
        H._set_param(m, "gain", H._index(m.gain, 0, out_idx))


def _filters_std_conv(m: Any, rec: ModuleRecord) -> torch.Tensor:
    """The filters the layer really applies (standardised), one row per output channel."""
    w = standardized_weight(m).detach()
    return w.reshape(w.shape[0], -1)


def _prop_cond_conv(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> Any:
    """``CondConv2d(x, routing_weights)``: per sample, a convolution whose filters are the
    routing-weighted sum of ``num_experts`` expert filters. Channels flow as through the
    convolution the experts share (the routing weights, one per expert, stay whole: the
    caller freezes them). Its MACs: the convolution's plus mixing the experts' filters."""
    res = H._prop_conv(st, name, m, ids_in, out)
    if st.recording:  # the record _prop_conv filled (a masked pass counts nothing)
        extra, batch = st.records[name].extra, out.shape[0]
        extra["mix_weight_macs"] = extra.get("mix_weight_macs", 0) + batch * m.weight.numel()
        if m.bias is not None:
            extra["mix_bias_macs"] = extra.get("mix_bias_macs", 0) + batch * m.bias.numel()
    return res


def _cond_conv_as_conv(m: Any) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` holding the experts' filters side by side along the kernel's height
    (``(out, in/groups, experts * kh, kw)``) and their biases as ``(out, experts)``, so the
    convolution handler cuts every expert's filters the same way."""
    e, (kh, kw) = m.num_experts, m.kernel_size
    conv = nn.Conv2d.__new__(nn.Conv2d)
    nn.Module.__init__(conv)
    conv.in_channels, conv.out_channels, conv.groups = m.in_channels, m.out_channels, m.groups
    w = m.weight.detach().reshape(e, m.out_channels, m.in_channels // m.groups, kh, kw)
    conv.weight = nn.Parameter(w.permute(1, 2, 0, 3, 4).reshape(m.out_channels, -1, e * kh, kw))
    conv.bias = None if m.bias is None else nn.Parameter(m.bias.detach().t().contiguous())
    return conv


@torch.no_grad()
def _slim_cond_conv(m: Any, rec: ModuleRecord, keep: torch.Tensor) -> None:
    """Cut every expert's filters as the convolution handler cuts one convolution's."""
    e, (kh, kw) = m.num_experts, m.kernel_size
    conv = _cond_conv_as_conv(m)
    H._slim_conv(conv, rec, keep)
    out, per_group = conv.out_channels, conv.weight.shape[1]
    w = conv.weight.detach().reshape(out, per_group, e, kh, kw).permute(2, 0, 1, 3, 4).reshape(e, -1)
    m._parameters["weight"] = nn.Parameter(w.contiguous(), requires_grad=m.weight.requires_grad)
    if m.bias is not None and conv.bias is not None:
        b = conv.bias.detach().t().contiguous()
        m._parameters["bias"] = nn.Parameter(b, requires_grad=m.bias.requires_grad)
        m.bias_shape = (out,)
    m.in_channels, m.out_channels, m.groups = conv.in_channels, out, conv.groups
    m.weight_shape = (out, per_group, kh, kw)


def _cost_cond_conv(m: Any, rec: ModuleRecord) -> list[CostTerm]:
    """The convolution's terms, plus mixing the experts: the filters' part scales like the
    weights, the biases' like the outputs."""
    terms = list(H._cost_producer(m, rec))
    weight_labels = terms[0].scales_with
    terms.append(CostTerm(rec.extra.get("mix_weight_macs", 0), 0, weight_labels))
    terms.append(CostTerm(rec.extra.get("mix_bias_macs", 0), 0, (H._io(rec)[1],)))
    return terms


def _filters_cond_conv(m: Any, rec: ModuleRecord) -> torch.Tensor:
    """Every expert's filters of an output channel, one row per output channel."""
    w = _cond_conv_as_conv(m).weight.detach()
    return w.reshape(w.shape[0], -1)


def _prop_grn(st: LabelState, name: str, m: Any, ids_in: torch.Tensor, out: torch.Tensor) -> Any:
    """``GlobalResponseNorm`` (ConvNeXt-V2): per channel, its L2 norm over the positions divided
    by the mean of those norms over the channels, with a per-channel weight and bias. Cut like a
    layer norm: the mean is taken over the channels the layer has, so the slim layer's equals the
    original's over the kept ones (:func:`_masked_grn`)."""
    d = m.channel_dim % ids_in.dim()
    H._per_channel(st, name, st.channel_labels(ids_in, d, f"input of {name}"), "grn")
    return ids_in


def _masked_grn(m: Any, x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The layer with its mean over the kept channels only (as the slim layer computes it)."""
    keep = mask[ids].to(x.dtype)
    x = x * keep
    d = m.channel_dim % x.dim()
    g = x.norm(p=2, dim=m.spatial_dim, keepdim=True)
    kept = keep.amax(dim=m.spatial_dim, keepdim=True).sum(d, keepdim=True).clamp_min(1)
    n = g / (g.sum(d, keepdim=True) / kept + m.eps)
    return (x + torch.addcmul(m.bias.view(m.wb_shape), m.weight.view(m.wb_shape), x * n)) * keep


def _slim_grn(m: Any, rec: ModuleRecord, keep: torch.Tensor) -> None:
    H._slice_per_channel(m, rec, keep)


def _no_cost(m: Any, rec: ModuleRecord) -> list[Any]:
    """A container whose children's own handlers count its MACs and weights."""
    return []


def _register() -> None:
    from timm.layers import BatchNormAct2d, GroupNormAct
    from timm.layers import Linear as TimmLinear
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.mixed_conv2d import MixedConv2d

    for t in (BatchNormAct2d, getattr(sys.modules["timm.layers"], "SyncBatchNormAct", None)):
        if t is not None:
            register_handler(t, propagate=_prop_norm_act, slim=H._slim_norm, cost=H._cost_per_channel)
    register_handler(
        GroupNormAct, propagate=_prop_group_norm_act, slim=H._slim_group_norm, cost=H._cost_per_channel
    )
    register_handler(
        TimmLinear,
        propagate=H._prop_linear,
        slim=H._slim_linear,
        cost=H._cost_producer,
        filters=H._filters_linear,
    )
    register_handler(MixedConv2d, propagate=_prop_mixed_conv, slim=_slim_mixed_conv, cost=_no_cost)
    register_handler(
        Conv2dSame, propagate=H._prop_conv, slim=H._slim_conv, cost=H._cost_producer, filters=H._filters_conv
    )
    from timm.layers.cond_conv2d import CondConv2d
    from timm.layers.grn import GlobalResponseNorm

    register_handler(
        GlobalResponseNorm,
        propagate=_prop_grn,
        slim=_slim_grn,
        cost=H._cost_per_channel,
        masked_forward=_masked_grn,
    )

    register_handler(
        CondConv2d,
        propagate=_prop_cond_conv,
        slim=_slim_cond_conv,
        cost=_cost_cond_conv,
        filters=_filters_cond_conv,
        fixed_extra_inputs=True,
    )
    import timm.layers.std_conv as std

    for cname in _STD_CONVS:
        t = getattr(std, cname, None)
        if t is not None:
            register_handler(
                t,
                propagate=H._prop_conv,
                slim=_slim_std_conv,
                cost=H._cost_producer,
                filters=_filters_std_conv,
            )


def load_for(model: nn.Module) -> None:
    """Register the timm handlers once, if ``model`` holds a module of timm."""
    global _loaded
    if _loaded or "timm" not in sys.modules:
        return
    if any(type(m).__module__.startswith("timm.") for m in model.modules()):
        _loaded = True
        _register()
