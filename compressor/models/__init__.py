"""Architectures by name: compressor's small zoo, torchvision's models, and import paths.

An architecture spec is one of:

* a registered name (``resnet_cifar``), see :func:`list_models`;
* a torchvision classification model name (``resnet18``);
* an import path ``package.module:factory`` (``torchvision.models:resnet18``,
  ``mypkg.nets:build``), called with keyword arguments.
"""

from __future__ import annotations

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
]

#: Import-path prefixes whose factories may be named by a checkpoint without the user's say-so.
TRUSTED_PREFIXES = ("compressor.", "torchvision.models")


def list_models() -> list[str]:
    return MODELS.list()


def canonical_arch(spec: str) -> str:
    """Normalise a spec to an import path (``module:factory``) that :func:`build_model` accepts."""
    spec = spec.strip()
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
        "such as 'resnet18', or an import path 'package.module:factory'"
    )


def is_trusted(spec: str) -> bool:
    return canonical_arch(spec).startswith(TRUSTED_PREFIXES)


def resolve_arch(spec: str) -> Callable[..., Any]:
    """Return the factory a spec names (importing its module)."""
    path = canonical_arch(spec)
    mod_name, _, attr = path.partition(":")
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
    """Build an untrained model from a spec; torchvision models get ``weights=None``."""
    import torch.nn as nn

    factory = resolve_arch(spec)
    path = canonical_arch(spec)
    if path.startswith("torchvision.models:"):
        kwargs.setdefault("weights", None)
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise UsageError(f"cannot build {spec!r} with arguments {kwargs}: {e}") from e
    if not isinstance(model, nn.Module):
        raise UsageError(f"architecture {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


from compressor.models import zoo as _zoo  # noqa: E402,F401  (registers the zoo into MODELS)
