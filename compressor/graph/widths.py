"""Architectures as data: a slimmed model is its factory + these per-module widths + a state_dict.

``get_widths`` records the structural attributes of every module; ``apply_widths`` sets them on a
freshly built model and resizes its parameters and buffers to the shapes of the state_dict,
so ``load_state_dict`` then fills them. No pickled module is ever needed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from compressor.errors import CheckpointError

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
)


def get_widths(model: nn.Module) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs: dict[str, Any] = {}
        for a in STRUCT_ATTRS:
            v = getattr(m, a, None)
            if isinstance(v, bool):
                continue
            if isinstance(v, int):
                attrs[a] = v
            elif isinstance(v, tuple) and all(isinstance(i, int) for i in v):
                attrs[a] = list(v)
        if attrs:
            out[name] = attrs
    return out


def apply_widths(
    model: nn.Module, widths: dict[str, dict[str, Any]], state_dict: dict[str, torch.Tensor]
) -> nn.Module:
    """Reshape ``model`` in place to ``widths`` and to the tensor shapes of ``state_dict``."""
    modules = dict(model.named_modules())
    for name, attrs in widths.items():
        m = modules.get(name)
        if m is None:
            raise CheckpointError(
                f"checkpoint widths name module {name!r}, which architecture {type(model).__name__} does not have; "
                "was the checkpoint made from a different architecture?"
            )
        for a, v in attrs.items():
            cur = getattr(m, a, None)
            setattr(m, a, tuple(v) if isinstance(cur, tuple) or isinstance(v, list) else v)
    for key, t in state_dict.items():
        modname, _, pname = key.rpartition(".")
        owner = modules.get(modname)
        if owner is None:
            continue
        if pname in owner._parameters and owner._parameters[pname] is not None:
            cur = owner._parameters[pname]
            if tuple(cur.shape) != tuple(t.shape):
                owner._parameters[pname] = nn.Parameter(
                    torch.empty(t.shape, dtype=cur.dtype, device=cur.device), requires_grad=cur.requires_grad
                )
        elif pname in owner._buffers and owner._buffers[pname] is not None:
            cur = owner._buffers[pname]
            if tuple(cur.shape) != tuple(t.shape):
                owner._buffers[pname] = torch.empty(t.shape, dtype=cur.dtype, device=cur.device)
    return model
