"""Hostile and broken checkpoints: refused with a CheckpointError that names the problem, never executed.

The CLI side (exit code 2 on every command that loads a checkpoint) is in test_reliability.py.
"""

from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from compressor.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from compressor.errors import CheckpointError, UsageError

TV_ARCH = "torchvision.models:squeezenet1_1"  # small (0.7M parameters) and always available


# -- hostile pickles ---------------------------------------------------------------------------
class _OpenFile:
    """Unpickling this creates ``target`` (open(target, 'w'))."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.target, "w"))


class _Shell:
    """Unpickling this runs a shell command that creates ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.target}",))


def make_hostile(path: Path, target: Path, kind: str) -> Path:
    """Write a checkpoint whose unpickling would create ``target``."""
    payload: Any
    if kind == "open":
        payload = _OpenFile(target)
    elif kind == "os.system":
        payload = _Shell(target)
    else:
        raise ValueError(kind)
    # Hidden inside an otherwise plausible compressor checkpoint.
    obj = {
        "format": FORMAT,
        "arch": TV_ARCH,
        "arch_kwargs": {},
        "widths": None,
        "state_dict": {},
        "meta": payload,
    }
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("kind", ["open", "os.system"])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "pwned"
    ck = make_hostile(tmp_path / "evil.pt", target, kind)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck)
    msg = str(e.value)
    assert "arbitrary code" in msg and "--trust-pickle" in msg
    assert ("io.open" in msg) if kind == "open" else ("system" in msg)  # names what it would call
    assert not target.exists()


def test_hostile_pickle_in_legacy_torch_format_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    ck = tmp_path / "evil_legacy.pt"
    torch.save({"x": _Shell(target)}, ck, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="arbitrary code"):
        load_checkpoint(ck)
    assert not target.exists()


def test_hostile_raw_pickle_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    ck = tmp_path / "evil_raw.pkl"
    ck.write_bytes(pickle.dumps(_OpenFile(target)))
    for trust in (False, True):  # not a torch.save file at all: never unpickled
        with pytest.raises(CheckpointError, match="raw Python pickle"):
            load_checkpoint(ck, trust_pickle=trust)
    assert not target.exists()


def test_trust_pickle_is_the_only_way_to_run_it(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    ck = tmp_path / "evil.pt"
    torch.save(_OpenFile(target), ck)
    with pytest.raises(CheckpointError):
        load_checkpoint(ck)
    assert not target.exists()
    # Opting in unpickles (and so runs) it; what comes out is not a model, which is reported.
    with pytest.raises(CheckpointError, match="not a checkpoint compressor understands"):
        load_checkpoint(ck, trust_pickle=True)
    assert target.exists()


def test_pickled_module_needs_trust_pickle(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    ck = tmp_path / "module.pt"
    torch.save(net, ck)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck)
    assert "torch.nn.modules" in str(e.value) and "state_dict" in str(e.value)  # says how to convert
    model, meta = load_checkpoint(ck, trust_pickle=True)
    assert isinstance(model, nn.Sequential) and not model.training
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(model(x), net.eval()(x))


# -- untrusted architectures ---------------------------------------------------------------------
def _compressor_ckpt(path: Path, arch: str, arch_kwargs: Any, extra: dict[str, Any] | None = None) -> Path:
    obj = {
        "format": FORMAT,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "widths": None,
        "state_dict": {"w": torch.zeros(1)},
        "meta": {},
    }
    obj.update(extra or {})
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    "arch,kwargs",
    [
        ("os:system", {"command": "touch {target}"}),
        ("subprocess:check_call", {"args": ["touch", "{target}"]}),
        # Helpers inside compressor are not models: calling them with arguments from a file writes files.
        ("compressor.io:atomic_write_text", {"path": "{target}", "text": "owned"}),
        ("compressor.models:build_model", {"spec": "os:system", "command": "touch {target}"}),
        ("compressor.testing.fuzz:load_source", {"source": "open('{target}', 'w')", "name": "pwned_module"}),
        ("torchvision.models:get_model", {"name": "os:system"}),
    ],
)
def test_untrusted_arch_is_refused(tmp_path: Path, arch: str, kwargs: dict[str, Any]) -> None:
    target = tmp_path / "pwned"

    def fill(v: Any) -> Any:
        return (
            [fill(i) for i in v]
            if isinstance(v, list)
            else v.format(target=target)
            if isinstance(v, str)
            else v
        )

    ck = _compressor_ckpt(tmp_path / "arch.pt", arch, {k: fill(v) for k, v in kwargs.items()})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck)
    assert arch in str(e.value) and f"--arch {arch}" in str(e.value)
    assert not target.exists()


def test_untrusted_arch_in_torchvision_reference_checkpoint(tmp_path: Path) -> None:
    ck = tmp_path / "ref.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(model="antigravity:main")}, ck)
    with pytest.raises(CheckpointError, match="antigravity:main"):
        load_checkpoint(ck)


def test_trusted_archs_still_load(tmp_path: Path) -> None:
    from torchvision.models import squeezenet1_1

    net = squeezenet1_1(num_classes=5).eval()
    ck = tmp_path / "tv.pt"
    # A file that asks for downloaded weights: they are dropped (the state_dict replaces them anyway).
    save_checkpoint(net, ck, meta={"arch": "squeezenet1_1", "arch_kwargs": {"num_classes": 5}})
    obj = torch.load(ck, weights_only=True)
    obj["arch_kwargs"]["weights"] = "IMAGENET1K_V1"
    torch.save(obj, ck)
    model, meta = load_checkpoint(ck)
    assert meta["arch"] == TV_ARCH and "weights" not in meta["arch_kwargs"]
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x), net(x))
    # The torchvision reference-script format, with a DDP prefix.
    ref = tmp_path / "ref.pt"
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"model": sd, "args": argparse.Namespace(model="squeezenet1_1")}, ref)
    model2, _ = load_checkpoint(ref, arch_kwargs={"num_classes": 5})
    assert torch.equal(model2(x), net(x))


# -- broken files --------------------------------------------------------------------------------
def _good_bytes(tmp_path: Path) -> bytes:
    p = tmp_path / "good.pt"
    torch.save({"w": torch.randn(64, 64)}, p)
    return p.read_bytes()


BAD_FILES = {
    "missing": (lambda d, good: d / "nope.pt", "does not exist"),
    "directory": (lambda d, good: (d / "dir.pt").mkdir() or d / "dir.pt", "is a directory"),
    "empty": (lambda d, good: _write(d / "empty.pt", b""), "is empty"),
    "truncated": (lambda d, good: _write(d / "trunc.pt", good[: len(good) // 2]), "truncated"),
    "truncated_tail": (lambda d, good: _write(d / "trunc2.pt", good[:-20]), "truncated"),
    "text": (lambda d, good: _write(d / "notes.pt", b"this is not a checkpoint\n"), "text file"),
    "json": (lambda d, good: _write(d / "plan.pt", b'{"format": "compressor.plan/1"}'), "JSON"),
    "random_bytes": (
        lambda d, good: _write(d / "rand.pt", os.urandom(4096)),
        "not a readable PyTorch checkpoint",
    ),
    "zip_not_torch": (lambda d, good: _zip(d / "z.pt"), "zip archive"),
    "onnx": (lambda d, good: _write(d / "model.onnx", b"\x08\x07\x12\x07pytorch"), "ONNX"),
    "list": (lambda d, good: _save(d / "list.pt", [1, 2, 3]), "holds a list"),
    "bare_state_dict_without_arch": (lambda d, good: _save(d / "sd.pt", {"w": torch.zeros(2)}), "--arch"),
}


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _zip(p: Path) -> Path:
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hello")
    return p


def _save(p: Path, obj: Any) -> Path:
    torch.save(obj, p)
    return p


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_gets_a_checkpoint_error_naming_the_problem(tmp_path: Path, name: str) -> None:
    make, phrase = BAD_FILES[name]
    path = make(tmp_path, _good_bytes(tmp_path))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert phrase in str(e.value)
    assert str(path.name) in str(e.value)


MALFORMED = {
    "meta_not_dict": ({"meta": "oops"}, "'meta'"),
    "arch_missing": ({"arch": None}, "'arch'"),
    "arch_kwargs_not_dict": ({"arch_kwargs": [1, 2]}, "'arch_kwargs'"),
    "widths_not_dict": ({"widths": [1]}, "'widths'"),
    "widths_sets_forward": ({"widths": {"features.0": {"forward": 3}}}, "'forward'"),
    "state_dict_not_tensors": ({"state_dict": {"w": "not a tensor"}}, "'state_dict'"),
    "factory_rejects_kwargs": ({"arch_kwargs": {"num_classes": -1}}, "cannot build"),
    "unknown_kwarg": ({"arch_kwargs": {"bogus": 1}}, "bogus"),
    "widths_unknown_module": ({"widths": {"nope.conv": {"out_channels": 3}}}, "'nope.conv'"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_compressor_checkpoint(tmp_path: Path, name: str) -> None:
    extra, phrase = MALFORMED[name]
    ck = _compressor_ckpt(tmp_path / f"{name}.pt", TV_ARCH, {"num_classes": 5}, extra)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck)
    assert phrase in str(e.value)


def test_wrong_architecture_names_the_keys(tmp_path: Path) -> None:
    ck = _save(tmp_path / "conv.pt", nn.Conv2d(3, 8, 3).state_dict())
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck, arch="squeezenet1_1")
    msg = str(e.value)
    assert "missing keys" in msg and "unexpected keys: weight, bias" in msg and "--arch" in msg


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    from torchvision.models import squeezenet1_1

    ck = _save(tmp_path / "sq.pt", squeezenet1_1(num_classes=7).state_dict())
    with pytest.raises(CheckpointError, match=r"classifier\.1\.weight: checkpoint \(7, 512, 1, 1\)"):
        load_checkpoint(ck, arch="squeezenet1_1", arch_kwargs={"num_classes": 5})


def test_unknown_arch_name_lists_the_valid_ones(tmp_path: Path) -> None:
    ck = _save(tmp_path / "sd.pt", {"w": torch.zeros(2)})
    with pytest.raises(UsageError, match="unknown architecture 'resnet_nope'"):
        load_checkpoint(ck, arch="resnet_nope")


def test_save_is_atomic_and_never_a_pickle(tmp_path: Path) -> None:
    from torchvision.models import squeezenet1_1

    net = squeezenet1_1(num_classes=3).eval()
    out = save_checkpoint(
        net, tmp_path / "sub" / "m.pt", meta={"arch": "squeezenet1_1", "arch_kwargs": {"num_classes": 3}}
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.pt"]  # no temp file left
    obj = torch.load(out, weights_only=True)  # loads with the restricted unpickler: no code objects inside
    assert obj["format"] == FORMAT and obj["arch"] == TV_ARCH

    class Boom(Exception):
        pass

    def fail(_: str) -> None:
        raise Boom

    from compressor.io import atomic_write

    with pytest.raises(Boom):
        atomic_write(tmp_path / "sub" / "x.pt", fail)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.pt"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_special_files_are_refused_without_hanging(tmp_path: Path) -> None:
    """A named pipe or a device would block or stream forever; they are refused at once."""
    fifo = tmp_path / "ck.pt"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        if not path.exists():
            continue
        with pytest.raises(CheckpointError, match="not a regular file|empty"):
            load_checkpoint(path)
