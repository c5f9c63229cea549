"""``compress run`` end to end (CliRunner) on a tiny ResNet and a tiny fake CIFAR-10 folder.

One shared run (module fixture) is checked from several angles; the other cases (impossible
latency budget, bad input, dry run, other settings in the same out folder) are quick because they
stop early or use the data-free l1-uniform method with no fine-tuning.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from compressor.cli.main import app
from typer.testing import CliRunner

from compressor.errors import UsageError

runner = CliRunner()

TARGET_TOML = """
description = "test target: generous budgets, 1 thread"
[budget]
flops = 0.5
latency_ms = 1000.0
percentile = 90
max_acc_drop = 100.0
[runtime]
intra_op_threads = 1
[export]
channel_multiple = 1
"""


def _fake_cifar(root: Path, n_per_batch: int = 24, n_test: int = 40) -> Path:
    """CIFAR-10's python layout (data_batch_1..5, test_batch) with learnable class colours."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(10, 3))

    def batch(n: int, offset: int) -> dict[bytes, Any]:
        labels = [(offset + i) % 10 for i in range(n)]
        base = colours[labels][:, :, None, None] * np.ones((1, 1, 32, 32))
        data = np.clip(base + rng.normal(0, 30, size=base.shape), 0, 255).astype(np.uint8).reshape(n, 3072)
        return {b"data": data, b"labels": labels}

    root.mkdir(parents=True)
    for i in range(1, 6):
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_per_batch, i), f)
    with open(root / "test_batch", "wb") as f:
        pickle.dump(batch(n_test, 0), f)
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from compressor.checkpoint import save_checkpoint
    from compressor.models import build_model

    root = tmp_path_factory.mktemp("run")
    data = _fake_cifar(root / "cifar")
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_channels": 3, "depth": 8, "width": 8}
    model = build_model("resnet_cifar", **kwargs).eval()
    meta = {
        "arch": "resnet_cifar",
        "arch_kwargs": kwargs,
        "dataset": f"cifar10:{data}",
        "input_shape": [3, 16, 16],
        "num_classes": 10,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    }
    ckpt = save_checkpoint(model, root / "tiny.pt", meta=meta)
    target = root / "tiny_target.toml"
    target.write_text(TARGET_TOML, encoding="utf-8")
    return {"root": root, "ckpt": Path(ckpt), "target": target, "data": data}


def _invoke(*args: str) -> Any:
    return runner.invoke(app, ["run", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def eagleeye_run(assets: dict[str, Path]) -> dict[str, Any]:
    out = assets["root"] / "out_ee"
    args = [
        str(assets["ckpt"]),
        "--target",
        str(assets["target"]),
        "--method",
        "eagleeye",
        "--candidates",
        "3",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--json",
    ]
    res = _invoke(*args)
    return {"args": args, "res": res, "out": out}


def test_run_passes_and_writes_every_artifact(eagleeye_run: dict[str, Any]) -> None:
    res, out = eagleeye_run["res"], eagleeye_run["out"]
    assert res.exit_code == 0, res.output
    for name in ("model.onnx", "model.pt", "plan.json", "candidates.jsonl", "report.json", "report.html"):
        assert (out / name).is_file(), name
    assert (out / "test_data_set_0" / "input_0.pb").is_file()
    assert (out / "test_data_set_0" / "output_0.pb").is_file()
    # nothing half-written left behind
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.tmp"))
    assert len([line for line in (out / "candidates.jsonl").read_text().splitlines() if line.strip()]) == 3


def test_report_numbers_match_the_artifacts(eagleeye_run: dict[str, Any]) -> None:
    import onnxruntime as ort

    from compressor.checkpoint import load_checkpoint
    from compressor.graph import count
    from compressor.plan import Plan

    out = eagleeye_run["out"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "passed" and rep["exit_code"] == 0
    o, c = rep["original"], rep["compressed"]
    # the reported compressed FLOPs are those of the saved model, about half of the original
    model, meta = load_checkpoint(out / "model.pt")
    cost = count(model, input_shape=(1, 3, 16, 16))
    assert c["macs"] == cost.macs and c["params"] == cost.params
    assert c["macs"] <= 0.5 * 1.01 * o["macs"]
    assert c["macs"] >= 0.4 * o["macs"]
    assert 0 <= c["top1"] <= 100 and abs(c["top1"] - c["top1_ort"]) <= 0.1
    for q in ("p50", "p90"):
        assert c["latency"][q] > 0 and o["latency"][q] > 0
    assert len(c["latency"]["samples"]) == c["latency"]["runs"]
    names = {b["name"]: b for b in rep["budgets"]}
    assert all(b["passed"] for b in rep["budgets"]) and len(names) == 3
    assert all(ch["passed"] is not False for ch in rep["checks"])
    assert [s["name"] for s in rep["stages"]] == [
        "load",
        "profile",
        "search",
        "slim",
        "finetune",
        "export",
        "validate",
        "quantize",
        "report",
    ]
    assert rep["versions"]["torch"] and rep["versions"]["onnxruntime"] and rep["versions"]["onnxsim"]
    assert rep["command"].startswith("compress run")
    assert rep["seeds"]["seed"] == 0
    plan = Plan.load(out / "plan.json")
    assert plan.method == "eagleeye"
    assert sum(r["after"] for r in rep["layers"]) < sum(r["before"] for r in rep["layers"])
    assert any(cand.get("chosen") for cand in rep["search"]["candidates"])
    # EagleEye's finalists: the best score, those within one standard error of it (at most 3 by
    # score) and the uniform plan (candidate 0), each fine-tuned briefly; the best is kept
    finals = rep["search"]["topk"]
    assert 2 <= len(finals) <= 4 and 0 in [t["id"] for t in finals]
    assert sum(t["chosen"] for t in rep["search"]["topk"]) == 1
    # the ONNX model runs on ONNX Runtime with the recorded input
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.zeros([d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape], np.float32)
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape[-1] == 10
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 4 and "pass" in html  # layers, candidates, top-k, latency


def test_rerun_resumes_from_finished_stages(eagleeye_run: dict[str, Any]) -> None:
    assert eagleeye_run["res"].exit_code == 0
    res = _invoke(*eagleeye_run["args"])
    assert res.exit_code == 0, res.output
    assert "resum" in res.output
    rep = json.loads((eagleeye_run["out"] / "report.json").read_text())
    status = {s["name"]: s["status"] for s in rep["stages"]}
    assert (
        status["profile"] == "resumed" and status["search"] == "resumed" and status["finetune"] == "resumed"
    )


def test_rerun_with_other_settings_is_refused(eagleeye_run: dict[str, Any]) -> None:
    args = list(eagleeye_run["args"])
    args[args.index("--epochs") + 1] = "2"
    res = _invoke(*args)
    assert res.exit_code == 2
    assert "--force" in res.output and "epochs" in res.output
    # --force discards the earlier artifacts and starts over with the new settings
    args[args.index("--epochs") + 1] = "0"
    res = _invoke(*args, "--force")
    assert res.exit_code == 0, res.output
    rep = json.loads((eagleeye_run["out"] / "report.json").read_text())
    assert rep["settings"]["epochs"] == 0
    assert {s["name"]: s["status"] for s in rep["stages"]}["search"] == "done"  # not resumed


def test_interrupted_search_resumes_from_candidates_jsonl(assets: dict[str, Path]) -> None:
    """A run stopped after the search scored its candidates (no plan.json yet) scores none again."""
    out = assets["root"] / "out_resume"
    args = [
        str(assets["ckpt"]),
        "--target",
        str(assets["target"]),
        "--candidates",
        "2",
        "--top-k",
        "1",
        "--epochs",
        "0",
        "--out",
        str(out),
    ]
    assert _invoke(*args).exit_code == 0
    lines = (out / "candidates.jsonl").read_text().splitlines()
    (out / "plan.json").unlink()  # as if interrupted between the search and writing the plan
    (out / "model.onnx").unlink()
    res = _invoke(*args)
    assert res.exit_code == 0, res.output
    assert "2 candidates already scored" in res.output
    assert (out / "candidates.jsonl").read_text().splitlines() == lines  # nothing scored twice
    assert (out / "plan.json").is_file() and (out / "model.onnx").is_file()


def test_out_that_is_a_file_exits_2(assets: dict[str, Path], tmp_path: Path) -> None:
    f = tmp_path / "not_a_dir"
    f.write_text("x")
    res = _invoke(str(assets["ckpt"]), "--target", str(assets["target"]), "--out", str(f))
    assert res.exit_code == 2 and "is a file" in res.output


def test_impossible_latency_budget_exits_3_with_a_report(assets: dict[str, Path]) -> None:
    out = assets["root"] / "out_lat"
    res = _invoke(
        str(assets["ckpt"]),
        "--target",
        str(assets["target"]),
        "--method",
        "l1-uniform",
        "--epochs",
        "0",
        "--latency-ms",
        "0.000001",
        "--out",
        str(out),
    )
    assert res.exit_code == 3, res.output
    assert "latency" in res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "budget_not_met" and rep["exit_code"] == 3
    checked = rep["search"]["latency_checked"]
    assert checked and not any(c["fits"] for c in checked)
    assert (out / "report.html").is_file() and not (out / "model.onnx").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--flops", "1.5"], "flops"),
        (["--method", "nope"], "unknown method"),
        (["--target", "no-such-target"], "unknown target"),
        (["--epochs", "-1"], "epochs"),
        (["--latency-ms", "-3"], "latency"),
        (["--max-acc-drop", "-1"], "max_acc_drop"),
        (["--device", "quantum"], "device"),
    ],
)
def test_bad_input_exits_2(assets: dict[str, Path], extra: list[str], needle: str) -> None:
    args = [
        str(assets["ckpt"]),
        "--target",
        str(assets["target"]),
        "--out",
        str(assets["root"] / "out_bad"),
        *extra,
    ]
    res = _invoke(*args)
    assert res.exit_code == 2, res.output
    assert needle in res.output.lower()
    assert not (assets["root"] / "out_bad" / "report.json").exists()


def test_cuda_without_cuda_exits_2(assets: dict[str, Path]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = assets["root"] / "out_cuda"
    res = _invoke(
        str(assets["ckpt"]), "--target", str(assets["target"]), "--device", "cuda", "--out", str(out)
    )
    assert res.exit_code == 2 and "CUDA is not available" in res.output
    assert not out.exists()


def test_missing_checkpoint_exits_2(tmp_path: Path) -> None:
    res = _invoke(str(tmp_path / "missing.pt"), "--target", "mobile", "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "does not exist" in res.output


def test_dry_run_writes_nothing(assets: dict[str, Path]) -> None:
    out = assets["root"] / "out_dry"
    res = _invoke(
        str(assets["ckpt"]), "--target", str(assets["target"]), "--out", str(out), "--dry-run", "--json"
    )
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout[res.stdout.index("{") :])
    assert rep["status"] == "dry_run" and rep["estimate_s"] > 0
    assert [p["name"] for p in rep["plan"]][:3] == ["profile", "search", "slim"]
    assert not out.exists()


def test_settings_precedence_target_config_flags(assets: dict[str, Path], tmp_path: Path) -> None:
    from compressor.pipeline import resolve_settings

    cfg = tmp_path / "run.toml"
    cfg.write_text('flops = 0.3\nepochs = 7\nmethod = "l1-uniform"\nlatency_ms = 50\n', encoding="utf-8")
    s, target = resolve_settings(assets["ckpt"], {"target": str(assets["target"]), "epochs": 2}, cfg)
    assert s.flops == 0.3 and target.budget.flops == 0.3  # config over target
    assert s.epochs == 2  # flag over config
    assert s.method == "l1-uniform" and s.latency_ms == 50.0
    assert s.max_acc_drop == 100.0  # from the target
    s2, _ = resolve_settings(assets["ckpt"], {"target": str(assets["target"])}, None)
    assert s2.flops == 0.5 and s2.method == "eagleeye" and s2.latency_ms == 1000.0


def test_config_unknown_key_is_an_error(tmp_path: Path) -> None:
    from compressor.pipeline import load_config

    cfg = tmp_path / "run.toml"
    cfg.write_text("flopz = 0.3\n", encoding="utf-8")
    with pytest.raises(UsageError, match="unknown key 'flopz'"):
        load_config(cfg)
    cfg.write_text('epochs = "three"\n', encoding="utf-8")
    with pytest.raises(UsageError, match="epochs"):
        load_config(cfg)


@pytest.mark.distributed
def test_torchrun_two_processes(assets: dict[str, Path]) -> None:
    """Under torchrun (gloo on CPU) the search is sharded, fine-tuning is DDP, rank 0 writes everything."""
    import os
    import subprocess
    import sys

    out = assets["root"] / "out_ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29517",
        "-m",
        "compressor.cli.main",
        "run",
        str(assets["ckpt"]),
        "--target",
        str(assets["target"]),
        "--candidates",
        "4",
        "--top-k",
        "1",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        cmd, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "passed"
    idx = [
        json.loads(line)["index"]
        for line in (out / "candidates.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert sorted(idx) == [0, 1, 2, 3]  # every candidate scored once, by one of the two ranks
    assert (out / "model.onnx").is_file() and (out / "model.pt").is_file()


def test_validation_failure_exits_4_after_writing_the_report(
    assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ONNX model that disagrees with PyTorch (simulated: a zero tolerance) is exit 4, report first."""
    import compressor.export as export

    real = export.validate

    def strict(*args: Any, **kwargs: Any) -> Any:
        return real(*args, **{**kwargs, "atol": -1.0, "rtol": 0.0})

    monkeypatch.setattr(export, "validate", strict)
    out = assets["root"] / "out_val"
    res = _invoke(
        str(assets["ckpt"]),
        "--target",
        str(assets["target"]),
        "--candidates",
        "2",
        "--top-k",
        "1",
        "--epochs",
        "0",
        "--out",
        str(out),
    )
    assert res.exit_code == 4, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "validation_failed" and rep["exit_code"] == 4
    failed = [c["name"] for c in rep["checks"] if c["passed"] is False]
    assert any("ONNX Runtime vs PyTorch" in n for n in failed)
    assert "FAIL" in (out / "report.html").read_text()
    assert not (out / "model.onnx").exists()  # a model.onnx in out/ is always a validated one
    assert (out / ".state" / "model.onnx").is_file()


@pytest.mark.slow  # ~20 s: a real subprocess; the in-process resume test above runs by default
def test_sigint_during_search_then_rerun_resumes(assets: dict[str, Path]) -> None:
    """Ctrl-C a real `compress run` while it scores candidates; the same command then finishes the job."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = assets["root"] / "out_sigint"
    args = [
        str(assets["ckpt"]),
        "--target",
        str(assets["target"]),
        "--candidates",
        "8",
        "--top-k",
        "1",
        "--epochs",
        "0",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "compressor.cli.main", "run", *args],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cands = out / "candidates.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if cands.is_file() and len(cands.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "rerun the same command to resume" in output
    assert not (out / "plan.json").exists() and not (out / "report.json").exists()
    done = {json.loads(line)["index"] for line in cands.read_text().splitlines() if line.strip()}
    assert 2 <= len(done) < 8
    res = _invoke(*args)
    assert res.exit_code == 0, res.output
    assert f"{len(done)} candidates already scored" in res.output
    idx = [json.loads(line)["index"] for line in cands.read_text().splitlines() if line.strip()]
    assert sorted(idx) == list(range(8))  # the earlier ones were not scored again


def test_python_api_matches_design(assets: dict[str, Path]) -> None:
    """The documented Python API: compressor.run(checkpoint=..., target=..., flops=..., out=...) returns the report."""
    import compressor

    out = assets["root"] / "out_api"
    rep = compressor.run(
        checkpoint=str(assets["ckpt"]),
        target=str(assets["target"]),
        flops=0.5,
        out=str(out),
        method="l1-uniform",
        epochs=0,
        progress=False,
    )
    assert rep["status"] == "passed" and rep["exit_code"] == 0
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["status"] == "passed" and on_disk["compressed"]["macs"] == rep["compressed"]["macs"]
    assert rep["command"].startswith("compressor.run(")
    assert (out / "model.onnx").is_file()
