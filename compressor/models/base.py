"""The model registry itself (kept apart from ``compressor.models`` so that the zoo, which
registers into it, does not import the package that imports the zoo)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compressor.registry import Registry

MODELS: Registry[Callable[..., Any]] = Registry("model")


def register_model(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an architecture factory under ``name`` (a decorator)."""
    return MODELS.register(name)
