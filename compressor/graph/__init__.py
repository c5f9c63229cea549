"""The channel graph: torch.fx tracing, coupled-channel groups, slimming, FLOPs/params counting.

Modules: ``ops`` (op tables), ``labels`` (:class:`LabelState`, the state handlers write to),
``registry`` (:func:`register_handler` and the handler contract), ``handlers`` (the built-in
handlers, registered on import), ``function_rules`` and ``propagate`` (the propagation pass),
``cost`` (the analytic cost model), ``channel_graph`` (:class:`ChannelGraph`), ``build``
(:func:`build_graph`, :func:`count`, :func:`calibrate_bn`), ``slim``, ``trace``, ``widths``.
"""

from compressor.graph import handlers as _builtin_handlers  # noqa: F401  (registers the built-in handlers)
from compressor.graph.build import build_graph, calibrate_bn, count
from compressor.graph.channel_graph import ChannelGraph, Group
from compressor.graph.cost import Cost, CostTerm, refine_counts
from compressor.graph.labels import LabelState, ModuleRecord
from compressor.graph.registry import (
    Handler,
    handler_for,
    is_handled,
    kept_positions,
    register_handler,
    registered_types,
    unregister_handler,
)
from compressor.graph.slim import slim
from compressor.graph.widths import apply_widths, get_widths

__all__ = [
    "ChannelGraph",
    "Cost",
    "CostTerm",
    "Group",
    "Handler",
    "LabelState",
    "ModuleRecord",
    "build_graph",
    "calibrate_bn",
    "count",
    "handler_for",
    "is_handled",
    "kept_positions",
    "refine_counts",
    "register_handler",
    "registered_types",
    "slim",
    "unregister_handler",
    "get_widths",
    "apply_widths",
]
