"""The ``quantize`` stage of ``compress run``, through the real CLI on the demo ResNet (mnist5k).

Kept fast: l1-uniform at 95% of the FLOPs without fine-tuning (seconds, and the FP32 model keeps
its accuracy), 1 calibration batch of 32 images, 1 latency repeat. What is checked: what ships
(model.onnx INT8 with its metadata, model.fp32.onnx beside it, INT8 test data), the report's
FP32 vs INT8 numbers, resume, precision fp32, bad --precision (exit 2), a real INT8 model beyond
a strict tolerance (exit 4), the dry-run line and the targets' defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from compressor.cli.main import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "examples" / "resnet_mnist.pt")
runner = CliRunner()


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "fast.toml"
    p.write_text("int8_calib_batches = 1\nint8_latency_repeats = 1\n", encoding="utf-8")
    return p


def _run(out: Path, cfg: Path, *extra: str) -> Any:
    args = [
        "run", DEMO, "--target", "mobile", "--method", "l1-uniform", "--flops", "0.95", "--epochs", "0",
        "--max-acc-drop", "10", "--config", str(cfg), "--out", str(out), "--json", *extra,
    ]  # fmt: skip
    return runner.invoke(app, args, catch_exceptions=False)


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory: pytest.TempPathFactory, cfg: Path) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("q") / "out"
    res = _run(out, cfg, "--precision", "int8")
    return {"out": out, "res": res}


def test_int8_ships_with_fp32_beside_it_and_metadata(int8_run: dict[str, Any]) -> None:
    out, res = int8_run["out"], int8_run["res"]
    assert res.exit_code == 0, res.output
    assert "QuantizeLinear" in _ops(out / "model.onnx")
    assert "QuantizeLinear" not in _ops(out / "model.fp32.onnx")
    meta = _props(out / "model.onnx")
    assert meta["compressor.precision"] == "int8"
    assert meta["compressor.input_layout"] == "NCHW" and meta["compressor.input_shape"] == "1x1x28x28"
    assert json.loads(meta["compressor.num_classes"]) == 10
    assert len(json.loads(meta["compressor.mean"])) == 1 and len(json.loads(meta["compressor.std"])) == 1
    assert len(meta["compressor.plan_hash"]) == 64 and meta["compressor.version"]
    assert _props(out / "model.fp32.onnx")["compressor.precision"] == "fp32"


def test_int8_test_data_replays_on_the_shipped_model(int8_run: dict[str, Any]) -> None:
    from compressor.export.quantize import _Runner
    from compressor.export.validate import read_tensor
    from compressor.targets import load_target

    out = int8_run["out"]
    x = read_tensor(out / "test_data_set_0" / "input_0.pb")
    y = read_tensor(out / "test_data_set_0" / "output_0.pb")
    rt = load_target("mobile").runtime
    np.testing.assert_allclose(_Runner(out / "model.onnx", rt)(x), y, rtol=1e-5, atol=1e-5)
    # the INT8 outputs, not the FP32 model's: the two differ
    assert not np.allclose(_Runner(out / "model.fp32.onnx", rt)(x), y, rtol=0, atol=1e-6)


def test_int8_report_shows_fp32_vs_int8(int8_run: dict[str, Any]) -> None:
    out = int8_run["out"]
    rep = json.loads((out / "report.json").read_text())
    q = rep["quantize"]
    assert q["requested"] == "int8" and q["precision"] == "int8" and q["status"] == "ok"
    for side in ("fp32", "int8"):
        assert q[side]["val_top1"] > 90 and q[side]["p50"] > 0 and q[side]["size_bytes"] > 0
    assert q["int8"]["size_bytes"] < q["fp32"]["size_bytes"]
    assert isinstance(q["kept_fp32"], list)
    assert rep["compressed"]["precision"] == "int8"
    assert rep["compressed"]["top1_ort"] == q["int8"]["test_top1"]
    num = [c for c in rep["checks"] if c["name"].startswith("INT8 vs PyTorch")]
    assert num and num[0]["passed"] is True and num[0]["value"] <= num[0]["limit"]
    assert "model.fp32.onnx" in rep["artifacts"]
    html = (out / "report.html").read_text()
    assert "Precision: FP32 vs INT8" in html and "INT8 candidates" in html
    assert [s["name"] for s in rep["stages"]][-2:] == ["quantize", "report"]


def test_rerun_resumes_the_quantize_decision(int8_run: dict[str, Any], cfg: Path) -> None:
    out = int8_run["out"]
    before = (out / "model.onnx").read_bytes()
    res = _run(out, cfg, "--precision", "int8")
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    st = {s["name"]: s["status"] for s in rep["stages"]}
    assert st["quantize"] == "resumed" and rep["quantize"]["resumed"] is True
    assert (out / "model.onnx").read_bytes() == before


def test_precision_fp32_ships_fp32_with_metadata(tmp_path: Path, cfg: Path) -> None:
    res = _run(tmp_path / "out", cfg, "--precision", "fp32")
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    assert "QuantizeLinear" not in _ops(out / "model.onnx") and not (out / "model.fp32.onnx").exists()
    assert _props(out / "model.onnx")["compressor.precision"] == "fp32"
    rep = json.loads((out / "report.json").read_text())
    assert rep["quantize"]["precision"] == "fp32" and rep["compressed"]["precision"] == "fp32"


def test_int8_beyond_the_tolerance_exits_4(
    tmp_path: Path, cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real INT8 model against a tolerance no INT8 model meets: exit 4, the FP32 model stays."""
    import compressor.export.quantize as q

    strict = q.Int8Tolerance(min_top1_agreement=100.0, max_rel_error=1e-6)
    monkeypatch.setattr(q, "Int8Tolerance", lambda: strict)
    res = _run(tmp_path / "out", cfg, "--precision", "int8")
    assert res.exit_code == 4, res.output
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["status"] == "validation_failed" and rep["quantize"]["status"] == "validation_failed"
    assert "QuantizeLinear" not in _ops(tmp_path / "out" / "model.onnx")


def test_bad_precision_exits_2(tmp_path: Path, cfg: Path) -> None:
    res = _run(tmp_path / "out", cfg, "--precision", "int4")
    assert res.exit_code == 2
    assert "precision" in res.output and "auto" in res.output
    assert not (tmp_path / "out").exists()


def test_dry_run_has_a_quantize_line(tmp_path: Path, cfg: Path) -> None:
    res = _run(tmp_path / "out", cfg, "--dry-run")
    assert res.exit_code == 0, res.output
    plan = {r["name"]: r for r in json.loads(res.stdout)["plan"]}
    assert "precision auto" in plan["quantize"]["what"] and "latency gate" in plan["quantize"]["what"]
    assert not (tmp_path / "out").exists()


def test_targets_precision_defaults() -> None:
    from compressor.errors import UsageError
    from compressor.targets import load_target

    assert [load_target(n).export.precision for n in ("mobile", "edge", "server")] == ["auto", "auto", "fp32"]
    assert load_target("server", precision="int8").export.precision == "int8"
    with pytest.raises(UsageError, match="fp32, int8, auto"):
        load_target("mobile", precision="fp16")
