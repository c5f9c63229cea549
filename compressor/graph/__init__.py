"""The channel graph: torch.fx tracing, coupled-channel groups, slimming, FLOPs/params counting."""
