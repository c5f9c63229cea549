"""ONNX export, simplification, validation on ONNX Runtime, test data sets, and the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from compressor.errors import BudgetError, UsageError, ValidationError
from compressor.export import (
    export_for_target,
    export_onnx,
    measure_latency,
    read_tensor,
    resolve_input_shape,
    simplify_onnx,
    validate,
)
from compressor.targets import load_target

SHAPE = (1, 16, 16)


def tiny_net(width: int = 8, classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(SHAPE[0], width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, stride=2),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )
    for mod in m.modules():  # non-trivial BN statistics so folding is exercised
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def labelled_by(model: nn.Module, n: int = 96, seed: int = 1) -> TensorDataset:
    """Images labelled by ``model``'s own predictions: ``model`` scores 100% on them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *SHAPE, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return TensorDataset(x, y)


def fast(target: str = "server", **kw: object) -> object:
    """A target timed quickly and on one thread (tests share a 2-core machine)."""
    return load_target(target, intra_op_threads=1, **kw)


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("dynamic", [True, False])
def test_export_names_shapes_versions_and_matches_torch(tmp_path: Path, dynamic: bool) -> None:
    model = tiny_net()
    res = export_onnx(model, tmp_path / "m.onnx", input_shape=(2, *SHAPE), opset=13, dynamic_batch=dynamic)
    assert res.opset == 13 and res.exporter in ("torchscript", "dynamo")
    assert res.input_name == "input" and res.output_name == "logits"
    assert set(res.versions) == {"torch", "onnx", "onnxruntime", "onnxsim"}
    assert res.versions["onnxruntime"] == ort.__version__
    assert (
        res.simplified and res.simplify is not None and res.simplify.nodes_after <= res.simplify.nodes_before
    )
    proto = onnx.load(res.path)
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [13]
    props = {p.key: p.value for p in proto.metadata_props}
    assert (
        props["compressor.opset"] == "13" and props["compressor.onnxsim_version"] == res.versions["onnxsim"]
    )
    assert proto.producer_name == "compressor"
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if dynamic:
        assert dim0.dim_param == "batch"
    else:
        assert dim0.dim_value == 2
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    batch = 3 if dynamic else 2
    x = np.random.default_rng(0).standard_normal((batch, *SHAPE)).astype(np.float32)
    got = sess.run(["logits"], {"input": x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-4)
    assert not model.training


def test_export_for_target_uses_target_options_and_shape_sources(tmp_path: Path) -> None:
    t = load_target("mobile")  # opset 17, static batch 1
    res = export_for_target(tiny_net(), tmp_path / "m.onnx", target=t, meta={"input_shape": list(SHAPE)})
    assert res.opset == t.export.opset and res.dynamic_batch is False and res.input_shape == [1, *SHAPE]
    assert resolve_input_shape(t, {"input_shape": [3, 8, 8]}, (1, 4, 4)) == (1, 1, 4, 4)
    assert resolve_input_shape(t, {"input_shape": [3, 8, 8]}) == (1, 3, 8, 8)
    assert resolve_input_shape(load_target("mobile", shape=[3, 5, 5], batch=2)) == (2, 3, 5, 5)
    with pytest.raises(UsageError, match="input-shape"):
        resolve_input_shape(t, {})


def test_simplification_failure_keeps_unsimplified_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxsim

    path = tmp_path / "m.onnx"
    export_onnx(tiny_net(), path, input_shape=(1, *SHAPE), simplify=False)
    before = path.read_bytes()

    def boom(*a: object, **k: object) -> object:
        raise RuntimeError("simplifier exploded")

    monkeypatch.setattr(onnxsim, "simplify", boom)
    r = simplify_onnx(path)
    assert not r.simplified and "simplifier exploded" in r.message and "kept the unsimplified" in r.message
    assert path.read_bytes() == before

    monkeypatch.setattr(onnxsim, "simplify", lambda model, **k: (model, False))
    res = export_onnx(tiny_net(), path, input_shape=(1, *SHAPE))
    assert res.simplified is False and res.simplify is not None
    assert "check failed" in res.simplify.message
    onnx.checker.check_model(onnx.load(str(path)))


def test_export_failure_is_a_validation_error(tmp_path: Path) -> None:
    class Weird(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.onnx.is_in_onnx_export():
                raise RuntimeError("operator 'weird' is not supported")
            return x

    with pytest.raises(ValidationError, match="cannot export"):
        export_onnx(Weird(), tmp_path / "w.onnx", input_shape=(1, *SHAPE), exporter="torchscript")
    assert not (tmp_path / "w.onnx").exists()
    with pytest.raises(UsageError, match="exporter"):
        export_onnx(tiny_net(), tmp_path / "w.onnx", input_shape=(1, *SHAPE), exporter="tflite")


# ---------------------------------------------------------------- validation


def test_validate_passes_and_writes_replayable_test_data(tmp_path: Path) -> None:
    model = tiny_net()
    path = tmp_path / "model.onnx"
    export_onnx(model, path, input_shape=(1, *SHAPE))
    data = labelled_by(model)
    rep = validate(
        path, model, target=fast(), data=data, original=tiny_net(width=16, seed=3), latency_budget_s=0.2
    )
    assert rep.passed and rep.exit_code == 0, rep.to_dict()["checks"]
    rep.raise_for_status()
    assert {c.name: c.status for c in rep.checks} == {
        "numerics": "pass",
        "accuracy_agreement": "pass",
        "accuracy_drop": "pass",
        "latency": "pass",
    }
    acc = rep.accuracy
    assert acc is not None and acc["samples"] == len(data)
    assert acc["onnx_top1"] == acc["torch_top1"] == 100.0 and "onnx_top5" in acc
    assert rep.numerics["data"]["samples"] == len(data) and rep.numerics["random"]["batches"] == 3
    num = rep.check("numerics")
    assert num.value is not None and num.limit is not None and 0 <= num.value <= num.limit
    assert rep.numerics["data"]["tolerance_used"] < 1.0
    lat = rep.latency
    assert lat is not None and lat["compressed"]["runs"] >= 30 and "original" in lat and lat["ratio_p50"] > 0
    assert lat["compressed"]["p50"] <= lat["compressed"]["p90"] <= lat["compressed"]["p99"]
    assert "this machine" in lat["measured_on"] and "runtime settings" in lat["measured_on"]
    # test_data_set_0 beside the model, replayable with ONNX Runtime
    folder = tmp_path / "test_data_set_0"
    x, y = read_tensor(folder / "input_0.pb"), read_tensor(folder / "output_0.pb")
    assert x.shape == (1, *SHAPE) and y.shape == (1, 10)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, y, atol=1e-5, rtol=1e-4)
    assert rep.test_data_set is not None and rep.test_data_set["source"] == "real data"
    json.dumps(rep.to_dict())


def test_wrong_onnx_model_fails_numerics_with_exit_4(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    export_onnx(tiny_net(seed=0), path, input_shape=(1, *SHAPE))
    other = tiny_net(seed=1)
    rep = validate(path, other, target=fast(), data=labelled_by(other), latency=False)
    assert rep.check("numerics").status == "fail" and rep.exit_code == 4 and not rep.passed
    num = rep.check("numerics")
    assert num.value is not None and num.limit is not None and num.value > num.limit >= 1e-4  # max abs diff
    assert rep.numerics["data"]["tolerance_used"] > 1.0
    assert rep.check("latency").status == "skipped"
    with pytest.raises(ValidationError, match="numerics"):
        rep.raise_for_status()


def test_accuracy_drop_beyond_allowance_is_a_budget_failure(tmp_path: Path) -> None:
    original = tiny_net(width=16, seed=5)
    compressed = tiny_net(seed=6)
    path = tmp_path / "model.onnx"
    export_onnx(compressed, path, input_shape=(1, *SHAPE))
    data = DataLoader(labelled_by(original, n=80), batch_size=32)  # original scores 100%
    rep = validate(
        path, compressed, target=fast(max_acc_drop=1.0), data=data, original=original, latency=False
    )
    drop = rep.check("accuracy_drop")
    assert drop.status == "fail" and drop.value is not None and drop.value > 1.0 and drop.limit == 1.0
    assert rep.check("numerics").status == "pass" and rep.exit_code == 3
    with pytest.raises(BudgetError, match="accuracy_drop"):
        rep.raise_for_status()
    # given as a number instead of a model, the same verdict
    rep2 = validate(
        path,
        compressed,
        target=fast(max_acc_drop=1.0),
        data=data,
        original_accuracy=100.0,
        latency=False,
        write_test_data=False,
    )
    assert rep2.check("accuracy_drop").status == "fail"


def test_latency_over_budget_is_exit_3_and_no_budget_is_skipped(tmp_path: Path) -> None:
    model = tiny_net()
    path = tmp_path / "model.onnx"
    export_onnx(model, path, input_shape=(1, *SHAPE))
    rep = validate(path, model, target=fast(latency_ms=1e-6), latency_budget_s=0.1, write_test_data=False)
    assert rep.check("latency").status == "fail" and rep.exit_code == 3
    assert rep.check("accuracy_agreement").status == "skipped"  # no data
    with pytest.raises(BudgetError, match="latency"):
        rep.raise_for_status()
    own = tmp_path / "nolat.toml"
    own.write_text("[runtime]\nintra_op_threads = 1\n", encoding="utf-8")  # no latency_ms: no budget
    rep = validate(path, model, target=str(own), latency_budget_s=0.1, write_test_data=False)
    assert rep.check("latency").status == "skipped" and rep.check("latency").value is not None
    assert rep.passed


def test_fixed_batch_model_validates_on_uneven_batches(tmp_path: Path) -> None:
    model = tiny_net()
    t = fast("mobile", batch=4)  # static batch 4
    res = export_for_target(model, tmp_path / "model.onnx", target=t, input_shape=SHAPE)
    assert res.input_shape == [4, *SHAPE] and not res.dynamic_batch
    data = DataLoader(labelled_by(model, n=37), batch_size=10)  # 10, 10, 10, 7 -> padded chunks
    rep = validate(res.path, model, target=t, data=data, latency_budget_s=0.1)
    assert rep.passed, rep.to_dict()["checks"]
    assert rep.accuracy is not None and rep.accuracy["samples"] == 37 and rep.accuracy["onnx_top1"] == 100.0
    assert read_tensor(tmp_path / "test_data_set_0" / "input_0.pb").shape == (4, *SHAPE)


def test_mismatched_data_shape_is_a_data_error(tmp_path: Path) -> None:
    from compressor.errors import DataError

    model = tiny_net()
    path = tmp_path / "model.onnx"
    export_onnx(model, path, input_shape=(1, *SHAPE))
    bad = TensorDataset(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DataError, match="expects"):
        validate(path, model, target=fast(), data=bad, latency=False)
    with pytest.raises(UsageError, match="does not exist"):
        validate(tmp_path / "nope.onnx", model, target=fast())
    with pytest.raises(UsageError, match="not available"):
        validate(path, model, target=fast(provider="NoSuchExecutionProvider"))


def test_measure_latency_single_and_interleaved(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_onnx(tiny_net(width=8), a, input_shape=(1, *SHAPE))
    export_onnx(tiny_net(width=32), b, input_shape=(1, *SHAPE))
    t = load_target("server", intra_op_threads=64)
    r = measure_latency(a, target=t, time_budget_s=0.1, min_runs=20)
    assert r["runs"] >= 20 and 0 < r["p50"] <= r["p90"] and r["std"] >= 0
    assert r["percentile"] == t.budget.percentile and r["input_shape"] == [1, *SHAPE]
    assert r["session"]["intra_op_threads_requested"] == 64
    assert r["session"]["intra_op_threads_used"] <= 64 and r["session"]["notes"]  # capped to this machine
    both = measure_latency([a, b], target=fast(), time_budget_s=0.1, min_runs=20)
    assert [m["path"] for m in both["models"]] == [str(a), str(b)]
    assert all(m["runs"] >= 20 for m in both["models"])
    cpu = measure_latency(a, target=fast(), time_budget_s=0.05, min_runs=10, clock="thread_cpu")
    assert cpu["clock"] == "thread_cpu" and cpu["p50"] > 0 and cpu["runs"] >= 10
    with pytest.raises(UsageError, match="thread_cpu"):
        measure_latency(a, target=fast(), clock="cpu")


def test_top5_only_with_more_than_five_classes(tmp_path: Path) -> None:
    model = tiny_net(classes=4)
    path = tmp_path / "model.onnx"
    export_onnx(model, path, input_shape=(1, *SHAPE))
    rep = validate(
        path, model, target=fast(), data=labelled_by(model, n=20), latency=False, write_test_data=False
    )
    assert rep.accuracy is not None and "onnx_top1" in rep.accuracy and "onnx_top5" not in rep.accuracy


# ---------------------------------------------------------------- CLI


DEMO = {"num_classes": 10, "in_channels": 1, "depth": 8, "width": 4}


def save_demo(path: Path, seed: int, **kw: int) -> Path:
    from compressor.checkpoint import save_checkpoint
    from compressor.models import build_model

    torch.manual_seed(seed)
    args = {**DEMO, **kw}
    m = build_model("resnet_cifar", **args).eval()
    return save_checkpoint(
        m,
        path,
        meta={
            "arch": "resnet_cifar",
            "arch_kwargs": args,
            "dataset": "mnist5k",
            "input_shape": [1, 28, 28],
            "num_classes": 10,
            "mean": [0.1307],
            "std": [0.3081],
        },
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_demo(tmp_path_factory.mktemp("ckpt") / "model.pt", 0)


def test_cli_export_and_validate(tmp_path: Path, checkpoint: Path) -> None:
    from compressor.cli.main import app
    from typer.testing import CliRunner

    runner = CliRunner()
    onnx_path = tmp_path / "out" / "model.onnx"
    r = runner.invoke(app, ["export", str(checkpoint), "--target", "mobile", "-o", str(onnx_path), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["opset"] == 17 and res["input_shape"] == [1, 1, 28, 28] and res["dynamic_batch"] is False
    assert onnx_path.is_file()

    report = tmp_path / "report.json"
    args = [
        "validate",
        str(onnx_path),
        "--reference",
        str(checkpoint),
        "--target",
        "mobile",
        "--threads",
        "1",
        "--latency-seconds",
        "0.2",
        "-o",
        str(report),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    d = json.loads(report.read_text())
    assert d["passed"] and d["latency"]["compressed"]["runs"] > 0
    assert "numerics" in r.output and "PASS" in r.output
    assert (onnx_path.parent / "test_data_set_0" / "output_0.pb").is_file()

    r = runner.invoke(app, [*args, "--latency-ms", "0.000001", "--json"])
    assert r.exit_code == 3, r.output
    assert json.loads(report.read_text())["exit_code"] == 3  # the report is written before exiting

    r = runner.invoke(app, ["export", str(checkpoint), "--target", "phone", "-o", str(tmp_path / "x.onnx")])
    assert r.exit_code == 2 and "mobile" in r.output
    r = runner.invoke(app, [*args, "--opt-level", "max"])
    assert r.exit_code == 2 and "extended" in r.output


def test_cli_validate_wrong_reference_exits_4(tmp_path: Path, checkpoint: Path) -> None:
    from compressor.cli.main import app
    from typer.testing import CliRunner

    other = save_demo(tmp_path / "other.pt", 1)
    onnx_path = tmp_path / "model.onnx"
    runner = CliRunner()
    assert (
        runner.invoke(app, ["export", str(checkpoint), "-t", "server", "-o", str(onnx_path)]).exit_code == 0
    )
    r = runner.invoke(
        app, ["validate", str(onnx_path), "--reference", str(other), "-t", "server", "--no-latency"]
    )
    assert r.exit_code == 4, r.output
    assert (tmp_path / "validation.json").is_file()


def test_cli_validate_on_mnist_with_original(tmp_path: Path, checkpoint: Path) -> None:
    """The demo flow: real MNIST test split, the original beside the compressed model."""
    from compressor.cli.main import app
    from typer.testing import CliRunner

    original = save_demo(tmp_path / "original.pt", 2, width=8)
    onnx_path = tmp_path / "model.onnx"
    runner = CliRunner()
    assert runner.invoke(app, ["export", str(checkpoint), "-t", "edge", "-o", str(onnx_path)]).exit_code == 0
    r = runner.invoke(
        app,
        [
            "validate",
            str(onnx_path),
            "--reference",
            str(checkpoint),
            "-t",
            "edge",
            "--data",
            "mnist5k",
            "--original",
            str(original),
            "--threads",
            "1",
            "--max-acc-drop",
            "100",
            "--latency-seconds",
            "0.3",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    acc = d["accuracy"]
    assert acc["samples"] >= 100 and {"onnx_top1", "onnx_top5", "torch_top1", "original_top1"} <= set(acc)
    assert d["numerics"]["data"]["samples"] == acc["samples"]
    assert "original" in d["latency"] and d["latency"]["compressed"]["input_shape"] == [1, 1, 28, 28]
    assert d["target"]["export"]["opset"] == 13


@pytest.mark.slow
def test_dynamo_exporter_path(tmp_path: Path) -> None:
    res = export_onnx(tiny_net(), tmp_path / "d.onnx", input_shape=(2, *SHAPE), exporter="dynamo", opset=18)
    assert res.exporter == "dynamo" and res.opset == 18
    rep = validate(res.path, tiny_net(), target=fast(), latency=False, write_test_data=False)
    assert rep.check("numerics").status == "pass"


def test_latency_vs_flops_benchmark_runs(tmp_path: Path) -> None:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "latency_vs_flops.py"
    spec = importlib.util.spec_from_file_location("latency_vs_flops", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "r.json"
    assert (
        mod.main(["--models", "resnet_cifar", "--seconds", "0.2", "--threads", "1", "--out", str(out)]) == 0
    )
    d = json.loads(out.read_text())
    r = d["results"]["resnet_cifar"]
    assert 0.3 < r["slim"]["flops_ratio"] < 0.7 and r["slim_x8"]["conv_widths_multiple_of_8"] > 0.5
    assert r["original"]["cpu_1thread"]["latency_ratio"] == 1.0 and "machine" in d
