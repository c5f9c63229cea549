"""The settings of one run: ONE dataclass, :class:`Settings`, says everything about each setting.

Each field carries (in ``dataclasses.field(metadata=...)``, written with :func:`setting`) its
default, whether it is a key of the ``--config`` TOML file (its TOML type follows from the
annotation), whether it belongs to the resume fingerprint (a rerun into the same ``out`` with
another value is refused), whether its value comes from the deploy target (``from_target``:
the config or a flag overrides the target's value), and its checks (a minimum, choices, or a
function). :data:`DEFAULTS`, :data:`CONFIG_KEYS`, :data:`FINGERPRINT_KEYS` and
:func:`resolve_settings` are all derived from it, so a new setting is one field.

Precedence: the deploy target < the ``--config`` file < the arguments (flags).
"""

from __future__ import annotations

import dataclasses
import operator
import os
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from compressor.errors import UsageError

#: Fine-tuning learning rate when neither the run nor the checkpoint's recipe gives one (the
#: papers' fine-tuning learning rate: EagleEye, EPruner).
FALLBACK_LR = 0.01


@dataclass(frozen=True)
class SettingInfo:
    """What :class:`Settings` knows about one of its fields (the field's metadata)."""

    config: bool = True  # a key of the --config TOML file
    fingerprint: bool = True  # part of the resume fingerprint
    from_target: str | None = None  # attribute path in the loaded Target ("budget.flops")
    minimum: float | None = None
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], None] | None = None  # raises UsageError for a bad value
    help: str = ""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    config: bool = True,
    fingerprint: bool = True,
    from_target: str | None = None,
    minimum: float | None = None,
    choices: tuple[Any, ...] | None = None,
    check: Callable[[Any], None] | None = None,
    help: str = "",
) -> Any:
    """A :class:`Settings` field (see :class:`SettingInfo` for the arguments)."""
    info = SettingInfo(config, fingerprint, from_target, minimum, choices, check, help)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"setting": info})


# ------------------------------------------------------------------------------------- checks
def _check_flops(v: Any) -> None:
    from compressor.methods import check_flops

    check_flops(v)


def _check_latency_ms(v: Any) -> None:
    if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
        raise UsageError(f"--latency-ms {v} must be a positive number of milliseconds")


def _check_latency(v: Any) -> None:
    if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1):
        raise UsageError(
            f"--latency {v} is outside (0, 1]: it is the fraction of the original's measured latency, e.g. 0.5"
        )


def _check_method(v: Any) -> None:
    from compressor.methods import get_method

    get_method(v)  # an unknown name lists the registered ones


def _check_device(v: Any) -> None:
    from compressor.device import check_device_name

    check_device_name(v)


def _check_lr(v: Any) -> None:
    if v is not None and not v > 0:
        raise UsageError(f"lr {v} must be positive")


def _check_input_shape(v: Any) -> None:
    if v is not None:
        from compressor.shapes import sample_shape

        sample_shape(v, what="input_shape")


def _check_norm(v: Any) -> None:
    if v is not None and (
        not v or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    ):
        raise UsageError(
            f"mean/std {v!r} must be a list of numbers, one per input channel (e.g. 0.5,0.5,0.5)"
        )


@dataclass
class Settings:
    """Resolved settings of one run (target < config file < flags)."""

    checkpoint: str = setting("", config=False, fingerprint=False, help="the checkpoint file")
    target: str = setting("", help="deploy target name or .toml file")
    method: str = setting("eagleeye", check=_check_method, help="registered pruning method")
    flops: float = setting(
        0.5, from_target="budget.flops", check=_check_flops, help="fraction of the FLOPs to keep"
    )
    latency_ms: float | None = setting(
        None, from_target="budget.latency_ms", check=_check_latency_ms, help="latency budget (ms)"
    )
    latency: float | None = setting(
        None, check=_check_latency, help="latency budget as a fraction of the original's measured latency"
    )
    latency_objective: bool = setting(
        False, help="search under predicted latency (set by --latency or --latency-ms on the command line)"
    )
    percentile: float = setting(90.0, from_target="budget.percentile", help="latency percentile")
    max_acc_drop: float = setting(1.0, from_target="budget.max_acc_drop", help="largest top-1 drop (points)")
    data: str | None = setting(None, help="data spec (default: the checkpoint's dataset)")
    epochs: int = setting(10, minimum=0, help="fine-tuning epochs (0 skips fine-tuning)")
    threads: int = setting(
        0, minimum=0, fingerprint=False, help="CPU threads (0: measured at the start of each heavy stage)"
    )
    device: str = setting("auto", fingerprint=False, check=_check_device, help="auto, cpu, cuda or cuda:N")
    seed: int = setting(0, help="random seed")
    out: str = setting("out", fingerprint=False, help="output folder")
    candidates: int = setting(20, minimum=1, help="candidates a scoring method evaluates")
    calib_batches: int = setting(10, minimum=1, help="adaptive-BN calibration batches per candidate")
    top_k: int = setting(3, minimum=1, help="fine-tune at most K finalists 1 epoch each, keep the best")
    batch_size: int = setting(64, minimum=1, help="batch size of fine-tuning and calibration")
    lr: float | None = setting(
        None,
        check=_check_lr,
        help="fine-tuning learning rate (default: the checkpoint's recipe scaled to the batch, else 0.01)",
    )
    distill: bool = setting(False, help="fine-tune with the original model as teacher")
    latency_candidates: int = setting(4, minimum=1, help="plans timed against a latency budget")
    flops_tolerance: float = setting(0.01, help="relative slack on the FLOPs budget")
    arch: str | None = setting(None, help="architecture of a bare state_dict")
    arch_args: dict[str, Any] = setting(
        default_factory=dict, help="keyword arguments of the architecture's factory (num_classes = 3)"
    )
    input_shape: list[int] | None = setting(
        None,
        check=_check_input_shape,
        help="model input C,H,W (default: the checkpoint's, the target's, else the data's)",
    )
    mean: list[float] | None = setting(
        None,
        check=_check_norm,
        help="per-channel normalisation mean (default: the checkpoint's, else the data's)",
    )
    std: list[float] | None = setting(
        None,
        check=_check_norm,
        help="per-channel normalisation std (default: the checkpoint's, else the data's)",
    )
    replace_head: bool = setting(
        False, help="replace the classifier head when the data has another class count (then fine-tune)"
    )
    exclude: list[str] = setting(
        default_factory=list, help="glob patterns of module names whose output channels are never pruned"
    )
    channel_multiple: int = setting(
        1, config=False, from_target="export.channel_multiple", help="kept widths rounded to this multiple"
    )
    batch: int = setting(1, config=False, fingerprint=False, from_target="input.batch", help="batch exported")
    precision: str = setting(
        "fp32",
        from_target="export.precision",
        help="what ships: fp32, int8 or auto (INT8 only when accurate and >= 10% faster)",
    )
    int8_calib_batches: int = setting(
        8, minimum=1, help="INT8 calibration batches (32 training images each, seeded)"
    )
    int8_latency_repeats: int = setting(
        3, minimum=1, fingerprint=False, help="interleaved timing repeats of the INT8 latency gate"
    )
    method_options: dict[str, Any] = setting(
        default_factory=dict, help="options of the method (its options dataclass)"
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        d = self.to_dict()
        return {k: d[k] for k in FINGERPRINT_KEYS}


def info(f: dataclasses.Field[Any]) -> SettingInfo:
    return typing.cast(SettingInfo, f.metadata["setting"])


FIELDS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(Settings)
_HINTS = typing.get_type_hints(Settings)


def _toml_types(hint: Any) -> tuple[type, ...]:
    """The TOML value types a field of type ``hint`` accepts (an int is a valid float)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(hint) if a is not type(None) for t in _toml_types(a))
    base = typing.get_origin(hint) or hint
    return (float, int) if base is float else (base,)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


#: Defaults of the settings a config file or flag may set and the target does not.
DEFAULTS: dict[str, Any] = {
    f.name: _default(f) for f in FIELDS if info(f).config and not info(f).from_target and f.name != "target"
}

#: Keys a ``--config`` TOML file may set (flat), with their types. ``[method_options]`` is a
#: table checked against the method's options dataclass.
CONFIG_KEYS: dict[str, tuple[type, ...]] = {
    f.name: _toml_types(_HINTS[f.name]) for f in FIELDS if info(f).config
}

#: Settings that define what a run produces (its fingerprint); the device and out folder do not.
FINGERPRINT_KEYS: tuple[str, ...] = tuple(f.name for f in FIELDS if info(f).fingerprint)

#: Config keys that override the deploy target (``load_target(name, **overrides)``).
TARGET_OVERRIDES: tuple[str, ...] = tuple(f.name for f in FIELDS if info(f).config and info(f).from_target)


#: The tables of a target file a config file may also use (the same layout): table -> {key: setting}.
TARGET_TABLES: dict[str, dict[str, str]] = {
    "budget": {
        "flops": "flops",
        "latency_ms": "latency_ms",
        "percentile": "percentile",
        "max_acc_drop": "max_acc_drop",
    },
    "input": {"shape": "input_shape"},
}


def _flatten_layout(p: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """One layout for config and target files: run settings flat or under ``[run]``, budgets under
    ``[budget]``, the input shape as ``[input] shape``; ``[method_options]`` stays a table."""
    flat: dict[str, Any] = {}
    for k, v in raw.items():
        if k == "run" and isinstance(v, dict):
            flat.update(v)
        elif k in TARGET_TABLES and isinstance(v, dict):
            for kk, vv in v.items():
                if kk not in TARGET_TABLES[k]:
                    valid = ", ".join(TARGET_TABLES[k])
                    raise UsageError(
                        f"{p}: [{k}] {kk} is not a run setting (valid in [{k}]: {valid}); deploy settings "
                        "such as [runtime] and [export] belong in a target file (--target my.toml)"
                    )
                flat[TARGET_TABLES[k][kk]] = vv
        elif k in ("runtime", "export") and isinstance(v, dict):
            raise UsageError(
                f"{p}: [{k}] is a deploy-target table; put it in a target file (--target my.toml, layout as "
                "deploy_targets/*.toml) and keep run settings in --config"
            )
        else:
            flat[k] = v
    return flat


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a run config TOML: keys of :data:`CONFIG_KEYS` (flat or under ``[run]``; budgets
    may sit under ``[budget]`` and the shape under ``[input]`` as in a target file); unknown keys
    are an error."""
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {str(p)!r} does not exist")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config file {str(p)!r} is not valid TOML: {e}") from e
    raw = _flatten_layout(p, raw)
    for k, v in raw.items():
        if k not in CONFIG_KEYS:
            raise UsageError(f"{p}: unknown key {k!r}; valid keys: {', '.join(sorted(CONFIG_KEYS))}")
        types_ = CONFIG_KEYS[k]
        if isinstance(v, bool) and bool not in types_ or not isinstance(v, types_):
            want = " or ".join(t.__name__ for t in types_)
            raise UsageError(f"{p}: {k} = {v!r} is invalid: expected {want}")
    return raw


def _coerce(hint: Any, value: Any) -> Any:
    """A merged value as the field's type (an int given for a float becomes a float)."""
    if value is None:
        return None
    base = [t for t in _toml_types(hint)][0]
    return dict(value) if base is dict else base(value)


def _validate(f: dataclasses.Field[Any], value: Any) -> None:
    i = info(f)
    if i.check is not None:
        i.check(value)
    if i.minimum is not None and value is not None and value < i.minimum:
        raise UsageError(f"--{f.name.replace('_', '-')} {value} must be at least {i.minimum:g}")
    if i.choices is not None and value not in i.choices:
        raise UsageError(
            f"--{f.name.replace('_', '-')} {value!r} is not one of: {', '.join(map(str, i.choices))}"
        )


def resolve_settings(
    checkpoint: str | os.PathLike[str],
    flags: dict[str, Any],
    config: str | os.PathLike[str] | None,
    *,
    method_options: dict[str, Any] | None = None,
) -> tuple[Settings, Any]:
    """Merge target < config < flags (``None`` flags are "not given"); ``method_options`` go over
    the config's ``[method_options]``. Returns (settings, target)."""
    from compressor.targets import list_targets, load_target

    cfg = load_config(config) if config is not None else {}
    unknown = sorted(set(flags) - {f.name for f in FIELDS})
    if unknown:
        raise TypeError(f"not a run setting: {', '.join(unknown)}")
    merged: dict[str, Any] = {**cfg, **{k: v for k, v in flags.items() if v is not None}}
    if method_options:
        merged["method_options"] = {**(merged.get("method_options") or {}), **method_options}
    target_name = merged.get("target")
    if not target_name:
        raise UsageError(
            f"no deploy target: pass --target NAME (valid: {', '.join(list_targets())}) or a .toml path"
        )
    by_name = {f.name: f for f in FIELDS}
    overrides = {k: merged[k] for k in TARGET_OVERRIDES if k in merged}
    for k, v in overrides.items():  # checked before the target is loaded with them
        check = info(by_name[k]).check
        if check is not None:
            check(v)
    target = load_target(
        str(target_name), **{k: v if isinstance(v, str) else float(v) for k, v in overrides.items()}
    )

    values: dict[str, Any] = {}
    for f in FIELDS:
        i = info(f)
        if f.name == "checkpoint":
            v: Any = str(checkpoint)
        elif i.from_target:
            v = operator.attrgetter(i.from_target)(target)
        else:
            v = merged.get(f.name, _default(f))
        values[f.name] = _coerce(_HINTS[f.name], v)
    values["target"] = str(target_name)
    for f in FIELDS:
        if not info(f).from_target:
            _validate(f, values[f.name])
    s = Settings(**values)
    from compressor.methods import get_method

    get_method(s.method).make_options(s.method_options)  # unknown or mistyped method options: now
    return s, target


__all__ = [
    "CONFIG_KEYS",
    "DEFAULTS",
    "FALLBACK_LR",
    "FIELDS",
    "FINGERPRINT_KEYS",
    "SettingInfo",
    "Settings",
    "load_config",
    "resolve_settings",
    "setting",
]
