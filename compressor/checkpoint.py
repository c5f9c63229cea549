"""Safe loading and saving of checkpoints (DESIGN.md, "Checkpoints").

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
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compressor.errors import CheckpointError, UsageError
from compressor.graph.widths import apply_widths, get_widths
from compressor.io import atomic_write
from compressor.models import build_model, canonical_arch, is_trusted

FORMAT = "compressor.checkpoint/1"

_CONVERT_HINT = (
    "To convert it, in an environment where you trust the file run:\n"
    "  python -c \"import torch; m = torch.load('{path}', weights_only=False); "
    "torch.save(m.state_dict(), 'state_dict.pt')\"\n"
    "then load 'state_dict.pt' with --arch (e.g. --arch torchvision.models:resnet18). "
    "Or pass --trust-pickle if you trust whoever made this file."
)


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" in msg or "GLOBAL" in msg:  # a pickled class or function, not tensors
            if trust_pickle:
                return torch.load(path, map_location="cpu", weights_only=False)
            raise CheckpointError(
                f"{path} contains pickled Python objects (such as a whole nn.Module), not just tensors. "
                "Unpickling them can run arbitrary code, so compressor refuses to load it by default.\n"
                + _CONVERT_HINT.format(path=path)
            ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({msg.splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint: it is truncated, corrupt or another kind of file ({first})"
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
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
    return build_model(arch, **kwargs)


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
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(p)!r} is empty (0 bytes); was it written completely?")
    obj = _torch_load(p, trust_pickle)
    user_kwargs = dict(arch_kwargs or {})

    if isinstance(obj, nn.Module):  # only reachable with trust_pickle=True
        meta = {"arch": canonical_arch(arch) if arch else None, "arch_kwargs": user_kwargs}
        return obj.eval(), meta

    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        meta = dict(obj.get("meta") or {})
        ck_arch = obj.get("arch")
        if not isinstance(ck_arch, str):
            raise CheckpointError(f"{p}: compressor checkpoint without an 'arch' string")
        spec = arch or ck_arch
        kwargs = {**(obj.get("arch_kwargs") or {}), **user_kwargs}
        if not arch and not trust_pickle and not is_trusted(ck_arch):
            raise CheckpointError(
                f"{p} names architecture {ck_arch!r}, outside compressor and torchvision; building it imports "
                f"and runs that module's code. If you trust it, pass --arch {ck_arch} to confirm."
            )
        model = _build(spec, kwargs)
        sd = obj.get("state_dict")
        if not _is_state_dict(sd):
            raise CheckpointError(f"{p}: compressor checkpoint without a valid 'state_dict'")
        if obj.get("widths"):
            apply_widths(model, obj["widths"], sd)
        load_state_dict_checked(model, sd, source=str(p))
        meta.update(arch=canonical_arch(spec), arch_kwargs=kwargs)
        return model.eval(), meta

    if isinstance(obj, dict) and "model" in obj and _is_state_dict(obj["model"]):
        args = obj.get("args")
        spec = arch or getattr(args, "model", None) or (args.get("model") if isinstance(args, dict) else None)
        if not spec:
            raise CheckpointError(
                f"{p} looks like a torchvision reference-script checkpoint but does not say its model; pass --arch"
            )
        model = _build(spec, user_kwargs)
        load_state_dict_checked(model, _strip_prefix(obj["model"], "module."), source=str(p))
        return model.eval(), {"arch": canonical_arch(spec), "arch_kwargs": user_kwargs}

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
        raise UsageError("save_checkpoint needs meta['arch'] (an import path such as 'torchvision.models:resnet18')")
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
