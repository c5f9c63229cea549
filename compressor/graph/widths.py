"""Architectures as data: a slimmed model is its factory + these per-module widths + a state_dict.

``get_widths`` records the structural integers every module stores itself; ``apply_widths``
rebuilds, in a freshly built model, every layer object whose widths or tensor shapes differ (a
copy of the layer with its own tables, put in place of the old one), so ``load_state_dict``
then fills them. Nothing is ever assigned through ``setattr``, so read-only properties (timm's
``ConvNormAct.in_channels``) are never written. No pickled module is ever needed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from compressor.errors import CheckpointError
from compressor.graph.timm_handlers import FOLDED, fold_weight_standardization, is_std_conv

STRUCT_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "num_features",
    "normalized_shape",
    "num_groups",
    "num_channels",
    "in_features",
    "out_features",
    "num_parameters",
    "embed_dim",
    "splits",  # timm's MixedConv2d: the channels of each part
    "weight_shape",  # timm's CondConv2d: one expert's filter shape
    "bias_shape",
    FOLDED,
)


def _own_attrs(m: nn.Module) -> dict[str, Any]:
    """The structural attributes ``m`` stores itself (in its ``__dict__``): never a property,
    such as timm's ``ConvNormAct.in_channels``, which only reports a child's width."""
    attrs: dict[str, Any] = {}
    for a in STRUCT_ATTRS:
        if a not in vars(m):
            continue
        v = vars(m)[a]
        if isinstance(v, bool):
            continue
        if isinstance(v, int):
            attrs[a] = v
        elif isinstance(v, (tuple, list)) and all(isinstance(i, int) for i in v):
            attrs[a] = list(v)
    return attrs


def get_widths(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per module name, the structural integers it stores itself (see :func:`_own_attrs`)."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = _own_attrs(m)
        if attrs:
            out[name] = attrs
    return out


def _rebuilt(m: nn.Module, attrs: dict[str, Any]) -> nn.Module:
    """A new layer object of ``m``'s class with ``attrs`` and ``m``'s everything else.

    The copy gets its own attribute, parameter, buffer and child tables, so ``m`` itself (and
    any other model sharing it) is left as it was; attributes are written into the new object's
    own table, never through ``setattr`` (which a read-only property would refuse).
    """
    new = copy.copy(m)
    new.__dict__ = dict(m.__dict__)
    for table in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
        if table in new.__dict__:
            new.__dict__[table] = copy.copy(new.__dict__[table])
    for a, v in attrs.items():
        cur = new.__dict__.get(a)
        if isinstance(cur, list):
            new.__dict__[a] = list(v)
        else:
            new.__dict__[a] = tuple(v) if isinstance(cur, tuple) or isinstance(v, list) else v
    return new


def _folded(m: nn.Module, name: str) -> nn.Module:
    """A folded copy of the weight-standardised convolution ``m`` (its weights are filled by
    ``load_state_dict`` afterwards)."""
    if not is_std_conv(m):
        raise CheckpointError(
            f"checkpoint widths say module {name!r} is a folded weight-standardised convolution, but the "
            f"architecture has a {type(m).__name__} there; was the checkpoint made from a different architecture?"
        )
    new = _rebuilt(m, {})
    fold_weight_standardization(new)
    return new


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` in place of the submodule ``name`` (every parent that holds it); returns the root."""
    if not name:
        return new
    old = model.get_submodule(name)
    for parent in model.modules():
        for key, child in list(parent._modules.items()):
            if child is old:
                parent._modules[key] = new
    return model


def apply_widths(
    model: nn.Module, widths: dict[str, dict[str, Any]], state_dict: dict[str, torch.Tensor]
) -> nn.Module:
    """Rebuild the layers of ``model`` whose widths differ from ``widths`` and size their
    parameters and buffers to the tensor shapes of ``state_dict`` (``load_state_dict`` then
    fills them). Returns the model (the same object unless the root itself changed).

    Attributes a module does not store itself (properties, or names a newer version of a
    library no longer has) are skipped: they follow from the children that are rebuilt.
    """
    for name, attrs in widths.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(
                f"checkpoint widths name module {name!r}, which architecture {type(model).__name__} does not have; "
                "was the checkpoint made from a different architecture?"
            ) from None
        if attrs.get(FOLDED) and FOLDED not in vars(m):
            m = _folded(m, name)
            model = _replace(model, name, m)
        own = _own_attrs(m)
        changed = {a: v for a, v in attrs.items() if a in own and own[a] != v}
        if changed:
            model = _replace(model, name, _rebuilt(m, changed))
    resized: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in state_dict.items():
        modname, _, pname = key.rpartition(".")
        try:
            owner = model.get_submodule(modname)
        except AttributeError:
            continue
        for table in ("_parameters", "_buffers"):
            cur = owner.__dict__[table].get(pname)
            if cur is None or tuple(cur.shape) == tuple(t.shape):
                continue
            fresh = torch.empty(t.shape, dtype=cur.dtype, device=cur.device)
            resized.setdefault(modname, {})[table + "." + pname] = (
                nn.Parameter(fresh, requires_grad=cur.requires_grad) if table == "_parameters" else fresh
            )
    for modname, tensors in resized.items():
        owner = model.get_submodule(modname)
        new = _rebuilt(owner, {})  # a new layer object, also when only its tensors change
        for tkey, v in tensors.items():
            table, _, pname = tkey.partition(".")
            new.__dict__[table][pname] = v
        model = _replace(model, modname, new)
    return model
