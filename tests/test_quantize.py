"""INT8 on ONNX Runtime: real quantization of the demo models, gates that fail, layer exclusion,
numerics, metadata, and ``compress quantize`` through the CLI.

Kept cheap: one calibration method unless the test is about the choice, a few calibration
images, 200 validation images, short latency runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from compressor.errors import BudgetError, DataError, UsageError, ValidationError

ROOT = Path(__file__).resolve().parents[1]
FAST: dict[str, Any] = dict(
    methods=("minmax",),
    calib_batches=2,
    calib_batch_size=16,
    val_samples=200,
    latency_budget_s=0.2,
    latency_repeats=1,
    report_test=False,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The two demo checkpoints exported for the mobile target, their models and mnist5k."""
    from compressor.checkpoint import load_checkpoint
    from compressor.data import load_data
    from compressor.export import export_checkpoint

    tmp = tmp_path_factory.mktemp("quant")
    out: dict[str, Any] = {"tmp": tmp}
    for name in ("resnet", "mbconv"):
        ckpt = ROOT / "examples" / f"{name}_mnist.pt"
        path = tmp / f"{name}.onnx"
        export_checkpoint(ckpt, path, target="mobile")
        model, meta = load_checkpoint(ckpt)
        out[name] = {"onnx": path, "model": model.eval(), "meta": meta, "ckpt": ckpt}
    out["data"] = load_data("mnist5k", meta=out["resnet"]["meta"])
    return out


def _meta(path: Path) -> dict[str, str]:
    import onnxruntime as ort

    return dict(ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map)


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_auto_on_the_resnet_demo(demo: dict[str, Any]) -> None:
    import compressor
    from compressor.export.quantize import plan_hash, quantize_with_data

    r = demo["resnet"]
    plan = compressor.search(r["model"], method="l1-uniform", flops=0.5, input_shape=(1, 1, 28, 28))
    out = demo["tmp"] / "resnet.auto.onnx"
    d = quantize_with_data(
        r["onnx"],
        out,
        data=demo["data"],
        target="mobile",
        meta=r["meta"],
        plan=plan,
        reference=r["model"],
        **FAST,
    )
    assert d.passed and d.exit_code == 0 and Path(d.out or "") == out and out.is_file()
    names = [c.name for c in d.candidates]
    assert names == ["all/minmax", "conv-gemm/minmax"]  # no-gates == all on a ReLU network
    assert any("no-gates" in n and "same operators" in n for n in d.notes)
    assert d.fp32["top1"] >= 97.0 and d.fp32["latency_p50"] > 0
    for c in d.candidates:
        assert c.accuracy == "pass" and c.drop is not None and c.drop <= 1.0
        assert c.latency_p50 and c.latency_ratio == pytest.approx(c.latency_p50 / d.fp32["latency_p50"])
        assert c.agreement is not None and c.agreement >= 97.0
    meta = _meta(out)
    assert meta["compressor.precision"] == d.precision
    assert meta["compressor.input_layout"] == "NCHW" and meta["compressor.input_shape"] == "1x1x28x28"
    assert json.loads(meta["compressor.mean"]) == [0.1307] and json.loads(meta["compressor.std"]) == [0.3081]
    assert meta["compressor.num_classes"] == "10" and len(json.loads(meta["compressor.classes"])) == 10
    assert meta["compressor.version"] == compressor.__version__
    assert meta["compressor.plan_hash"] == plan_hash(plan) and len(plan_hash(plan)) == 64
    if d.precision == "int8":
        assert "QuantizeLinear" in _ops(out) and d.chosen is not None
        assert d.chosen.latency_ratio is not None and d.chosen.latency_ratio <= 0.9
        assert d.numerics and d.numerics["passed"] and "PyTorch" in d.numerics["against"]
        assert json.loads(meta["compressor.quantization"])["calibration"] == "minmax"
    else:  # only when this machine happens to time INT8 within 10% of FP32
        assert "not at least 10% faster" in d.reason and "QuantizeLinear" not in _ops(out)


def test_calibration_method_is_chosen_by_validation_accuracy(demo: dict[str, Any]) -> None:
    from compressor.export.quantize import quantize_with_data

    opts = {**FAST, "methods": ("minmax", "entropy", "percentile")}
    d = quantize_with_data(
        demo["resnet"]["onnx"], demo["tmp"] / "m.onnx", data=demo["data"], precision="int8", **opts
    )
    first = [c for c in d.candidates if c.selection == "all"]
    assert [c.calibration for c in first] == ["minmax", "entropy", "percentile"]
    best = max(first, key=lambda c: (c.top1, -c.rel_error))
    assert d.calibration["chosen"] == best.calibration
    assert all(d.calibration["methods"][m]["samples"] == 32 for m in opts["methods"])
    assert d.precision == "int8" and d.chosen is not None


def test_impossible_latency_margin_falls_back_to_fp32(demo: dict[str, Any]) -> None:
    from compressor.export.quantize import quantize_with_data

    src = demo["resnet"]["onnx"]
    out = demo["tmp"] / "fp32-fallback.onnx"
    d = quantize_with_data(src, out, data=demo["data"], precision="auto", latency_margin=0.99, **FAST)
    assert d.passed and d.precision == "fp32" and d.chosen is None
    assert "not at least 99% faster" in d.reason and "FP32 model ships" in d.reason
    assert "p50" in d.reason and f"{d.fp32['latency_p50']:.3f} ms" in d.reason  # both latencies
    assert all(c.latency_p50 for c in d.candidates)
    assert "QuantizeLinear" not in _ops(out)
    assert len(onnx.load(str(out)).graph.node) == len(onnx.load(str(src)).graph.node)
    assert _meta(out)["compressor.precision"] == "fp32"


def test_accuracy_budget_of_minus_one_fails(demo: dict[str, Any]) -> None:
    from compressor.export.quantize import quantize_with_data

    src = demo["resnet"]["onnx"]
    out = demo["tmp"] / "never.onnx"
    d = quantize_with_data(
        src,
        out,
        data=demo["data"],
        precision="int8",
        max_acc_drop=-1.0,
        max_excluded=2,
        sensitivity_samples=32,
        **FAST,
    )
    assert d.status == "budget_failed" and d.exit_code == 3 and not out.exists()
    assert "no INT8 model stays within the accuracy budget of -1 points" in d.reason
    with pytest.raises(BudgetError):
        d.raise_for_status()
    assert len(d.sensitivity) >= 10  # every conv, add, pool and the classifier, measured alone
    gave_up = [c for c in d.candidates if c.excluded]
    assert len(gave_up) == 2 and {c.selection for c in gave_up} == {"all", "conv-gemm"}
    assert all(len(c.excluded) == 2 and "gave up" in c.note for c in gave_up)  # one try each
    # with "auto" the same budget is not an error: FP32 ships and the decision says why
    d = quantize_with_data(
        src, out, data=demo["data"], precision="auto", max_acc_drop=-1.0, max_excluded=1, **FAST
    )
    assert d.passed and d.precision == "fp32" and "FP32 model ships" in d.reason
    assert _meta(out)["compressor.precision"] == "fp32"


def test_sensitive_layers_stay_fp32(demo: dict[str, Any]) -> None:
    """One channel of an activation scaled by 400 (and its consumer's weights by 1/400): the same
    function in FP32, but per-tensor INT8 crushes the other channels of that tensor. The
    sensitivity search must find the two convolutions around it and keep them in FP32."""
    import copy

    from compressor.export import export_onnx
    from compressor.export.quantize import quantize_with_data

    model = copy.deepcopy(demo["resnet"]["model"])
    x = torch.stack([demo["data"].test[i][0] for i in range(16)])
    ref = model(x)
    blk = model.layer2[0]
    with torch.no_grad():
        blk.bn1.weight[0] *= 400.0
        blk.bn1.bias[0] *= 400.0
        blk.conv2.weight[:, 0] /= 400.0
    torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)
    src = demo["tmp"] / "hostile.onnx"
    export_onnx(model, src, input_shape=(1, 1, 28, 28), dynamic_batch=False)
    out = demo["tmp"] / "hostile.int8.onnx"
    d = quantize_with_data(
        src,
        out,
        data=demo["data"],
        precision="int8",
        meta=demo["resnet"]["meta"],
        sensitivity_samples=64,
        **FAST,
    )
    plain = [c for c in d.candidates if not c.excluded]
    assert plain and all(c.accuracy == "fail" and c.drop > 20 for c in plain)
    assert d.passed and d.precision == "int8" and d.chosen is not None
    kept = sorted(d.chosen.excluded)
    assert kept == ["/layer2/layer2.0/conv1/Conv", "/layer2/layer2.0/conv2/Conv"]
    assert d.sensitivity[0].node in kept and d.sensitivity[1].node in kept
    assert d.sensitivity[1].rel_error > 10 * d.sensitivity[2].rel_error
    assert [k["node"] for k in d.kept_fp32] == [s.node for s in d.sensitivity[:2]]
    assert all("most sensitive" in k["reason"] for k in d.kept_fp32)
    assert d.chosen.drop is not None and d.chosen.drop <= 1.0
    assert sorted(json.loads(_meta(out)["compressor.quantization"])["nodes_kept_fp32"]) == kept


def test_numerics_tolerance_fails_on_broken_models(demo: dict[str, Any]) -> None:
    from onnx import numpy_helper

    from compressor.export.quantize import check_numerics, quantize_with_data

    r = demo["resnet"]
    out = demo["tmp"] / "num.int8.onnx"
    d = quantize_with_data(r["onnx"], out, data=demo["data"], precision="int8", **FAST)
    assert d.passed and d.numerics and d.numerics["passed"]
    xs = [np.stack([demo["data"].val[i][0].numpy() for i in range(64)])]
    good = check_numerics(out, xs, r["model"])
    assert good["passed"] and good["top1_agreement"] >= 95 and good["rel_error"] < 0.1
    # a reference that is not this model's: its classes rolled by one
    rolled = np.roll(r["model"](torch.from_numpy(xs[0])).detach().numpy(), 1, axis=1)
    assert not check_numerics(out, xs, rolled)["passed"]
    # a broken INT8 model: the first weight scale 4x too large
    m = onnx.load(str(out))
    inits = {i.name: i for i in m.graph.initializer}
    deq = next(
        n
        for n in m.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and "weight" in n.input[0]
    )
    scale = inits[deq.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 4, scale.name))
    broken = demo["tmp"] / "broken.int8.onnx"
    onnx.save(m, str(broken))
    bad = check_numerics(broken, xs, r["model"])
    assert not bad["passed"] and bad["rel_error"] > 0.25
    # end to end: a reference model that is not the one exported fails validation (exit 4)
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    out2 = demo["tmp"] / "num2.int8.onnx"
    d = quantize_with_data(r["onnx"], out2, data=demo["data"], precision="int8", reference=other, **FAST)
    assert d.status == "validation_failed" and d.exit_code == 4 and not out2.exists()
    with pytest.raises(ValidationError, match="beyond the INT8 tolerance"):
        d.raise_for_status()


def test_mbconv_demo_tries_selections_without_gates(demo: dict[str, Any]) -> None:
    from compressor.export.quantize import quantize_with_data

    r = demo["mbconv"]
    out = demo["tmp"] / "mbconv.auto.onnx"
    d = quantize_with_data(r["onnx"], out, data=demo["data"], meta=r["meta"], precision="auto", **FAST)
    assert d.passed and out.is_file()
    by = {c.selection: c for c in d.candidates}
    assert set(by) == {"all", "no-gates", "conv-gemm"}
    assert {"Sigmoid", "Mul"} <= set(by["all"].op_types)
    assert not {"Sigmoid", "Mul"} & set(by["no-gates"].op_types) and "Add" in by["no-gates"].op_types
    assert set(by["conv-gemm"].op_types) == {"Conv", "Gemm"}
    assert all(c.accuracy == "pass" and c.latency_p50 for c in d.candidates)
    fastest = min(d.candidates, key=lambda c: c.latency_p50 or 0)
    if d.precision == "int8":
        assert d.chosen is fastest and (fastest.latency_ratio or 1) <= 0.9
    else:
        assert (fastest.latency_ratio or 0) > 0.9 and f"{fastest.latency_p50:.3f} ms" in d.reason
    assert _meta(out)["compressor.precision"] == d.precision


def test_fp32_precision_and_bad_input(demo: dict[str, Any], tmp_path: Path) -> None:
    from compressor.export.quantize import calibration_batches, quantize_onnx, quantize_with_data

    src = demo["resnet"]["onnx"]
    out = tmp_path / "fp32.onnx"
    d = quantize_with_data(src, out, data=demo["data"], precision="fp32", **FAST)
    assert d.passed and d.precision == "fp32" and d.candidates == []
    assert len(onnx.load(str(out)).graph.node) == len(onnx.load(str(src)).graph.node)
    assert _meta(out)["compressor.precision"] == "fp32" and _meta(out)["compressor.quantization"] == "none"
    with pytest.raises(UsageError, match="never overwrites its input"):
        quantize_with_data(src, src, data=demo["data"], **FAST)
    with pytest.raises(UsageError, match="precision 'int4' is invalid"):
        quantize_with_data(src, out, data=demo["data"], precision="int4", **FAST)
    wrong = [(np.zeros((4, 3, 32, 32), np.float32), np.zeros(4, np.int64))]
    with pytest.raises(DataError, match="expects"):
        quantize_onnx(src, out, calibration=calibration_batches(demo["data"], 1), validation=wrong)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_quantize(demo: dict[str, Any], tmp_path: Path) -> None:
    from compressor.cli.main import app
    from typer.testing import CliRunner

    runner = CliRunner()
    src = demo["resnet"]["onnx"]
    before = _sha(src)
    fast = ["--methods", "minmax", "--calib-batches", "1", "--latency-seconds", "0.2"]
    res = runner.invoke(app, ["quantize", str(src), "--data", "mnist5k", "-o", str(src), *fast])
    assert res.exit_code == 2 and "never overwrites its input" in res.output
    assert _sha(src) == before

    out = tmp_path / "q.onnx"
    res = runner.invoke(
        app,
        [
            "quantize",
            str(src),
            "--data",
            "mnist5k",
            "-o",
            str(out),
            "--reference",
            str(demo["resnet"]["ckpt"]),
            "--json",
            *fast,
        ],
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["passed"] and d["out"] == str(out) and out.is_file() and _sha(src) == before
    assert d["report_split"]["samples"] == 500 and d["fp32"]["validation_samples"] == 500
    assert _meta(out)["compressor.precision"] == d["precision"]

    res = runner.invoke(app, ["quantize", str(src), "--data", "mnist5k", "-o", str(out), *fast])
    assert res.exit_code == 0, res.output
    assert (
        "* " in res.output and "top-1" in res.output and ("INT8 ->" in res.output or "FP32 ->" in res.output)
    )

    never = tmp_path / "never.onnx"
    res = runner.invoke(
        app,
        [
            "quantize",
            str(src),
            "--data",
            "mnist5k",
            "-o",
            str(never),
            "--precision",
            "int8",
            "--max-acc-drop",
            "-1",
            *fast,
        ],
    )
    assert res.exit_code == 3 and "no INT8 model stays within" in res.output and not never.exists()
