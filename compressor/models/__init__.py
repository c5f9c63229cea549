"""Architectures by name: compressor's small zoo, torchvision's models, and import paths.

An architecture spec is one of:

* a registered name (``resnet_cifar``), see :func:`list_models`;
* a torchvision classification model name (``resnet18``);
* ``timm:NAME``: a model of timm (PyTorch Image Models; ``pip install compressor[timm]``) built by
  ``timm.create_model(NAME, pretrained=False)``: never with downloaded weights;
* an import path ``package.module:factory`` (``torchvision.models:resnet18``,
  ``mypkg.nets:build``), called with keyword arguments.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from compressor.errors import UsageError
from compressor.models.base import MODELS, register_model

__all__ = [
    "MODELS",
    "build_model",
    "canonical_arch",
    "is_trusted",
    "list_models",
    "register_model",
    "resolve_arch",
    "timm_name",
]

#: Import-path prefixes whose factories may be named by a checkpoint without the user's say-so.
TRUSTED_PREFIXES = ("compressor.", "torchvision.models", "timm:")

#: The prefix of a timm architecture spec (``timm:resnet18``).
TIMM_PREFIX = "timm:"

#: Keyword arguments that would download pretrained weights; refused for timm models.
_PRETRAINED_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise UsageError(
            "timm architectures need the timm package: pip install 'compressor[timm]' (or pip install timm)"
        ) from None
    return timm


def timm_name(spec: str) -> str | None:
    """The timm model name of a ``timm:NAME`` spec (None for any other spec)."""
    spec = spec.strip()
    return spec[len(TIMM_PREFIX) :].strip() if spec.startswith(TIMM_PREFIX) else None


def _check_timm_name(name: str) -> None:
    timm = _timm()
    if not name or not timm.is_model(name):
        close = timm.list_models(f"*{name[:6]}*")[:8] if name else []
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise UsageError(
            f"unknown timm architecture {name!r}: use a name from timm.list_models(), "
            f"e.g. 'timm:resnet18'{hint}"
        )


def list_models() -> list[str]:
    return MODELS.list()


def canonical_arch(spec: str) -> str:
    """Normalise a spec to an import path (``module:factory``) that :func:`build_model` accepts."""
    spec = spec.strip()
    name = timm_name(spec)
    if name is not None:
        _check_timm_name(name)
        return TIMM_PREFIX + name
    if ":" in spec:
        return spec
    if spec in MODELS:
        fn = MODELS.get(spec)
        return f"{fn.__module__}:{fn.__name__}"
    import torchvision

    if spec in torchvision.models.list_models(module=torchvision.models):
        return f"torchvision.models:{spec}"
    valid = ", ".join(list_models())
    raise UsageError(
        f"unknown architecture {spec!r}: use a registered name ({valid}), a torchvision model name "
        "such as 'resnet18', a timm model 'timm:NAME', or an import path 'package.module:factory'"
    )


def is_trusted(spec: str) -> bool:
    return canonical_arch(spec).startswith(TRUSTED_PREFIXES)


def _current_folder_importable() -> None:
    """``--arch mynets:build`` finds ``mynets.py`` in the current folder (as ``python -m`` would);
    the console script's ``sys.path`` does not hold it."""
    import os
    import sys

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def resolve_arch(spec: str) -> Callable[..., Any]:
    """Return the factory a spec names (importing its module)."""
    path = canonical_arch(spec)
    name = timm_name(path)
    if name is not None:
        return functools.partial(_timm().create_model, name, pretrained=False)
    mod_name, _, attr = path.partition(":")
    _current_folder_importable()
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise UsageError(f"cannot import module {mod_name!r} of architecture {spec!r}: {e}") from e
    obj: Any = mod
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {mod_name!r} has no {attr!r} (architecture {spec!r})") from None
    if not callable(obj):
        raise UsageError(f"architecture {spec!r} names {type(obj).__name__}, not a callable factory")
    return obj


def build_model(spec: str, **kwargs: Any) -> Any:
    """Build an untrained model from a spec; torchvision models get ``weights=None`` and timm
    models ``pretrained=False`` (asking a timm model for pretrained weights is refused)."""
    import torch.nn as nn

    factory = resolve_arch(spec)
    path = canonical_arch(spec)
    if path.startswith("torchvision.models:"):
        kwargs.setdefault("weights", None)
    if timm_name(path) is not None:
        asked = [k for k in _PRETRAINED_KWARGS if kwargs.get(k)]
        if asked:
            raise UsageError(
                f"{spec!r}: {asked[0]}={kwargs[asked[0]]!r} is not allowed: compressor builds timm models "
                "without downloading weights; load your trained weights from a checkpoint instead"
            )
        kwargs = {k: v for k, v in kwargs.items() if k not in _PRETRAINED_KWARGS}
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise UsageError(f"cannot build {spec!r} with arguments {kwargs}: {e}") from e
    if not isinstance(model, nn.Module):
        raise UsageError(f"architecture {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


from compressor.models import zoo as _zoo  # noqa: E402,F401  (registers the zoo into MODELS)
