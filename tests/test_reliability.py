"""Reliability: unsupported operations, untraceable models, bad arguments, error rendering, interruptions.

Hostile and broken checkpoint files are in test_checkpoint.py (library) and here (CLI exit codes).
Every CLI test runs the real Typer app (``cli.main.app``) or a real ``python -m cli.main`` process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from compressor.errors import TraceError, UsageError
from compressor.plan import Plan

SHAPE = (1, 3, 16, 16)


# =============================================================================================
# Unsupported operations: the channels they touch are frozen and named; the rest still prunes.
# =============================================================================================
@torch.fx.wrap
def mystery_op(x: torch.Tensor) -> torch.Tensor:
    """A custom function torch.fx does not trace into (the engine sees an opaque call)."""
    return x * torch.tanh(x.mean(1, keepdim=True))


class _Base(nn.Module):
    """stem -> body (the unusual op, on 'mid' channels) -> head; 'stem' and 'tail' stay prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.tail = nn.Conv2d(8, 10, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(10)
        self.fc = nn.Linear(10, 4)

    def body(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn0(self.stem(x)))
        y = self.body(self.mid(y))
        y = F.relu(self.bn1(self.tail(y)))
        return self.fc(y.mean((2, 3)))


class CumsumNet(_Base):
    def body(self, y: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(y, dim=1)


class FlipNet(_Base):
    def body(self, y: torch.Tensor) -> torch.Tensor:
        return y.flip(1)


class WrappedNet(_Base):
    def body(self, y: torch.Tensor) -> torch.Tensor:
        return mystery_op(y)


class _LeafNet(_Base):
    """The body is a torch.nn module the engine has no handler for (torch.fx keeps it as a leaf)."""

    def __init__(self, leaf: nn.Module) -> None:
        super().__init__()
        self.leaf = leaf

    def body(self, y: torch.Tensor) -> torch.Tensor:
        return self.leaf(y)


class LRNNet(_Base):
    def __init__(self) -> None:
        super().__init__()
        self.lrn = nn.LocalResponseNorm(3)  # mixes neighbouring channels

    def body(self, y: torch.Tensor) -> torch.Tensor:
        return self.lrn(y)


class Opaque(nn.Module):
    """A user module passed to the engine as a leaf: it cannot see inside."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w.view(1, -1, 1, 1)


class OpaqueLeafNet(_Base):
    def __init__(self) -> None:
        super().__init__()
        self.opaque = Opaque(8)

    def body(self, y: torch.Tensor) -> torch.Tensor:
        return self.opaque(y)


UNSUPPORTED = {
    "cumsum": (CumsumNet, "cumsum", {}),
    "flip": (FlipNet, "flip", {}),
    "fx_wrapped_function": (WrappedNet, "mystery_op", {}),
    "nn.LocalResponseNorm": (LRNNet, "lrn", {}),
    "opaque_leaf_module": (OpaqueLeafNet, "opaque", {"leaf_modules": (Opaque,)}),
}


def _build(name: str) -> tuple[nn.Module, str, dict[str, object]]:
    cls, op_name, kw = UNSUPPORTED[name]
    torch.manual_seed(0)
    return _randomise_bn(cls()), op_name, kw


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.3
            m.running_mean = torch.randn(n, generator=g) * 0.3
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model.eval()


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_op_freezes_and_names_its_channels(name: str) -> None:
    from compressor.graph import build_graph, slim

    model, op_name, kw = _build(name)
    graph = build_graph(model, input_shape=SHAPE, **kw)
    # The 'mid' channels (the op's input) are frozen, with a reason naming the operation.
    mid = [g for g in graph.groups if any(tuple(m[:2]) == ("mid", "out") for m in g.members)]
    assert len(mid) == 1, [(g.name, g.members) for g in graph.groups]
    assert mid[0].frozen and mid[0].reason and op_name in mid[0].reason, (mid[0].name, mid[0].reason)
    # The rest of the network still compresses, and the slimmed model is exact.
    names = {g.name for g in graph.prunable}
    stem = [g.name for g in graph.prunable if any(tuple(m[:2]) == ("stem", "out") for m in g.members)]
    assert stem, names
    keep = {g.name: list(range(0, g.size, 2)) for g in graph.prunable}
    plan = Plan(method="test", groups=keep, group_sizes={g.name: g.size for g in graph.prunable})
    small = slim(model, plan, graph=graph)
    x = torch.randn(2, *SHAPE[1:])
    assert small.stem.out_channels == 4 and small.mid.out_channels == 8
    assert graph.verify(small, plan, inputs=[x]) < 1e-4 * float(model(x).abs().max())
    if hasattr(graph, "cost"):
        assert graph.cost(plan).macs < graph.full.macs


LEAVES = {
    "ChannelShuffle": lambda: nn.ChannelShuffle(2),
    "PixelShuffle+Unshuffle": lambda: nn.Sequential(nn.PixelShuffle(2), nn.PixelUnshuffle(2)),
    "Softmax2d": lambda: nn.Softmax2d(),
    "LocalResponseNorm": lambda: nn.LocalResponseNorm(3),
    "GroupNorm": lambda: nn.GroupNorm(4, 8),
    "InstanceNorm2d": lambda: nn.InstanceNorm2d(8, affine=True),
    "PReLU": lambda: nn.PReLU(8),
    "ChannelDropout": lambda: nn.Dropout2d(0.5),
}


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_channel_touching_modules_are_exact_or_frozen(leaf: str) -> None:
    """Whatever the engine decides for a module, every plan it allows slims exactly."""
    import random

    from compressor.graph import build_graph, slim

    torch.manual_seed(0)
    model = _randomise_bn(_LeafNet(LEAVES[leaf]()))
    graph = build_graph(model, input_shape=SHAPE)
    mid = [g for g in graph.groups if any(tuple(m[:2]) == ("mid", "out") for m in g.members)]
    assert len(mid) == 1
    if mid[0].frozen:
        assert mid[0].reason
    x = torch.randn(2, *SHAPE[1:])
    scale = float(model(x).abs().max())
    rng = random.Random(0)
    for _ in range(4):
        keep = {g.name: sorted(rng.sample(range(g.size), rng.randint(1, g.size))) for g in graph.prunable}
        plan = Plan(method="test", groups=keep, group_sizes={g.name: g.size for g in graph.prunable})
        small = slim(model, plan, graph=graph)
        assert graph.verify(small, plan, inputs=[x]) < 1e-4 * scale, (leaf, keep)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:  # Python control flow on a tensor value
            y = y * 2
        return y.mean((2, 3))


class DataDependentLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        for _ in range(int(y.abs().max().item() > 0)):  # .item() on a traced value
            y = F.relu(y)
        return y.mean((2, 3))


@pytest.mark.parametrize(
    "cls,where", [(DataDependent, "if y.sum() > 0"), (DataDependentLoop, "y.abs().max().item()")]
)
def test_untraceable_model_gets_a_trace_error_naming_the_operation(cls: type[nn.Module], where: str) -> None:
    from compressor.graph import build_graph

    with pytest.raises(TraceError) as e:
        build_graph(cls().eval(), input_shape=SHAPE)
    msg = str(e.value)
    assert cls.__name__ in msg and where in msg, msg
    assert e.value.exit_code == 2


def test_input_shape_the_model_rejects_is_a_usage_error() -> None:
    from compressor.graph import build_graph

    model = _randomise_bn(CumsumNet())
    with pytest.raises(UsageError, match="input shape"):
        build_graph(model, input_shape=(1, 1, 16, 16))  # 1 channel into a 3-channel stem


def test_fx_wrapped_function_is_opaque_to_fx() -> None:
    """Guards the premise of the test above: torch.fx leaves mystery_op as one call node."""
    gm = fx.symbolic_trace(WrappedNet())
    assert any(n.op == "call_function" and n.target is mystery_op for n in gm.graph.nodes)


# =============================================================================================
# Error rendering
# =============================================================================================
def test_cli_errors_print_messages_verbatim() -> None:
    """Brackets in messages (paths, torch's '[enforce fail ...]', key lists) are not rich markup."""
    import typer
    from compressor.cli._common import cli_errors
    from typer.testing import CliRunner

    app = typer.Typer()

    @app.command()
    def fail(msg: str) -> None:
        with cli_errors():
            raise UsageError(msg)

    @app.command()
    def other() -> None:  # a second command so Typer keeps the 'fail' name
        pass

    runner = CliRunner()
    for msg in [
        "out[/]x is bad",
        "[bold]kept[/bold]",
        "torch said: [enforce fail at inline_container.cc:179]",
    ]:
        res = runner.invoke(app, ["fail", msg])
        assert res.exit_code == 2, (msg, res.exception)
        assert msg in res.output.replace("\n", ""), res.output


# =============================================================================================
# Artifacts under interruption (unit level; the subprocess tests are further down)
# =============================================================================================
def test_torn_jsonl_line_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    """A process killed mid-append leaves a torn last line; the next append must still be readable."""
    from compressor.io import append_jsonl, read_jsonl

    p = tmp_path / "candidates.jsonl"
    append_jsonl(p, {"i": 0})
    with open(p, "a", encoding="utf-8") as f:
        f.write('{"i": 1, "score": 0.')  # killed here
    append_jsonl(p, {"i": 2})
    assert read_jsonl(p) == [{"i": 0}, {"i": 2}]


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path: Path) -> None:
    from compressor.io import atomic_write, atomic_write_json

    atomic_write_json(tmp_path / "plan.json", {"ok": 1})

    def interrupted(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write('{"half": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "plan.json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "new.json", interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]
    assert (tmp_path / "plan.json").read_text() == '{\n  "ok": 1\n}\n'


# =============================================================================================
# The CLI: bad checkpoints and bad arguments give exit 2 and a message, before any long work.
# =============================================================================================
TINY_KW = {"num_classes": 10, "in_channels": 1, "depth": 8, "width": 8}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 1x28x28 ResNet-8 for mnist5k (the commands only need something loadable)."""
    from compressor.checkpoint import save_checkpoint
    from compressor.models import build_model, canonical_arch

    torch.manual_seed(0)
    model = build_model("resnet_cifar", **TINY_KW)
    meta = {
        "arch": canonical_arch("resnet_cifar"),
        "arch_kwargs": dict(TINY_KW),
        "dataset": "mnist5k",
        "input_shape": [1, 28, 28],
        "num_classes": 10,
        "mean": [0.1307],
        "std": [0.3081],
    }
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pt", meta=meta)


def _commands() -> set[str]:
    import typer
    from compressor.cli.main import app

    return set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _invoke(args: list[str]) -> tuple[int, str]:
    from compressor.cli.main import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, args)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, " ".join(res.output.split())  # rich wraps long lines


#: How each command that loads a checkpoint is called: {ck} is the checkpoint, {out} a fresh folder.
LOADERS: dict[str, list[str]] = {
    "profile": ["profile", "{ck}"],
    "prune": ["prune", "{ck}", "--flops", "0.5", "-o", "{out}/slim.pt"],
    "search": [
        "search",
        "{ck}",
        "--flops",
        "0.5",
        "--candidates",
        "2",
        "--calib-batches",
        "1",
        "-o",
        "{out}/plan.json",
    ],
    "finetune": ["finetune", "{ck}", "--epochs", "1", "-o", "{out}/ft.pt"],
    "export": ["export", "{ck}", "-o", "{out}/model.onnx"],
    "run": ["run", "{ck}", "--target", "mobile", "--out", "{out}/run"],
}


def _artifacts(out: Path) -> list[str]:
    """Files under ``out``, not counting hidden bookkeeping (``.state/``)."""
    if not out.exists():
        return []
    return sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
    )


def _hostile(d: Path) -> tuple[Path, Path]:
    target = d / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (open, (str(target), "w"))

    torch.save({"state_dict": {}, "meta": Evil()}, d / "evil.pt")
    return d / "evil.pt", target


def _untrusted_arch(d: Path) -> tuple[Path, Path]:
    from compressor.checkpoint import FORMAT

    target = d / "pwned"
    obj = {"format": FORMAT, "arch": "os:system", "arch_kwargs": {"command": f"touch {target}"}, "widths": None,
           "state_dict": {"w": torch.zeros(1)}, "meta": {}}  # fmt: skip
    torch.save(obj, d / "arch.pt")
    return d / "arch.pt", target


def _plain(name: str, data: bytes | None) -> object:
    def make(d: Path) -> tuple[Path, Path]:
        p = d / name
        if data is None:
            p.mkdir()
        else:
            p.write_bytes(data)
        return p, d / "never"

    return make


def _truncated(d: Path) -> tuple[Path, Path]:
    torch.save({"w": torch.randn(256, 256)}, d / "full.pt")
    data = (d / "full.pt").read_bytes()
    (d / "full.pt").unlink()
    (d / "trunc.pt").write_bytes(data[: len(data) // 3])
    return d / "trunc.pt", d / "never"


def _wrong_arch(d: Path) -> tuple[Path, Path]:
    torch.save(nn.Conv2d(1, 4, 3).state_dict(), d / "sd.pt")
    return d / "sd.pt", d / "never"


BAD_CHECKPOINTS = {
    "hostile_pickle": (_hostile, "arbitrary code"),
    "untrusted_arch": (_untrusted_arch, "'os:system'"),
    "truncated": (_truncated, "truncated"),
    "empty": (_plain("empty.pt", b""), "empty"),
    "text": (_plain("notes.pt", b"not a checkpoint\n"), "text file"),
    "random_bytes": (_plain("rand.pt", bytes(range(256)) * 8), "not a readable PyTorch checkpoint"),
    "directory": (_plain("dir.pt", None), "directory"),
    "bare_state_dict": (_wrong_arch, "--arch"),
}


@pytest.mark.parametrize("bad", sorted(BAD_CHECKPOINTS))
@pytest.mark.parametrize("command", sorted(LOADERS))
def test_cli_bad_checkpoint_exits_2(tmp_path: Path, command: str, bad: str) -> None:
    if command not in _commands():
        pytest.skip(f"'compress {command}' is not on this branch yet")
    make, phrase = BAD_CHECKPOINTS[bad]
    ck, target = make(tmp_path)
    out = tmp_path / "out"
    args = [a.format(ck=ck, out=out) for a in LOADERS[command]]
    code, text = _invoke(args)
    assert code == 2, (args, code, text)
    assert "error:" in text and phrase in text, text
    assert not target.exists()
    assert not _artifacts(out), _artifacts(out)


@pytest.mark.parametrize("command", ["finetune", "export", "run"])
def test_cli_wrong_architecture_exits_2(tmp_path: Path, command: str) -> None:
    """Weights of one architecture loaded as another: the mismatching keys and shapes are named."""
    if command not in _commands():
        pytest.skip(f"'compress {command}' is not on this branch yet")
    from compressor.models import build_model

    sd = tmp_path / "weights.pt"
    torch.save(build_model("resnet_cifar", **{**TINY_KW, "width": 4}).state_dict(), sd)
    args = [a.format(ck=sd, out=tmp_path / "out") for a in LOADERS[command]] + ["--arch", "resnet_cifar"]
    code, text = _invoke(args)
    assert code == 2 and "do not fit architecture" in text and "shape mismatches" in text, text


def test_cli_trust_pickle_is_the_only_way_in(tmp_path: Path) -> None:
    """A whole pickled model is refused by default and loads with --trust-pickle."""
    cmds = _commands()
    command = next((c for c in ("profile", "export", "search") if c in cmds), None)
    if command is None:
        pytest.skip("no command that loads a checkpoint is on this branch yet")
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    torch.save(net, tmp_path / "whole.pt")
    base = {
        "profile": ["profile", str(tmp_path / "whole.pt"), "--input-shape", "1,16,16"],
        "export": ["export", str(tmp_path / "whole.pt"), "-o", str(tmp_path / "m.onnx"), "--input-shape", "1,16,16"],
        "search": ["search", str(tmp_path / "whole.pt"), "--method", "l1-uniform", "--flops", "0.5",
                   "--input-shape", "1,16,16", "-o", str(tmp_path / "plan.json")],
    }[command]  # fmt: skip
    code, text = _invoke(base)
    assert code == 2 and "--trust-pickle" in text, text
    code, text = _invoke([*base, "--trust-pickle"])
    assert code == 0, text


def _file_as_dir(d: Path) -> Path:
    (d / "afile").write_text("x")
    return d / "afile"


#: (command args, phrase the message must contain). {ck} = tiny checkpoint; {out} = fresh folder;
#: {file} = an existing regular file (not TOML, not JSON); {config} / {target}: TOML with an unknown key.
BAD_ARGS: dict[str, tuple[list[str], str]] = {
    "search-flops-0": (["search", "{ck}", "--flops", "0", "-o", "{out}/p.json"], "--flops 0"),
    "search-flops-1.5": (["search", "{ck}", "--flops", "1.5", "-o", "{out}/p.json"], "(0, 1]"),
    "search-flops-negative": (["search", "{ck}", "--flops", "-0.2", "-o", "{out}/p.json"], "(0, 1]"),
    "search-unknown-method": (
        ["search", "{ck}", "--method", "nope", "--flops", "0.5", "-o", "{out}/p.json"],
        "eagleeye",
    ),
    "search-unknown-dataset": (
        ["search", "{ck}", "--flops", "0.5", "--data", "nope", "-o", "{out}/p.json"],
        "mnist5k",
    ),
    "search-output-under-a-file": (["search", "{ck}", "--flops", "0.5", "-o", "{file}/p.json"], "afile"),
    "search-input-shape-rejected": (
        ["search", "{ck}", "--flops", "0.5", "--input-shape", "3,28,28", "-o", "{out}/p.json"],
        "input channel",
    ),
    "search-candidates-0": (
        ["search", "{ck}", "--flops", "0.5", "--candidates", "0", "-o", "{out}/p.json"],
        "--candidates",
    ),
    "prune-flops-0": (["prune", "{ck}", "--flops", "0", "-o", "{out}/s.pt"], "--flops 0"),
    "prune-flops-2": (["prune", "{ck}", "--flops", "2", "-o", "{out}/s.pt"], "(0, 1]"),
    "prune-unknown-method": (
        ["prune", "{ck}", "--method", "nope", "--flops", "0.5", "-o", "{out}/s.pt"],
        "nope",
    ),
    "prune-output-under-a-file": (["prune", "{ck}", "--flops", "0.5", "-o", "{file}/s.pt"], "afile"),
    "profile-input-shape-rejected": (["profile", "{ck}", "--input-shape", "3,28,28"], "input shape"),
    "finetune-unknown-dataset": (
        ["finetune", "{ck}", "--epochs", "1", "--data", "nope", "-o", "{out}/f.pt"],
        "mnist5k",
    ),
    "finetune-epochs-negative": (["finetune", "{ck}", "--epochs", "-1", "-o", "{out}/f.pt"], "epochs"),
    "finetune-output-under-a-file": (["finetune", "{ck}", "--epochs", "1", "-o", "{file}/f.pt"], "afile"),
    "export-unknown-target": (["export", "{ck}", "--target", "nope", "-o", "{out}/m.onnx"], "mobile"),
    "export-output-under-a-file": (["export", "{ck}", "-o", "{file}/m.onnx"], "afile"),
    "export-input-shape-rejected": (
        ["export", "{ck}", "--input-shape", "3,28,28", "-o", "{out}/m.onnx"],
        "input shape",
    ),
    "validate-not-onnx": (["validate", "{file}", "-r", "{ck}", "--no-latency"], "afile"),
    "validate-negative-latency": (["validate", "{file}", "-r", "{ck}", "--latency-ms", "-1"], "-1"),
    "run-flops-0": (["run", "{ck}", "--target", "mobile", "--flops", "0", "--out", "{out}/r"], "--flops 0"),
    "run-flops-1.5": (["run", "{ck}", "--target", "mobile", "--flops", "1.5", "--out", "{out}/r"], "(0, 1]"),
    "run-latency-0": (
        ["run", "{ck}", "--target", "mobile", "--latency-ms", "0", "--out", "{out}/r"],
        "--latency-ms 0",
    ),
    "run-latency-negative": (
        ["run", "{ck}", "--target", "mobile", "--latency-ms", "-5", "--out", "{out}/r"],
        "-5",
    ),
    "run-unknown-method": (
        ["run", "{ck}", "--target", "mobile", "--method", "nope", "--out", "{out}/r"],
        "eagleeye",
    ),
    "run-unknown-target": (["run", "{ck}", "--target", "nope", "--out", "{out}/r"], "mobile"),
    "run-unknown-dataset": (
        ["run", "{ck}", "--target", "mobile", "--data", "nope", "--out", "{out}/r"],
        "mnist5k",
    ),
    "run-out-is-a-file": (["run", "{ck}", "--target", "mobile", "--out", "{file}"], "is a file"),
    "run-out-not-writable": (
        ["run", "{ck}", "--target", "mobile", "--out", "/sys/compressor-out"],
        "/sys/compressor-out",
    ),
    "run-config-not-toml": (
        ["run", "{ck}", "--target", "mobile", "--config", "{file}", "--out", "{out}/r"],
        "not valid TOML",
    ),
    "run-config-unknown-key": (
        ["run", "{ck}", "--target", "mobile", "--config", "{config}", "--out", "{out}/r"],
        "'bogus'",
    ),
    "run-target-unknown-key": (["run", "{ck}", "--target", "{target}", "--out", "{out}/r"], "'bogus'"),
    "export-target-not-toml": (
        ["export", "{ck}", "--target", "{file}", "-o", "{out}/m.onnx"],
        "not valid TOML",
    ),
    "search-unknown-device": (
        ["search", "{ck}", "--flops", "0.5", "--device", "tpu", "-o", "{out}/p.json"],
        "'tpu'",
    ),
    "run-unknown-device": (
        ["run", "{ck}", "--target", "mobile", "--device", "tpu", "--out", "{out}/r"],
        "'tpu'",
    ),
    "finetune-unknown-device": (
        ["finetune", "{ck}", "--epochs", "1", "--device", "tpu", "-o", "{out}/f.pt"],
        "'tpu'",
    ),
    "prune-plan-not-json": (["prune", "{ck}", "--plan", "{file}", "-o", "{out}/s.pt"], "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_cli_bad_argument_exits_2(tmp_path: Path, tiny_ckpt: Path, case: str) -> None:
    args, phrase = BAD_ARGS[case]
    if args[0] not in _commands():
        pytest.skip(f"'compress {args[0]}' is not on this branch yet")
    afile = _file_as_dir(tmp_path)
    (tmp_path / "config.toml").write_text("bogus = 1\n")
    (tmp_path / "target.toml").write_text("[budget]\nflops = 0.5\nbogus = 1\n")
    out = tmp_path / "out"
    argv = [
        a.format(
            ck=tiny_ckpt,
            out=out,
            file=afile,
            config=tmp_path / "config.toml",
            target=tmp_path / "target.toml",
        )
        for a in args
    ]
    t0 = time.perf_counter()
    code, text = _invoke(argv)
    took = time.perf_counter() - t0
    assert code == 2, (argv, code, text)
    assert "error" in text.lower() and phrase in text, text
    assert not _artifacts(out), _artifacts(out)
    assert afile.read_text() == "x"
    assert took < 60, f"{case} took {took:.0f} s before failing"


# =============================================================================================
# Interruptions: SIGINT / SIGTERM to a real `python -m cli.main ...`: every artifact is complete
# or absent, and the same command resumes.
# =============================================================================================
REPO = Path(__file__).resolve().parents[1]


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    with open(log, "wb") as f:  # the child keeps its own handle
        return subprocess.Popen(
            [sys.executable, "-m", "compressor.cli.main", *args], cwd=REPO, env=env, stdout=f, stderr=f
        )


def _wait_until(cond: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(
                f"process ended (exit {proc.returncode}) before the expected progress:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no progress within {timeout} s:\n{log.read_text()[-3000:]}")


def _interrupt(proc: subprocess.Popen[bytes], sig: int, log: Path, timeout: float = 60) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running {timeout} s after signal {sig}:\n{log.read_text()[-3000:]}")


def _lines(p: Path) -> int:
    return len(p.read_text(encoding="utf-8").splitlines()) if p.exists() else 0


def check_artifacts(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` is complete: it parses as what its name says. Returns name -> kind."""
    import json

    seen: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        rel = str(p.relative_to(folder))
        assert ".tmp" not in p.name, f"temporary file left behind: {rel}"
        data = p.read_bytes()
        if p.suffix == ".json":
            json.loads(data)
            kind = "json"
        elif p.suffix == ".jsonl":
            text = data.decode("utf-8")
            assert text.endswith("\n"), f"{rel}: torn last line"
            for line in text.splitlines():
                json.loads(line)
            kind = "jsonl"
        elif p.suffix in (".pt", ".state"):
            torch.load(p, map_location="cpu", weights_only=True)
            kind = "torch"
        elif p.suffix == ".onnx":
            import onnx

            onnx.checker.check_model(onnx.load(str(p)))
            kind = "onnx"
        elif p.suffix == ".pb":
            import onnx

            t = onnx.TensorProto()
            t.ParseFromString(data)
            assert len(t.dims) > 0, rel
            kind = "pb"
        elif p.suffix == ".html":
            assert data.rstrip().endswith(b"</html>"), f"{rel}: truncated HTML"
            kind = "html"
        else:
            kind = "other"
        seen[rel] = kind
    return seen


def test_interrupted_search_keeps_complete_candidates_and_resumes(tmp_path: Path, tiny_ckpt: Path) -> None:
    """SIGINT while `compress search` scores candidates; the rerun scores only the missing ones."""
    if "search" not in _commands():
        pytest.skip("'compress search' is not on this branch yet")
    plan = tmp_path / "plan.json"
    cands = tmp_path / "plan.candidates.jsonl"
    common = ["search", str(tiny_ckpt), "--flops", "0.5", "--calib-batches", "1", "--batch-size", "16",
              "-o", str(plan), "-q", "--json"]  # fmt: skip
    log = tmp_path / "first.log"
    proc = _spawn([*common, "--candidates", "100000"], log)  # cannot finish before the signal
    _wait_until(lambda: _lines(cands) >= 2, proc, log, timeout=180)
    code = _interrupt(proc, signal.SIGINT, log)
    assert code == 130, log.read_text()[-2000:]
    assert "interrupted" in log.read_text()
    assert not plan.exists()  # the plan appears only when the search is complete
    kinds = check_artifacts(tmp_path)
    assert kinds.get(cands.name) == "jsonl"
    before = cands.read_text().splitlines()
    k = len(before)
    assert 2 <= k < 100000

    code, text = _invoke([*common, "--candidates", str(k + 1)])  # the rerun, in-process (saves a start-up)
    assert code == 0, text[-3000:]
    after = cands.read_text().splitlines()
    assert after[:k] == before  # the scored candidates were kept, not scored again
    assert len(after) == k + 1
    import json

    indices = [json.loads(x)["index"] for x in after]
    assert sorted(indices) == list(range(k + 1))
    check_artifacts(tmp_path)
    assert json.loads(plan.read_text())["format"] == "compressor.plan/1"


RUN_ARGS = ["--target", "mobile", "--flops", "0.5", "--epochs", "2", "--max-acc-drop", "100", "--json"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["search", "finetune", "export"])
def test_interrupted_run_resumes(tmp_path: Path, tiny_ckpt: Path, stage: str) -> None:
    """SIGTERM during `compress run`'s search or fine-tuning; the same command then finishes."""
    if "run" not in _commands():
        pytest.skip("'compress run' is not on this branch yet")
    out = tmp_path / "out"
    args = ["run", str(tiny_ckpt), *RUN_ARGS, "--candidates", "12", "--out", str(out)]
    log = tmp_path / "first.log"
    proc = _spawn(args, log)
    if stage == "search":
        _wait_until(lambda: _lines(out / "candidates.jsonl") >= 2, proc, log, timeout=240)
    elif stage == "finetune":
        _wait_until(lambda: (out / "plan.json").exists(), proc, log, timeout=400)
        _wait_until(lambda: (out / "model.pt.state").exists(), proc, log, timeout=240)  # one epoch done
    else:  # model.onnx is being written (its temp file exists) or was just written (validation runs)
        _wait_until(
            lambda: any(out.glob(".model.onnx.*")) or (out / "model.onnx").exists(), proc, log, timeout=600
        )
    code = _interrupt(proc, signal.SIGTERM, log)
    assert code == 130, log.read_text()[-3000:]
    kinds = check_artifacts(out)  # whatever exists is complete (model.onnx may, if it was written)
    assert "report.json" not in kinds
    if stage != "export":
        assert "model.onnx" not in kinds
    log2 = tmp_path / "second.log"
    proc = _spawn(args, log2)
    code = proc.wait(600)
    text = log2.read_text()
    assert code in (0, 3), text[-3000:]
    assert "resum" in text, text[-3000:]
    kinds = check_artifacts(out)
    for name in ("model.onnx", "model.pt", "plan.json", "candidates.jsonl", "report.json", "report.html"):
        assert name in kinds, (name, sorted(kinds))


@pytest.mark.slow
def test_interrupted_finetune_resumes_from_the_last_epoch(tmp_path: Path, tiny_ckpt: Path) -> None:
    if "finetune" not in _commands():
        pytest.skip("'compress finetune' is not on this branch yet")
    out = tmp_path / "ft.pt"
    args = [
        "finetune",
        str(tiny_ckpt),
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "-o",
        str(out),
        "--json",
        "--no-progress",
    ]
    log = tmp_path / "first.log"
    proc = _spawn(args, log)
    _wait_until(lambda: Path(str(out) + ".state").exists(), proc, log, timeout=300)
    code = _interrupt(proc, signal.SIGINT, log)
    assert code == 130, log.read_text()[-3000:]
    check_artifacts(tmp_path)
    log2 = tmp_path / "second.log"
    proc = _spawn(args, log2)
    assert proc.wait(600) == 0, log2.read_text()[-3000:]
    import json

    text = log2.read_text()
    summary = json.loads(text[text.index("{") :])
    assert summary["resumed_from_epoch"] >= 1
    check_artifacts(tmp_path)


@pytest.mark.slow
def test_interrupted_export_leaves_no_half_written_onnx(tmp_path: Path, tiny_ckpt: Path) -> None:
    """SIGTERM while `compress export` writes model.onnx (its temp file exists): nothing is left."""
    if "export" not in _commands():
        pytest.skip("'compress export' is not on this branch yet")
    out = tmp_path / "model.onnx"
    args = ["export", str(tiny_ckpt), "-o", str(out)]
    log = tmp_path / "first.log"
    proc = _spawn(args, log)
    _wait_until(lambda: any(tmp_path.glob(".model.onnx.*")), proc, log, timeout=180)
    code = _interrupt(proc, signal.SIGTERM, log)
    assert code == 130, log.read_text()[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.log"]  # no model.onnx, no temp file
    log2 = tmp_path / "second.log"
    proc = _spawn(args, log2)
    assert proc.wait(300) == 0, log2.read_text()[-3000:]
    assert check_artifacts(tmp_path)["model.onnx"] == "onnx"


@pytest.mark.parametrize(
    "text,phrase",
    [
        ("", "not valid JSON"),
        ('{"format": "compressor.plan/1", "groups": ', "not valid JSON"),
        ("[1, 2]", "not a compressor plan"),
        ('"plan"', "not a compressor plan"),
        ('{"format": "other/1"}', "not a compressor plan"),
        (
            '{"format": "compressor.plan/1", "method": "x", "groups": [1], "group_sizes": {}}',
            "malformed plan",
        ),
        (
            '{"format": "compressor.plan/1", "method": "x", "groups": {"a": ["z"]}, "group_sizes": {"a": 3}}',
            "malformed",
        ),
        ('{"format": "compressor.plan/1", "groups": {}, "group_sizes": {}}', "malformed plan"),
    ],
)
def test_malformed_plan_file_is_a_usage_error(tmp_path: Path, text: str, phrase: str) -> None:
    p = tmp_path / "plan.json"
    p.write_text(text)
    with pytest.raises(UsageError, match=phrase):
        Plan.load(p)
    with pytest.raises(UsageError, match="does not exist"):
        Plan.load(tmp_path / "missing.json")


class CumsumMnist(nn.Module):
    """A 1x28x28 classifier with a cumulative sum over channels in the middle."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, stride=2)
        self.bn0 = nn.BatchNorm2d(16)
        self.mid = nn.Conv2d(16, 8, 3, padding=1, stride=2)
        self.tail = nn.Conv2d(8, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn0(self.stem(x)))
        y = torch.cumsum(self.mid(y), dim=1)
        y = F.relu(self.bn1(self.tail(y)))
        return self.fc(y.mean((2, 3)))


def test_run_with_an_unsupported_op_compresses_and_names_it_in_the_report(tmp_path: Path) -> None:
    """`compress run` on a model with torch.cumsum over channels: the rest is pruned, the report says why not that."""
    if "run" not in _commands():
        pytest.skip("'compress run' is not on this branch yet")
    import json

    from compressor.checkpoint import save_checkpoint

    arch = f"{__name__}:CumsumMnist"
    meta = {"arch": arch, "arch_kwargs": {}, "dataset": "mnist5k", "input_shape": [1, 28, 28], "num_classes": 10,
            "mean": [0.1307], "std": [0.3081]}  # fmt: skip
    torch.manual_seed(0)
    ck = save_checkpoint(CumsumMnist(), tmp_path / "cumsum.pt", meta=meta)
    code, text = _invoke(["run", str(ck), "--target", "mobile", "--out", str(tmp_path / "out")])
    assert code == 2 and f"--arch {arch}" in text, text  # a user module needs the user's say-so
    from compressor.methods import list_methods

    method = "l1-uniform" if "l1-uniform" in list_methods() else "eagleeye"
    out = tmp_path / "out2"
    args = ["run", str(ck), "--arch", arch, "--target", "mobile", "--flops", "0.6", "--epochs", "0",
            "--method", method, "--max-acc-drop", "100", "--out", str(out), "--json"]  # fmt: skip
    code, text = _invoke(args)
    assert code in (0, 3), text[-3000:]
    report = json.loads((out / "report.json").read_text())
    layers = {row["name"]: row for row in report["layers"]}
    frozen = [row for row in report["layers"] if row["frozen"]]
    assert any("cumsum" in (row.get("reason") or "") for row in frozen), report["layers"]
    assert any(not row["frozen"] and row["after"] < row["before"] for row in layers.values()), report[
        "layers"
    ]
    assert "cumsum" in report["message"] or any("cumsum" in n for n in report.get("notes", [])), report[
        "message"
    ]


def test_cli_hostile_teacher_checkpoint_is_refused(tmp_path: Path, tiny_ckpt: Path) -> None:
    """Every checkpoint a command reads goes through the safe loader, not only the main one."""
    if "finetune" not in _commands():
        pytest.skip("'compress finetune' is not on this branch yet")
    evil, target = _hostile(tmp_path)
    code, text = _invoke(
        ["finetune", str(tiny_ckpt), "--epochs", "1", "--teacher", str(evil), "-o", str(tmp_path / "f.pt")]
    )
    assert code == 2 and "arbitrary code" in text, text
    assert not target.exists() and not (tmp_path / "f.pt").exists()
