"""Pruning methods, registered by name. Each turns a model + its channel graph (+ data) into a Plan.

A method is a function ``fn(model, graph, *, flops, data=None, seed=0, **options) -> Plan``
registered with :func:`register_method`. The CLI reads its choices from :func:`list_methods`,
so adding a method never means editing the CLI.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from compressor.errors import UsageError
from compressor.registry import Registry

METHODS: Registry[Callable[..., Any]] = Registry("method")

# Modules that register methods; imported on first use so importing compressor stays light.
_METHOD_MODULES = (
    "compressor.methods.l1_uniform",
    "compressor.methods.eagleeye",
    "compressor.methods.epruner",
)
_loaded = False


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _METHOD_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def register_method(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return METHODS.register(name)


def list_methods() -> list[str]:
    _load()
    return METHODS.list()


def get_method(name: str) -> Callable[..., Any]:
    _load()
    return METHODS.get(name)


def check_flops(flops: float | None) -> None:
    if flops is not None and not (0.0 < float(flops) <= 1.0):
        raise UsageError(
            f"--flops {flops} is outside (0, 1]: it is the fraction of the original FLOPs to keep, e.g. 0.5"
        )


def search(
    model: Any,
    method: str = "eagleeye",
    flops: float | None = 0.5,
    data: Any = None,
    *,
    graph: Any = None,
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    **options: Any,
) -> Any:
    """Find a :class:`~compressor.plan.Plan` for ``model`` with the named method."""
    from compressor.graph import build_graph

    fn = get_method(method)
    check_flops(flops)
    if graph is None:
        graph = build_graph(model, input_shape=input_shape)
    return fn(model, graph, flops=flops, data=data, seed=seed, **options)
