"""Safe loading and saving of checkpoints.

Everything is loaded with ``torch.load(..., weights_only=True)``. Accepted:

1. compressor's own checkpoint: ``{format, arch, arch_kwargs, widths, state_dict, meta}``;
2. torchvision reference-script checkpoints: ``{"model": state_dict, "args": Namespace(model=...)}``;
3. a bare state_dict (or ``{"state_dict": ...}``), with ``arch=``;
4. a whole pickled ``nn.Module`` only with ``trust_pickle=True`` (unpickling runs code).

A slimmed model is saved as architecture + widths + state_dict, never as a pickle.
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import re
from pathlib import Path
from typing import Any, TypeGuard

import torch
import torch.nn as nn

from compressor.errors import CheckpointError, UsageError
from compressor.graph.widths import STRUCT_ATTRS, apply_widths, get_widths
from compressor.io import atomic_write
from compressor.models import build_model, canonical_arch, list_models, resolve_arch

FORMAT = "compressor.checkpoint/1"

_CONVERT_HINT = (
    "To convert it, in an environment where you trust the file run:\n"
    "  python -c \"import torch; m = torch.load('{path}', weights_only=False); "
    "torch.save(m.state_dict(), 'state_dict.pt')\"\n"
    "then load 'state_dict.pt' with --arch (e.g. --arch torchvision.models:resnet18). "
    "Or pass --trust-pickle if you trust whoever made this file."
)


def _describe_bytes(path: Path) -> str:
    """What the file looks like, for an error message (a checkpoint's first bytes tell its kind)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if path.suffix.lower() == ".onnx":
        return (
            "it looks like an ONNX model; compressor needs the PyTorch checkpoint the ONNX file was made from"
        )
    if head.startswith(b"PK"):
        return "it is a zip archive but not one written by torch.save (no data.pkl), or it is truncated"
    if head.startswith(b"\x80"):
        return "it is a raw Python pickle, not a file written by torch.save"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "it is binary data of an unknown kind, not a file written by torch.save"
    if text.lstrip().startswith(("{", "[")):
        return "it is a JSON/text file, not a file written by torch.save (a plan? pass it with --plan)"
    return "it is a text file, not a file written by torch.save"


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        unsupported = re.search(r"GLOBAL ([\w.]+)", msg)
        names = f"it references {unsupported.group(1)}" if unsupported else "it references Python classes"
        if not unsupported and "allowlist" not in msg and "safe_globals" not in msg:
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint: {_describe_bytes(path)}"
            ) from None
        if trust_pickle:
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except Exception as e2:  # noqa: BLE001  (arbitrary code ran; report what it raised)
                raise CheckpointError(
                    f"{path} could not be unpickled even with --trust-pickle: {type(e2).__name__}: {e2}"
                ) from None
        raise CheckpointError(
            f"{path} contains pickled Python objects ({names}), such as a whole "
            "nn.Module, not just tensors. Unpickling them can run arbitrary code, so compressor refuses to load "
            "it by default.\n" + _CONVERT_HINT.format(path=path)
        ) from None
    except Exception as e:  # noqa: BLE001  (torch raises RuntimeError, KeyError, EOFError, ... on bad bytes)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint: it is truncated, corrupt or another kind of file "
            f"({_describe_bytes(path)}; torch said: {first[:200]})"
        ) from None


def _trusted_arch(spec: str) -> bool:
    """Whether a checkpoint may name ``spec`` without the user confirming it.

    Only model factories compressor knows: its registered models, torchvision's model builders
    (by their listed names) and ``nn.Module`` classes inside ``compressor.models``. Any other
    callable (``os:system``, or a library helper such as ``compressor.io:atomic_write_text``)
    could run code or write files when called with arguments taken from the file.
    """
    try:
        path = canonical_arch(spec)
    except UsageError:
        return False
    if path in {canonical_arch(n) for n in list_models()}:
        return True
    mod, _, attr = path.partition(":")
    if mod == "torchvision.models" or mod.startswith("torchvision.models."):
        import torchvision.models as tvm

        if attr not in tvm.list_models():
            return False
        try:
            return resolve_arch(path) is tvm.get_model_builder(attr)
        except UsageError:
            return False
    if mod.startswith("compressor.models."):
        try:
            obj = resolve_arch(path)
        except UsageError:
            return False
        return isinstance(obj, type) and issubclass(obj, nn.Module)
    return False


def _untrusted(p: Path, arch: str) -> CheckpointError:
    return CheckpointError(
        f"{p} names architecture {arch!r}, which is not a model compressor knows (its registered models or "
        "torchvision's); building it imports and runs that code with arguments taken from the file. "
        f"If you trust it, pass --arch {arch} to confirm."
    )


#: Keyword arguments a checkpoint may not pass to a factory: they download weights (the
#: checkpoint's own state_dict replaces them anyway).
_DROP_KWARGS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")


def _file_kwargs(p: Path, kwargs: Any) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise CheckpointError(
            f"{p}: 'arch_kwargs' must be a dict of keyword arguments, not {type(kwargs).__name__}"
        )
    return {k: v for k, v in kwargs.items() if k not in _DROP_KWARGS}


def _check_widths(p: Path, widths: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(widths, dict):
        raise CheckpointError(
            f"{p}: 'widths' must be a dict of module name -> attributes, not {type(widths).__name__}"
        )
    for name, attrs in widths.items():
        if not isinstance(name, str) or not isinstance(attrs, dict):
            raise CheckpointError(f"{p}: malformed 'widths' entry for module {name!r}")
        for a, v in attrs.items():
            ok_value = isinstance(v, int) or (isinstance(v, list) and all(isinstance(i, int) for i in v))
            if a not in STRUCT_ATTRS or not ok_value or isinstance(v, bool):
                raise CheckpointError(
                    f"{p}: 'widths' of module {name!r} sets {a!r} = {v!r}; only integer structural attributes "
                    f"({', '.join(STRUCT_ATTRS)}) are allowed"
                )
    return widths


def _is_state_dict(obj: Any) -> TypeGuard[dict[str, torch.Tensor]]:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def load_state_dict_checked(model: nn.Module, sd: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:

        def few(xs: list[str]) -> str:
            return ", ".join(xs[:8]) + (f" (+{len(xs) - 8} more)" if len(xs) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {few(shapes)}")
        raise CheckpointError(
            f"the weights in {source} do not fit architecture {type(model).__name__}: "
            + "; ".join(parts)
            + ". Check --arch and its arguments."
        )
    model.load_state_dict(sd, strict=True)


def _build(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return build_model(arch, **kwargs)
    except UsageError as e:
        raise CheckpointError(str(e)) from None
    except Exception as e:  # noqa: BLE001  (a factory rejecting its arguments)
        raise CheckpointError(
            f"cannot build architecture {arch!r} with arguments {kwargs}: {type(e).__name__}: {e}"
        ) from None


def load_checkpoint(
    path: str | os.PathLike[str],
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    trust_pickle: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model from any accepted checkpoint format; returns ``(model in eval mode, meta)``.

    ``arch`` (a spec for :func:`compressor.models.build_model`) is required for a bare state_dict
    and overrides the architecture a checkpoint names. A compressor checkpoint naming an
    architecture outside compressor and torchvision is only built when ``arch`` names the same
    one (importing a module runs its code) or ``trust_pickle`` is set.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {str(p)!r} is a directory, not a file")
    if not p.is_file():  # a named pipe or a device would block or stream forever
        raise CheckpointError(f"checkpoint {str(p)!r} is not a regular file (a pipe, socket or device)")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(p)!r} is empty (0 bytes); was it written completely?")
    obj = _torch_load(p, trust_pickle)
    user_kwargs = dict(arch_kwargs or {})

    if isinstance(obj, nn.Module):  # only reachable with trust_pickle=True
        meta = {"arch": canonical_arch(arch) if arch else None, "arch_kwargs": user_kwargs}
        return obj.eval(), meta

    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        raw_meta = obj.get("meta") or {}
        if not isinstance(raw_meta, dict):
            raise CheckpointError(
                f"{p}: compressor checkpoint whose 'meta' is a {type(raw_meta).__name__}, not a dict"
            )
        meta = dict(raw_meta)
        ck_arch = obj.get("arch")
        if not isinstance(ck_arch, str) or not ck_arch.strip():
            raise CheckpointError(f"{p}: compressor checkpoint without an 'arch' string")
        spec = arch or ck_arch
        kwargs = {**_file_kwargs(p, obj.get("arch_kwargs")), **user_kwargs}
        if not arch and not trust_pickle and not _trusted_arch(ck_arch):
            raise _untrusted(p, ck_arch)
        sd = obj.get("state_dict")
        if not _is_state_dict(sd):
            raise CheckpointError(f"{p}: compressor checkpoint without a valid 'state_dict'")
        widths = _check_widths(p, obj["widths"]) if obj.get("widths") else None
        model = _build(spec, kwargs)
        if widths:
            try:
                apply_widths(model, widths, sd)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(f"{p}: its 'widths' do not fit architecture {spec!r}: {e}") from None
        load_state_dict_checked(model, sd, source=str(p))
        meta.update(arch=canonical_arch(spec), arch_kwargs=kwargs)
        return model.eval(), meta

    if isinstance(obj, dict) and "model" in obj and _is_state_dict(obj["model"]):
        args = obj.get("args")
        named: Any = (
            arch or getattr(args, "model", None) or (args.get("model") if isinstance(args, dict) else None)
        )
        if not named or not isinstance(named, str):
            raise CheckpointError(
                f"{p} looks like a torchvision reference-script checkpoint but does not say its model; pass --arch"
            )
        if not arch and not trust_pickle and not _trusted_arch(named):
            raise _untrusted(p, named)
        model = _build(named, user_kwargs)
        load_state_dict_checked(model, _strip_prefix(obj["model"], "module."), source=str(p))
        return model.eval(), {"arch": canonical_arch(named), "arch_kwargs": user_kwargs}

    sd = obj.get("state_dict") if isinstance(obj, dict) and _is_state_dict(obj.get("state_dict")) else obj
    if _is_state_dict(sd):
        if not arch:
            raise CheckpointError(
                f"{p} is a bare state_dict (weights without an architecture); pass --arch, e.g. "
                "--arch torchvision.models:resnet18 or --arch mypkg.nets:build"
            )
        model = _build(arch, user_kwargs)
        load_state_dict_checked(model, _strip_prefix(sd, "module."), source=str(p))
        return model.eval(), {"arch": canonical_arch(arch), "arch_kwargs": user_kwargs}

    kind = type(obj).__name__
    keys = f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else ""
    raise CheckpointError(
        f"{p} holds a {kind}{keys}, which is not a checkpoint compressor understands: expected a compressor "
        "checkpoint, a torchvision reference checkpoint ({'model': state_dict, 'args': ...}) or a state_dict"
    )


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], *, meta: dict[str, Any]) -> Path:
    """Save ``model`` as architecture + widths + state_dict (format 1), atomically."""
    if not meta or not meta.get("arch"):
        raise UsageError(
            "save_checkpoint needs meta['arch'] (an import path such as 'torchvision.models:resnet18')"
        )
    meta = copy.deepcopy(dict(meta))
    arch = canonical_arch(meta.pop("arch"))
    kwargs = meta.pop("arch_kwargs", None) or {}
    obj = {
        "format": FORMAT,
        "arch": arch,
        "arch_kwargs": kwargs,
        "widths": get_widths(model),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
