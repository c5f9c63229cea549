"""The promises of ``compress``: no command replaces its inputs, a failed check publishes nothing,
every exit 3 and 4 writes its report first, and errors keep their meaning (exit 1 is a bug of
ours and says so; 2 the user's input; 3 a budget; 4 a failed verification), on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from compressor.cli.main import app
from typer.testing import CliRunner

from compressor.errors import BudgetError, InternalError, UsageError, ValidationError, carry, rebuild
from tests.test_pipeline import TARGET_TOML, _fake_cifar

runner = CliRunner()
HERE = Path(__file__).parent


def one_conv_net(num_classes: int = 10) -> nn.Module:
    """A model whose only convolution feeds the output: nothing can be pruned."""
    return nn.Sequential(nn.Conv2d(3, num_classes, 16), nn.Flatten())


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from compressor.checkpoint import save_checkpoint
    from compressor.models import build_model

    root = tmp_path_factory.mktemp("guarantees")
    data = _fake_cifar(root / "cifar")
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_channels": 3, "depth": 8, "width": 8}
    meta = {
        "arch": "resnet_cifar",
        "arch_kwargs": kwargs,
        "dataset": f"cifar10:{data}",
        "input_shape": [3, 16, 16],
        "num_classes": 10,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    }
    ckpt = save_checkpoint(build_model("resnet_cifar", **kwargs).eval(), root / "tiny.pt", meta=meta)
    one = save_checkpoint(
        one_conv_net().eval(),
        root / "one_conv.pt",
        meta={**meta, "arch": "tests.test_guarantees:one_conv_net", "arch_kwargs": {}},
    )
    target = root / "tiny_target.toml"
    target.write_text(TARGET_TOML, encoding="utf-8")
    return {"root": root, "ckpt": Path(ckpt), "one_conv": Path(one), "target": target}


def _run(*args: str) -> Any:
    return runner.invoke(app, ["run", *args], catch_exceptions=False)


def _quick(assets: dict[str, Path], ckpt: Path, out: Path, *extra: str) -> Any:
    return _run(
        str(ckpt), "--target", str(assets["target"]), "--method", "l1-uniform", "--epochs", "0",
        "--out", str(out), *extra,
    )  # fmt: skip


def _broken_slim(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make slimming wrong (a kept weight perturbed), as a bug in the engine would."""
    import compressor.graph as graph

    real = graph.slim

    def slim(*args: Any, **kwargs: Any) -> nn.Module:
        small = real(*args, **kwargs)
        conv = next(m for m in small.modules() if isinstance(m, nn.Conv2d))
        with torch.no_grad():
            conv.weight.add_(1.0)
        return small

    monkeypatch.setattr(graph, "slim", slim)


# ------------------------------------------------------------------ 1. inputs are never replaced
def test_run_refuses_an_input_inside_its_out_folder(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    ck = out / "model.pt"
    ck.write_bytes(assets["ckpt"].read_bytes())
    before = ck.read_bytes()
    res = _quick(assets, ck, out, "--force")
    assert res.exit_code == 2, res.output
    assert "would replace" in res.output and "artifact" in res.output
    assert ck.read_bytes() == before  # still there, unchanged


def test_prune_and_finetune_refuse_to_overwrite_their_input(assets: dict[str, Path], tmp_path: Path) -> None:
    ck = tmp_path / "m.pt"
    ck.write_bytes(assets["ckpt"].read_bytes())
    before = ck.read_bytes()
    res = runner.invoke(app, ["prune", str(ck), "-o", str(ck), "--flops", "0.5"])
    assert res.exit_code == 2 and "input" in res.output, res.output
    res = runner.invoke(app, ["finetune", str(ck), "-o", str(ck), "--epochs", "1", "--no-progress"])
    assert res.exit_code == 2 and "input" in res.output, res.output
    assert ck.read_bytes() == before


# ------------------------------------------------------------------ 2. a failed slim check publishes nothing
def test_failed_slim_check_exits_4_before_finetune_and_publishes_nothing(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _broken_slim(monkeypatch)
    out = tmp_path / "out"
    res = _run(
        str(assets["ckpt"]), "--target", str(assets["target"]), "--method", "l1-uniform", "--epochs", "1",
        "--out", str(out),
    )  # fmt: skip
    assert res.exit_code == 4, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "validation_failed" and rep["exit_code"] == 4
    assert (out / "report.html").is_file()
    for a in ("model.pt", "model.onnx", "test_data_set_0", "model.pt.state"):
        assert not (out / a).exists(), a
    assert "finetune" not in {s["name"] for s in rep["stages"]}  # never fine-tuned
    slim_check = next(c for c in rep["checks"] if c["name"].startswith("slimmed == masked original"))
    assert slim_check["passed"] is False and "relative to output scale" in slim_check["name"]


# ------------------------------------------------------------------ 3. every exit 3 writes its report
def test_method_budget_error_exits_3_with_a_report(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _run(
        str(assets["one_conv"]), "--target", str(assets["target"]), "--method", "eagleeye", "--candidates", "2",
        "--epochs", "0", "--out", str(out), "--arch", "tests.test_guarantees:one_conv_net",
    )  # fmt: skip
    assert res.exit_code == 3, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "budget_not_met" and rep["exit_code"] == 3
    assert (out / "report.html").is_file() and not (out / "model.onnx").exists()


# ------------------------------------------------------------------ 4. prune: a failed check writes nothing
def test_prune_with_a_failed_equivalence_check_exits_4_and_writes_nothing(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _broken_slim(monkeypatch)
    out = tmp_path / "slim.pt"
    res = runner.invoke(app, ["prune", str(assets["ckpt"]), "-o", str(out), "--flops", "0.5"])
    assert res.exit_code == 4, res.output
    assert "relative to output scale" in res.output
    assert not out.exists()


# ------------------------------------------------------------------ 5. errors keep their meaning
def test_an_engine_bug_is_exit_1_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine-internal RuntimeError that mentions 'shape' is not the user's input shape."""
    from compressor.graph import build_graph
    from compressor.graph.propagate import Propagation
    from tests.nets import TOPOLOGIES

    cls = Propagation

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("shape '[2, 3]' is invalid for input of size 7")

    monkeypatch.setattr(cls, "module_ids", broken)
    with pytest.raises(InternalError, match="bug") as e:
        build_graph(TOPOLOGIES["residual"]().eval(), input_shape=(1, 3, 16, 16))
    assert e.value.exit_code == 1 and "rejects input shape" not in str(e.value)


def test_count_does_not_call_out_of_memory_a_bad_input_shape() -> None:
    from compressor.graph import count

    class Hungry(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(UsageError, match="out of memory") as e:
        count(Hungry(), (1, 3, 8, 8))
    assert "rejects input shape" not in str(e.value)


def test_cli_maps_an_unexpected_exception_to_exit_1_naming_it_a_bug(
    assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import compressor.api as api

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("oops")

    monkeypatch.setattr(api, "profile", boom)
    res = runner.invoke(app, ["profile", str(assets["ckpt"])])
    assert res.exit_code == 1
    assert "internal error" in res.output and "bug" in res.output


@pytest.mark.parametrize("err", [UsageError("u"), BudgetError("b"), ValidationError("v"), KeyError("k")])
def test_errors_carried_across_ranks_keep_their_class(err: Exception) -> None:
    got = rebuild(carry(err))
    want = InternalError if isinstance(err, KeyError) else type(err)
    assert type(got) is want and got.exit_code == getattr(err, "exit_code", 1)


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("mode", "cls", "code"), [("usage-error", "UsageError", 2), ("budget-error", "BudgetError", 3)]
)
def test_a_rank_error_is_the_same_error_on_every_rank(tmp_path: Path, mode: str, cls: str, code: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(HERE / "dist_search_worker.py"), mode, str(tmp_path / "err.json")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"err.{rank}.json").read_text())
        assert got["class"] == cls and got["exit_code"] == code, (rank, got)
        assert "on rank 1" in got["message"]


# ------------------------------------------------------------------ 7. the target's opset, or exit 2
def test_export_honours_the_opset_or_fails_saying_which_could_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the TorchScript exporter fails, the fallback's opset 18 is not written under opset 13."""
    import compressor.export.onnx_export as ox
    from compressor.export import export_onnx

    real = ox._export_to

    def no_torchscript(*args: Any, exporter: str, **kwargs: Any) -> None:
        if exporter == "torchscript":
            raise RuntimeError("unsupported op (simulated)")
        real(*args, exporter=exporter, **kwargs)

    monkeypatch.setattr(ox, "_export_to", no_torchscript)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    out = tmp_path / "m.onnx"
    with pytest.raises(UsageError, match="opset 13") as e:
        export_onnx(m.eval(), out, input_shape=(1, 3, 8, 8), opset=13)
    assert "could be written only at opset 18" in str(e.value) and e.value.exit_code == 2
    assert not out.exists()


# ------------------------------------------------------------------ 8. one definition of the tolerance
def test_verify_is_relative_to_the_output_scale() -> None:
    """Scaling the output layer by 1000 (original and slim alike) leaves verify() unchanged: it is
    the max error relative to the output scale, to be compared as is (never divided again)."""
    from compressor.graph import build_graph, slim
    from compressor.plan import Plan
    from tests.nets import TOPOLOGIES

    torch.manual_seed(0)
    net = TOPOLOGIES["residual"]().eval()
    graph = build_graph(net, input_shape=(1, 3, 16, 16))
    g = graph.prunable[0]
    plan = Plan(method="t", groups={g.name: list(range(g.size // 2))}, group_sizes={g.name: g.size})
    small = slim(net, plan, graph=graph)
    with torch.no_grad():
        next(m for m in small.modules() if isinstance(m, nn.Conv2d)).weight.mul_(1.5)  # a wrong slim
    x = [torch.randn(2, 3, 16, 16)]
    before = graph.verify(small, plan, inputs=x)
    assert before > 1e-3
    for m in (net, small):
        last = [c for c in m.modules() if isinstance(c, (nn.Linear, nn.Conv2d))][-1]
        with torch.no_grad():
            last.weight.mul_(1000.0)
            if last.bias is not None:
                last.bias.mul_(1000.0)
    assert graph.verify(small, plan, inputs=x) == pytest.approx(before, rel=1e-3)


# ------------------------------------------------------------------ 14. errors say what is allowed
def test_error_messages_say_what_is_allowed(tmp_path: Path) -> None:
    from compressor.data import load_data
    from compressor.errors import DataError
    from compressor.graph import build_graph, slim
    from compressor.plan import Plan
    from tests.nets import TOPOLOGIES

    graph_net = TOPOLOGIES["residual"]().eval()
    graph = build_graph(graph_net, input_shape=(1, 3, 16, 16))
    g = graph.prunable[0]
    bad = Plan(method="t", groups={g.name: [0, g.size + 5]}, group_sizes={g.name: g.size})
    with pytest.raises(UsageError, match=rf"must be in 0\.\.{g.size - 1}"):
        slim(graph_net, bad, graph=graph)
    with pytest.raises(DataError, match="data_batch_1"):
        load_data(f"cifar10:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match=r"e\.g\. \[3, 32, 32\]"):
        load_data("mnist5k", meta={"input_shape": [0, 28, 28]})
