"""Test tools that ship with the package: the channel-graph fuzzer (``compressor.testing.fuzz``)."""
