"""The channel graph: torch.fx tracing, coupled-channel groups, slimming, FLOPs/params counting."""

from compressor.graph.engine import ChannelGraph, Cost, Group, build_graph, calibrate_bn, count, slim
from compressor.graph.widths import apply_widths, get_widths

__all__ = [
    "ChannelGraph",
    "Cost",
    "Group",
    "build_graph",
    "calibrate_bn",
    "count",
    "slim",
    "get_widths",
    "apply_widths",
]
