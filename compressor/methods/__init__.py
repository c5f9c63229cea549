"""Pruning methods, registered by name. Each turns a model + its channel graph (+ data) into a Plan.

A method is one module of this package that registers a :class:`~compressor.methods.spec.MethodSpec`
(its search function, a typed options dataclass, whether it needs data, whether it scores
candidates, what it adds to the report) with :func:`register_method`. The pipeline and the CLI
read their choices, options and help from :func:`list_methods` / :func:`get_method`, so adding a
method is one file in this package (found on first use) plus its tests.

>>> spec = get_method("l1-uniform")                                          # doctest: +SKIP
>>> plan = spec(model, graph, flops=0.5, multiple=8)                          # doctest: +SKIP
>>> plan = search(model, method="eagleeye", flops=0.5, data=bundle, candidates=20)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from compressor.errors import UsageError
from compressor.methods.spec import MethodContext, MethodSpec, SearchCost, option
from compressor.registry import Registry

METHODS: Registry[MethodSpec[Any]] = Registry("method")

#: The method ``compress search`` and ``compress run`` use when none is named.
DEFAULT_METHOD = "eagleeye"

#: Modules of this package that are not methods.
_NOT_METHODS = ("spec",)
_loaded = False


def _load() -> None:
    """Import every method module of this package (each registers its spec); on first use, so
    importing compressor stays light."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for m in pkgutil.iter_modules(__path__):
        if m.name not in _NOT_METHODS and not m.name.startswith("_"):
            importlib.import_module(f"{__name__}.{m.name}")


def register_method(spec: MethodSpec[Any]) -> MethodSpec[Any]:
    """Register ``spec`` under ``spec.name`` (a duplicate name is an error) and return it."""
    METHODS.register(spec.name)(spec)
    return spec


def list_methods() -> list[str]:
    _load()
    return METHODS.list()


def get_method(name: str) -> MethodSpec[Any]:
    """The registered :class:`MethodSpec`; an unknown name is a :class:`UsageError` listing the valid ones."""
    _load()
    return METHODS.get(name)


def check_flops(flops: float | None) -> None:
    if flops is not None and not (0.0 < float(flops) <= 1.0):
        raise UsageError(
            f"--flops {flops} is outside (0, 1]: it is the fraction of the original FLOPs to keep, e.g. 0.5"
        )


def search(
    model: Any,
    method: str = DEFAULT_METHOD,
    flops: float | None = 0.5,
    data: Any = None,
    *,
    graph: Any = None,
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    options: Any = None,
    context: MethodContext | None = None,
    **kwargs: Any,
) -> Any:
    """Find a :class:`~compressor.plan.Plan` for ``model`` with the named method.

    ``kwargs`` are the method's options (``candidates=20``...) and :class:`MethodContext` fields
    (``progress=False``...); ``input_shape`` is the tensor shape the graph is traced with
    (batch first), used when no ``graph`` is given.
    """
    from compressor.graph import build_graph

    spec = get_method(method)
    check_flops(flops)
    if graph is None:
        graph = build_graph(model, input_shape=input_shape)
    return spec(model, graph, flops=flops, data=data, seed=seed, options=options, context=context, **kwargs)


__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "MethodContext",
    "MethodSpec",
    "SearchCost",
    "check_flops",
    "get_method",
    "list_methods",
    "option",
    "register_method",
    "search",
]
