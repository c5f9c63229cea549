"""Layer handlers: the plug-in point for module types the channel engine understands.

A handler tells the engine, for one module type, how channels flow through it (``propagate``),
how to cut it down to the kept channels (``slim``), what it costs (``cost``), which weights rank
its output channels (``filters``) and, rarely, how to run it on a masked input
(``masked_forward``). Only ``propagate`` is required. Register one with :func:`register_handler`;
the built-in handlers (:mod:`compressor.graph.handlers`) are registered the same way.

A module whose type (or a base class of it) has a handler is a leaf of the trace, unless it
overrides ``forward`` (then its forward is traced, so what it does is seen). A module without a
handler is traced through; a leaf without one (``build_graph(leaf_modules=...)``) freezes the
channels it touches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn as nn

from compressor.graph.cost import CostTerm
from compressor.graph.labels import LabelState, ModuleRecord


class Propagate(Protocol):
    """Follow channels through one call of ``module`` (named ``name``) on one tensor.

    ``ids_in`` is the input's id tensor (its shape, a label per element), ``out`` the real output.
    Return the output's id tensor (or a tuple of them, for a tuple output), shaped like ``out``.
    Use ``st`` to mint labels (:meth:`LabelState.module_space`), tie channels together
    (:meth:`LabelState.union`), freeze what cannot be pruned (:meth:`LabelState.freeze`) and
    fill the module's :class:`ModuleRecord` (:meth:`LabelState.record`): a producer sets
    ``in_labels``, ``out_labels`` and ``macs``; a per-channel module sets ``labels``. Called once
    per call of the module, also during a masked pass (``st.recording`` False, labels must come
    out the same). A result whose shape differs from ``out`` freezes the module's channels.
    """

    def __call__(
        self, st: LabelState, name: str, module: Any, ids_in: torch.Tensor, out: torch.Tensor, /
    ) -> Any: ...


class Slim(Protocol):
    """Cut ``module`` (a copy; change it in place) down to the kept channels.

    ``keep`` is a bool per label; the kept positions of a label tensor of ``record`` are
    ``torch.nonzero(keep[labels]).flatten()`` (:func:`kept_positions`). Replace parameters and
    buffers with sliced ones (keeping ``requires_grad``) and update the structural attributes
    (``out_channels``, ``num_features``, ...) so the module runs and is described correctly.
    """

    def __call__(self, module: Any, record: ModuleRecord, keep: torch.Tensor, /) -> None: ...


class CostFn(Protocol):
    """The module's MACs and parameters as :class:`CostTerm` s over the label sets of ``record``.

    The terms' unpruned ``macs`` plus the engine's FLOP count of everything unhandled make the
    model's total, so they must be what :func:`compressor.graph.count` measures for the module;
    parameters the terms leave out count as constant. Without a cost hook the module costs
    nothing that pruning changes.
    """

    def __call__(self, module: Any, record: ModuleRecord, /) -> Sequence[CostTerm]: ...


class Filters(Protocol):
    """The weights that produce each output channel, one row per entry of ``record.out_labels``
    (shape ``(len(out_labels), D)``): L1 importance and EPruner's channel vectors read them."""

    def __call__(self, module: Any, record: ModuleRecord, /) -> torch.Tensor: ...


class MaskedForward(Protocol):
    """Run ``module`` on ``x`` during a masked pass, where ``mask[ids]`` flags kept elements;
    needed only when zeroed channels would still change the kept ones (LayerNorm statistics)."""

    def __call__(
        self, module: Any, x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, /
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class Handler:
    """The hooks registered for ``module_type``. Calling a hook with a module that is not a
    ``module_type`` raises :class:`TypeError` (a handler never mis-slices another kind of layer)."""

    module_type: type[nn.Module]
    propagate_fn: Propagate
    slim_fn: Slim | None = None
    cost_fn: CostFn | None = None
    filters_fn: Filters | None = None
    masked_forward_fn: MaskedForward | None = None
    #: the module takes further tensor inputs after the first (CondConv's routing weights):
    #: their channels are frozen, the first input is followed by ``propagate``
    fixed_extra_inputs: bool = False

    def _expect(self, module: Any, what: str) -> None:
        if not isinstance(module, self.module_type):
            raise TypeError(
                f"{what}: the handler for {self.module_type.__name__} got a {type(module).__name__}"
            )

    def propagate(
        self, st: LabelState, name: str, module: Any, ids_in: torch.Tensor, out: torch.Tensor
    ) -> Any:
        self._expect(module, name)
        return self.propagate_fn(st, name, module, ids_in, out)

    def slim(self, module: Any, record: ModuleRecord, keep: torch.Tensor) -> None:
        self._expect(module, record.name)
        if self.slim_fn is not None:
            self.slim_fn(module, record, keep)

    def cost(self, module: Any, record: ModuleRecord) -> Sequence[CostTerm]:
        self._expect(module, record.name)
        return self.cost_fn(module, record) if self.cost_fn is not None else ()

    def filters(self, module: Any, record: ModuleRecord) -> torch.Tensor | None:
        self._expect(module, record.name)
        return self.filters_fn(module, record) if self.filters_fn is not None else None

    def masked_forward(
        self, module: Any, x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        self._expect(module, type(module).__name__)
        if self.masked_forward_fn is None:
            return module(x)
        return self.masked_forward_fn(module, x, ids, mask)


_HANDLERS: dict[type[nn.Module], Handler] = {}


def register_handler(
    module_type: type[nn.Module],
    *,
    propagate: Propagate,
    slim: Slim | None = None,
    cost: CostFn | None = None,
    filters: Filters | None = None,
    masked_forward: MaskedForward | None = None,
    fixed_extra_inputs: bool = False,
    replace: bool = False,
) -> Handler:
    """Teach the channel engine the module type ``module_type`` (and its subclasses).

    The hooks' contracts are the Protocols of this module: :class:`Propagate` (required),
    :class:`Slim`, :class:`CostFn`, :class:`Filters`, :class:`MaskedForward`. A type already
    registered is an error unless ``replace=True``. ``fixed_extra_inputs``: the module is also
    called with further tensors after the first (CondConv's routing weights), whose channels
    then stay as they are. A subclass is handled by the handler of its
    nearest registered base class, and only if it does not override ``forward``.

    >>> register_handler(MyNorm, propagate=per_channel_propagate, slim=per_channel_slim,
    ...                  cost=per_channel_cost)
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_handler needs an nn.Module subclass, got {module_type!r}")
    if not callable(propagate):
        raise TypeError(f"register_handler({module_type.__name__}): propagate must be callable")
    for hook_name, hook in (
        ("slim", slim),
        ("cost", cost),
        ("filters", filters),
        ("masked_forward", masked_forward),
    ):
        if hook is not None and not callable(hook):
            raise TypeError(f"register_handler({module_type.__name__}): {hook_name} must be callable")
    if module_type in _HANDLERS and not replace:
        raise ValueError(
            f"a channel handler for {module_type.__module__}.{module_type.__qualname__} is already "
            "registered; pass replace=True to replace it"
        )
    h = Handler(module_type, propagate, slim, cost, filters, masked_forward, fixed_extra_inputs)
    _HANDLERS[module_type] = h
    return h


def unregister_handler(module_type: type[nn.Module]) -> None:
    """Forget the handler registered for exactly ``module_type`` (KeyError if there is none)."""
    try:
        del _HANDLERS[module_type]
    except KeyError:
        raise KeyError(f"no channel handler is registered for {module_type.__name__}") from None


def handler_for(module: nn.Module) -> Handler | None:
    """The handler of ``module``'s type, or of the nearest registered base class (None if none)."""
    for base in type(module).__mro__:
        h = _HANDLERS.get(base)
        if h is not None:
            return h
    return None


def is_handled(module: nn.Module) -> bool:
    """Whether the engine treats ``module`` as one op: it has a handler and does not override the
    handled type's ``forward``."""
    h = handler_for(module)
    return h is not None and type(module).forward is h.module_type.forward


def registered_types() -> list[type[nn.Module]]:
    """Every module type with a handler, in registration order."""
    return list(_HANDLERS)


def kept_positions(labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Positions in ``labels`` whose label is kept (for :class:`Slim` hooks)."""
    return torch.nonzero(keep[labels], as_tuple=False).flatten()


__all__ = [
    "CostFn",
    "Filters",
    "Handler",
    "MaskedForward",
    "Propagate",
    "Slim",
    "handler_for",
    "is_handled",
    "kept_positions",
    "register_handler",
    "registered_types",
    "unregister_handler",
]
