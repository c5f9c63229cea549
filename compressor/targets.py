"""Deploy targets: device profiles read from ``deploy_targets/<name>.toml`` (or a user's own file).

A target states what a compressed model must meet and how it is run::

    description = "..."                  # one line shown by `compress targets`
    base = "mobile"                      # optional: start from another target's values
    [budget]   flops, latency_ms, percentile, max_acc_drop
    [runtime]  provider, intra_op_threads, graph_optimization_level
    [input]    batch, shape
    [export]   opset, channel_multiple, dynamic_batch, precision

Every key has a default (see the dataclasses below), or the value of the ``base`` target when the
file names one, so a user's file may state only what differs.
Unknown tables or keys, wrong types, out-of-range values and unknown target names are a
:class:`~compressor.errors.UsageError` that names the bad value and lists what is valid.

>>> t = load_target("mobile", flops=0.4)      # CLI flags override the file
>>> t.budget.flops
0.4
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.errors import UsageError
from compressor.registry import did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: ONNX Runtime graph optimisation levels by their name in a target file.
OPT_LEVELS = ("disable", "basic", "extended", "all")

#: What a target may ship (``[export] precision``); see :mod:`compressor.export.quantize`.
PRECISIONS = ("fp32", "int8", "auto")

#: Opsets the exporter is allowed to target (torch's TorchScript exporter stops at 20).
MIN_OPSET, MAX_OPSET = 11, 20

_PACKAGE = "compressor.deploy_targets"


@dataclass(frozen=True)
class Budget:
    """What the compressed model must meet.

    ``flops``: fraction of the original FLOPs (multiply-accumulates) kept, in (0, 1].
    ``latency_ms``: ONNX Runtime latency at ``percentile`` for one batch of the target's input,
    measured on the machine that runs ``compress`` with the target's runtime settings; ``None``
    means the target sets no latency budget (latency is still measured and reported).
    ``max_acc_drop``: largest allowed top-1 accuracy drop against the original, in points.
    """

    flops: float = 0.5
    latency_ms: float | None = None
    percentile: float = 90.0
    max_acc_drop: float = 1.0


@dataclass(frozen=True)
class Runtime:
    """How ONNX Runtime runs the model: ``intra_op_threads`` 0 means ONNX Runtime's default
    (one per physical core); more threads than this machine has cores are capped when measuring."""

    provider: str = "CPUExecutionProvider"
    intra_op_threads: int = 1
    graph_optimization_level: str = "all"


@dataclass(frozen=True)
class Input:
    """``batch``: batch size the model is run (and timed) with; ``shape``: (C, H, W) used when
    the checkpoint does not record its input shape."""

    batch: int = 1
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Export:
    """``opset``: ONNX opset; ``channel_multiple``: kept widths are rounded to a multiple of this
    (1 = no rounding); ``dynamic_batch``: leave the batch dimension symbolic in the ONNX file;
    ``precision``: what ships, ``fp32``, ``int8`` (INT8 when within the accuracy budget, else a
    budget failure) or ``auto`` (INT8 only when it is accurate and measurably faster)."""

    opset: int = 17
    channel_multiple: int = 1
    dynamic_batch: bool = True
    precision: str = "fp32"


@dataclass(frozen=True)
class Target:
    """A deploy target: budget, runtime, input and export options (see the module docstring)."""

    name: str
    description: str = ""
    source: str = ""
    budget: Budget = field(default_factory=Budget)
    runtime: Runtime = field(default_factory=Runtime)
    input: Input = field(default_factory=Input)
    export: Export = field(default_factory=Export)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["input"]["shape"] is not None:
            d["input"]["shape"] = list(d["input"]["shape"])
        return d


_TABLES: dict[str, type] = {"budget": Budget, "runtime": Runtime, "input": Input, "export": Export}
_TOP_KEYS = ("description", "base")

#: ``load_target`` override name -> (table, key). CLI flags use the same names.
OVERRIDES: dict[str, tuple[str, str]] = {
    key.name: (table, key.name) for table, cls in _TABLES.items() for key in dataclasses.fields(cls)
}


# ---------------------------------------------------------------- lookup


def _package_dir() -> Any:
    from importlib import resources

    return resources.files(_PACKAGE)


def list_targets() -> list[str]:
    """Names of the targets shipped with the package (``deploy_targets/*.toml``)."""
    return sorted(p.name[: -len(".toml")] for p in _package_dir().iterdir() if p.name.endswith(".toml"))


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".toml") or os.sep in spec or "/" in spec or Path(spec).is_file()


def _read(spec: str) -> tuple[str, str, str]:
    """Return (name, source, text) for a target name or a path to a TOML file."""
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UsageError(
                f"target file {str(path)!r} does not exist; shipped targets: {', '.join(list_targets())}"
            )
        return path.stem, str(path), path.read_text(encoding="utf-8")
    names = list_targets()
    if spec not in names:
        raise UsageError(
            f"unknown target {spec!r}{did_you_mean(spec, names)}; valid: {', '.join(names)} (or a path to your own .toml file, "
            "see `compress targets`)"
        )
    res = _package_dir() / f"{spec}.toml"
    return spec, f"{_PACKAGE}/{spec}.toml", res.read_text(encoding="utf-8")


# ---------------------------------------------------------------- validation


#: What each key must be, as error messages say it.
_EXPECTED = {
    "flops": "a fraction of FLOPs kept in (0, 1], e.g. 0.5",
    "latency_ms": "a positive number of milliseconds (leave the key out for no latency budget)",
    "percentile": "a percentile in (0, 100], e.g. 50 or 90",
    "max_acc_drop": "a non-negative number of accuracy points, e.g. 1.0",
    "provider": "an ONNX Runtime execution provider name, e.g. 'CPUExecutionProvider'",
    "intra_op_threads": "an integer thread count >= 0 (0 = ONNX Runtime's default)",
    "graph_optimization_level": f"one of {', '.join(OPT_LEVELS)}",
    "batch": "an integer batch size >= 1",
    "shape": "a list of three positive integers [C, H, W], e.g. [3, 224, 224]",
    "opset": f"an integer ONNX opset from {MIN_OPSET} to {MAX_OPSET}",
    "channel_multiple": "an integer >= 1 (1 = no rounding)",
    "dynamic_batch": "true or false",
    "precision": f"one of {', '.join(PRECISIONS)}",
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _coerce(where: str, key: str, value: Any) -> Any:
    """Check one value's type and range; return it normalised (ints -> floats where floats are asked)."""
    ok = {
        "flops": lambda v: _is_num(v) and 0.0 < v <= 1.0,
        "latency_ms": lambda v: v is None or (_is_num(v) and v > 0),
        "percentile": lambda v: _is_num(v) and 0.0 < v <= 100.0,
        "max_acc_drop": lambda v: _is_num(v) and v >= 0.0,
        "provider": lambda v: isinstance(v, str) and v.endswith("ExecutionProvider"),
        "intra_op_threads": lambda v: _is_int(v) and v >= 0,
        "graph_optimization_level": lambda v: isinstance(v, str) and v in OPT_LEVELS,
        "batch": lambda v: _is_int(v) and v >= 1,
        "shape": lambda v: (
            v is None
            or (isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_int(s) and s > 0 for s in v))
        ),
        "opset": lambda v: _is_int(v) and MIN_OPSET <= v <= MAX_OPSET,
        "channel_multiple": lambda v: _is_int(v) and v >= 1,
        "dynamic_batch": lambda v: isinstance(v, bool),
        "precision": lambda v: isinstance(v, str) and v in PRECISIONS,
    }[key]
    if not ok(value):
        raise UsageError(f"{where}: {key} = {value!r} is invalid: expected {_EXPECTED[key]}")
    if key in ("flops", "latency_ms", "percentile", "max_acc_drop") and value is not None:
        return float(value)
    if key == "shape" and value is not None:
        return tuple(int(s) for s in value)
    return value


def _build(name: str, source: str, raw: dict[str, Any], overrides: dict[str, Any], _depth: int = 0) -> Target:
    where = source or name
    valid_top = ", ".join([*_TOP_KEYS, *(f"[{t}]" for t in _TABLES)])
    for key, value in raw.items():
        if key in _TABLES:
            if not isinstance(value, dict):
                raise UsageError(
                    f"{where}: {key!r} must be a table [{key}]; valid top-level entries: {valid_top}"
                )
        elif key not in _TOP_KEYS:
            raise UsageError(f"{where}: unknown key {key!r}; valid top-level entries: {valid_top}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise UsageError(f"{where}: description = {description!r} is invalid: expected a string")
    base_values: dict[str, dict[str, Any]] = {t: {} for t in _TABLES}
    if "base" in raw:
        base = raw["base"]
        if not isinstance(base, str):
            raise UsageError(f"{where}: base = {base!r} is invalid: expected a target name or path")
        if _depth > 8:
            raise UsageError(f"{where}: base targets nest more than 8 deep (a cycle?)")
        if _looks_like_path(base) and source and not Path(base).is_absolute():
            base = str(Path(source).parent / base)
        parent = _load(base, {}, _depth + 1).to_dict()
        base_values = {
            t: {k: _coerce(f"{where} base", k, v) for k, v in _drop_none(parent[t]).items()} for t in _TABLES
        }
        description = description or parent["description"]

    bad = sorted(set(overrides) - set(OVERRIDES))
    if bad:
        raise UsageError(f"unknown target override(s) {', '.join(bad)}; valid: {', '.join(OVERRIDES)}")

    parts: dict[str, Any] = {}
    for table, cls in _TABLES.items():
        values = dict(raw.get(table, {}))
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in valid:
                raise UsageError(f"{where}: unknown key {key!r} in [{table}]; valid: {', '.join(valid)}")
        kwargs = dict(base_values[table])
        kwargs.update({k: _coerce(f"{where} [{table}]", k, v) for k, v in values.items()})
        for key, value in overrides.items():
            if value is not None and OVERRIDES[key][0] == table:
                kwargs[key] = _coerce(f"override {key}", key, value)
        parts[table] = cls(**kwargs)
    return Target(name=name, description=description, source=source, **parts)


def parse_target(text: str, *, name: str = "custom", source: str = "", **overrides: Any) -> Target:
    """Parse a target from TOML text (what :func:`load_target` does after finding the file)."""
    return _parse(text, name, source, overrides, 0)


def _parse(text: str, name: str, source: str, overrides: dict[str, Any], depth: int) -> Target:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{source or name}: not valid TOML: {e}") from None
    return _build(name, source, raw, overrides, depth)


def _load(spec: str, overrides: dict[str, Any], depth: int) -> Target:
    name, source, text = _read(spec)
    return _parse(text, name, source, overrides, depth)


def load_target(name_or_path: str | os.PathLike[str] | Target, **overrides: Any) -> Target:
    """Load a shipped target by name (``mobile``) or a user's TOML file by path.

    ``overrides`` (``flops=``, ``latency_ms=``, ``max_acc_drop=``, ``intra_op_threads=``, ``opset=``,
    ... any key of the tables) replace the file's values; ``None`` means "not given" and keeps the
    file's value. A :class:`Target` passed in is returned with the overrides applied.
    """
    if isinstance(name_or_path, Target):
        t = name_or_path
        if not any(v is not None for v in overrides.values()):
            return t
        raw = t.to_dict()
        raw = {"description": raw["description"], **{k: _drop_none(raw[k]) for k in _TABLES}}
        return _build(t.name, t.source, raw, overrides)
    return _load(os.fspath(name_or_path), overrides, 0)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def target_summary(target: Target) -> dict[str, Any]:
    """A flat row for ``compress targets``: name, description and the figures people compare."""
    b, r, i, e = target.budget, target.runtime, target.input, target.export
    return {
        "name": target.name,
        "description": target.description,
        "flops": b.flops,
        "latency_ms": b.latency_ms,
        "percentile": b.percentile,
        "max_acc_drop": b.max_acc_drop,
        "provider": r.provider,
        "intra_op_threads": r.intra_op_threads,
        "graph_optimization_level": r.graph_optimization_level,
        "batch": i.batch,
        "shape": list(i.shape) if i.shape else None,
        "opset": e.opset,
        "channel_multiple": e.channel_multiple,
        "dynamic_batch": e.dynamic_batch,
    }
