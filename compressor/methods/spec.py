"""What a pruning method declares: :class:`MethodSpec`, its typed options, and the shared context.

A method is one module in ``compressor/methods/`` that defines

* an options dataclass: one field per option, with its default and a help text
  (``option(default, "help")``); invalid values raise :class:`UsageError` in ``__post_init__``;
* a search function ``search(model, graph, *, flops, data, seed, options, context) -> Plan``;
* a :class:`MethodSpec` registered with :func:`compressor.methods.register_method`, which says
  whether the method needs data, whether it scores candidates (and writes them to
  ``context.candidates_file``, resumable), and what it adds to the run report.

Nothing outside ``compressor/methods/`` branches on a method's name: the pipeline and the CLI
read these declarations. Options reach a method only through its options dataclass; a name it
does not declare is a :class:`UsageError` listing the ones it does.

This module imports neither torch nor numpy.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar, get_args, get_origin

from compressor.errors import UsageError

OptionsT = TypeVar("OptionsT")


def option(default: Any, help: str) -> Any:
    """A field of an options dataclass: its default and the help text the CLI shows."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class CostBudget:
    """The constraint a method searches under, over kept channel counts per prunable group.

    ``kind``: what is measured (``"flops"`` or ``"latency"``); ``fraction``: the most a plan may
    cost, as a fraction of the full model; ``cost(counts)``: a plan's cost as such a fraction
    (absent groups keep every channel); ``snap(counts)``: optional, raises counts to where the cost
    actually steps up (channels that cost nothing); ``model``: what computes the cost (the
    :class:`~compressor.latency.LatencyModel` for latency), for methods that need per-layer terms.
    """

    kind: str
    fraction: float
    cost: Callable[[Mapping[str, int]], float]
    snap: Callable[[Mapping[str, int]], dict[str, int]] | None = None
    model: Any = None

    def snapped(self, counts: Mapping[str, int]) -> dict[str, int]:
        """``counts`` raised by :attr:`snap` (the channels that cost nothing) when that stays
        within the budget, else unchanged."""
        out = dict(counts)
        if self.snap is not None:
            raised = self.snap(out)
            if self.cost(raised) <= self.fraction:
                return raised
        return out


def flops_budget(graph: Any, fraction: float) -> CostBudget:
    """A FLOPs budget: ``cost`` is the analytic MACs of the counts over the full model's."""
    full = float(graph.full.macs)
    return CostBudget("flops", float(fraction), lambda counts: graph.cost_of_counts(dict(counts)).macs / full)


@dataclass(frozen=True)
class MethodContext:
    """What every method may be handed besides its options (none of it changes the plan).

    ``progress``: show a progress bar; ``candidates_file``: where a method that scores candidates
    appends each one as it is scored (a rerun resumes from it); ``meta``: the checkpoint's meta
    (to load a data spec given as a string with the model's shape and normalisation);
    ``budget``: a cost constraint other than FLOPs (predicted latency: :class:`CostBudget`); when
    set, a method meets ``budget.fraction`` of that cost instead of the ``flops`` argument.
    """

    progress: bool = True
    candidates_file: str | os.PathLike[str] | None = None
    meta: Mapping[str, Any] | None = None
    budget: CostBudget | None = None


CONTEXT_FIELDS = tuple(f.name for f in dataclasses.fields(MethodContext))


class SearchFn(Protocol):
    """The contract of a method's search function."""

    def __call__(
        self,
        model: Any,
        graph: Any,
        *,
        flops: float | None,
        data: Any,
        seed: int,
        options: Any,
        context: MethodContext,
    ) -> Any: ...


@dataclass(frozen=True)
class SearchCost:
    """What a dry run knows when it estimates a search: the FLOPs target, the data split sizes and
    the measured seconds per image of one forward pass of the full model."""

    flops: float
    n_train: int
    n_val: int
    seconds_per_image: float


@dataclass(frozen=True)
class OptionInfo:
    """One option as the CLI and the docs show it."""

    name: str
    type: str
    default: Any
    help: str


@dataclass(frozen=True)
class MethodSpec(Generic[OptionsT]):
    """A registered pruning method.

    ``name``: what ``--method`` takes; ``search``: the function (:class:`SearchFn`);
    ``options``: the options dataclass; ``summary``: one line for ``--help``;
    ``needs_data``: the method scores on data and fails without it (every method is handed the
    run's data; the others ignore it); ``scores_candidates``: it evaluates many candidates, writes
    each to ``context.candidates_file`` with a ``score``, and a rerun resumes from the file
    (the run ranks those candidates when it must pick another for a latency budget; a method that
    does not score candidates is asked again at lower FLOPs instead);
    ``score_label``: the y-axis of the report's candidate plot; ``describe(info)``: a sentence
    fragment for the report's search summary from ``plan.info``; ``estimate(options, cost)``:
    seconds and a description for ``compress run --dry-run``.
    """

    name: str
    search: SearchFn
    options: type[OptionsT]
    summary: str
    needs_data: bool = False
    scores_candidates: bool = False
    score_label: str = "score"
    describe: Callable[[Mapping[str, Any]], str] | None = None
    estimate: Callable[[OptionsT, SearchCost], tuple[float, str]] | None = None

    # ---------------------------------------------------------------------------- options
    def option_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.options)]  # type: ignore[arg-type]

    def has_option(self, name: str) -> bool:
        return name in self.option_names()

    def option_info(self) -> list[OptionInfo]:
        hints = typing.get_type_hints(self.options)
        return [
            OptionInfo(f.name, _type_text(hints[f.name]), f.default, str(f.metadata.get("help", "")))
            for f in dataclasses.fields(self.options)  # type: ignore[arg-type]
        ]

    def make_options(
        self, values: Mapping[str, Any] | None = None, *, base: OptionsT | None = None
    ) -> OptionsT:
        """An options object from ``values`` (over ``base``, else the defaults), each value
        checked against its field's type (ints are accepted for floats; strings from a command
        line are parsed: see :func:`parse_option`)."""
        values = dict(values or {})
        self.check_names(values)
        hints = typing.get_type_hints(self.options)
        checked = {k: _check_value(self.name, k, v, hints[k]) for k, v in values.items()}
        if base is not None:
            return dataclasses.replace(base, **checked)  # type: ignore[type-var]
        return self.options(**checked)

    def check_names(self, names: Mapping[str, Any] | list[str]) -> None:
        unknown = sorted(n for n in names if not self.has_option(n))
        if unknown:
            valid = ", ".join(self.option_names()) or "(none)"
            raise UsageError(
                f"unknown option(s) for method {self.name!r}: {', '.join(unknown)}; valid: {valid}"
            )

    def parse_option(self, text: str) -> tuple[str, Any]:
        """``"key=value"`` from a command line as ``(key, typed value)``."""
        key, sep, raw = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--option {text!r} is not KEY=VALUE, e.g. --option {self._example()}")
        self.check_names([key])
        hint = typing.get_type_hints(self.options)[key]
        return key, _check_value(self.name, key, _parse_text(raw.strip(), hint), hint)

    def _example(self) -> str:
        info = self.option_info()
        return f"{info[0].name}={info[0].default}" if info else "key=value"

    # ---------------------------------------------------------------------------- running
    def __call__(
        self,
        model: Any,
        graph: Any,
        *,
        flops: float | None,
        data: Any = None,
        seed: int = 0,
        options: OptionsT | None = None,
        context: MethodContext | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the method. Keyword arguments are option fields (over ``options``) or
        :class:`MethodContext` fields (over ``context``): ``spec(model, graph, flops=0.5, candidates=5,
        progress=False)``."""
        ctx_values = {k: kwargs.pop(k) for k in list(kwargs) if k in CONTEXT_FIELDS}
        opts = self.make_options(kwargs, base=options)
        ctx = dataclasses.replace(context or MethodContext(), **ctx_values)
        return self.search(model, graph, flops=flops, data=data, seed=seed, options=opts, context=ctx)

    def cost(self, options: OptionsT, cost: SearchCost) -> tuple[float, str]:
        """(seconds, what) of the search for a dry run."""
        if self.estimate is not None:
            return self.estimate(options, cost)
        return 5.0, f"{self.name} at {cost.flops:g} FLOPs"


# -------------------------------------------------------------------------------- type checking
def _union_args(hint: Any) -> tuple[Any, ...] | None:
    if get_origin(hint) in (typing.Union, types.UnionType):
        return get_args(hint)
    return None


def _type_text(hint: Any) -> str:
    args = _union_args(hint)
    if args is not None:
        return " | ".join(_type_text(a) for a in args)
    if hint is type(None):
        return "none"
    if get_origin(hint) is Literal:
        return "|".join(str(a) for a in get_args(hint))
    origin = get_origin(hint)
    if origin is not None:
        inner = get_args(hint)
        return f"list of {_type_text(inner[0])}" if inner else "list"
    return getattr(hint, "__name__", str(hint))


def _check_value(method: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` if it fits ``hint`` (an int for a float is converted), else a UsageError."""
    ok, converted = _fits(value, hint)
    if not ok:
        raise UsageError(
            f"option {key} = {value!r} of method {method!r} is invalid: expected {_type_text(hint)}"
        )
    return converted


def _fits(value: Any, hint: Any) -> tuple[bool, Any]:
    args = _union_args(hint)
    if args is not None:
        for a in args:
            ok, v = _fits(value, a)
            if ok:
                return True, v
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is Any:
        return True, value
    if get_origin(hint) is Literal:
        return value in get_args(hint), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    origin = get_origin(hint)
    if origin is not None and get_args(hint):  # Sequence[str], list[str], tuple[str, ...]
        inner = get_args(hint)[0]
        if isinstance(value, (list, tuple)):
            items = [_fits(v, inner) for v in value]
            return all(ok for ok, _ in items), [v for _, v in items]
        return False, value
    return isinstance(value, hint) if isinstance(hint, type) else True, value


def _parse_text(raw: str, hint: Any) -> Any:
    """A command-line string as the value ``hint`` wants (``none``, ``true``/``false``, numbers,
    comma-separated lists); left a string when nothing fits (the type check then says so)."""
    args = _union_args(hint) or (hint,)
    low = raw.lower()
    if type(None) in args and low in ("none", "null", ""):
        return None
    for a in args:
        if a is bool and low in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return low in ("true", "yes", "1", "on")
        if a is int:
            try:
                return int(raw)
            except ValueError:
                pass
        if a is float:
            try:
                return float(raw)
            except ValueError:
                pass
        if get_origin(a) is not None and get_origin(a) is not Literal and get_args(a):
            return [t.strip() for t in raw.split(",") if t.strip()]
    return raw


__all__ = [
    "CONTEXT_FIELDS",
    "CostBudget",
    "flops_budget",
    "MethodContext",
    "MethodSpec",
    "OptionInfo",
    "SearchCost",
    "SearchFn",
    "option",
]
