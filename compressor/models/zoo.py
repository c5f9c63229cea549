"""compressor's small registered architectures (owned by issue 3)."""
