"""Shared fixtures (keep this small and generic; topic fixtures live in the test files)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def tiny_data() -> Any:
    """A tiny learnable DataBundle in memory: 4 classes of 1x16x16 images, 144/48/48 train/val/test.

    Each class is a smooth random pattern plus noise; a small CNN learns it in a few epochs.
    """
    from compressor.data import synthetic

    return synthetic(n=240, shape=(1, 16, 16), num_classes=4, seed=0)
