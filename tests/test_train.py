"""Fine-tuning: learning, best-epoch checkpoint, resume, distillation, errors, CLI and DDP."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

import compressor.train as train_mod
from compressor.checkpoint import load_checkpoint, save_checkpoint
from compressor.data import DataBundle, make_loader
from compressor.errors import DataError, UsageError
from compressor.evaluate import accuracy
from compressor.models import build_model, canonical_arch
from compressor.train import distill_loss, finetune, lr_factor, state_path

ROOT = Path(__file__).resolve().parents[1]
KW = {"num_classes": 4, "in_channels": 1, "depth": 8, "width": 8}
META = {"arch": canonical_arch("resnet_cifar"), "arch_kwargs": KW}
FAST = {"lr": 0.05, "batch_size": 16, "progress": False, "device": "cpu"}


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet_cifar", **KW)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_learns_and_keeps_best_epoch(tiny_data: DataBundle, tmp_path: Path) -> None:
    out = tmp_path / "ft.pt"
    res = finetune(_model(), tiny_data, epochs=4, out=out, meta=META, **FAST)
    assert len(res.history) == 4 and res.resumed_from == 0
    assert res.best_acc >= 70.0  # chance is 25%
    assert res.best_acc == max(h["val_acc"] for h in res.history)
    assert res.history[res.best_epoch - 1]["val_acc"] == res.best_acc
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine to zero
    model, meta = load_checkpoint(out)
    assert meta["dataset"] == "synthetic" and meta["input_shape"] == [1, 16, 16] and meta["num_classes"] == 4
    assert meta["accuracy"]["val"] == res.best_acc and meta["finetune"]["best_epoch"] == res.best_epoch
    assert _same(model.state_dict(), res.model.state_dict())
    assert accuracy(model, make_loader(tiny_data.val, 64))["top1"] == pytest.approx(res.best_acc)
    assert accuracy(model, make_loader(tiny_data.test, 64))["top1"] == pytest.approx(res.test_acc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft.pt", "ft.pt.state"]


def test_seed_makes_runs_reproducible(tiny_data: DataBundle) -> None:
    a = finetune(_model(), tiny_data, epochs=2, seed=3, **FAST)
    b = finetune(_model(), tiny_data, epochs=2, seed=3, **FAST)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert _same(a.model.state_dict(), b.model.state_dict())


def test_interrupted_run_resumes_to_the_same_weights(
    tiny_data: DataBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = finetune(_model(), tiny_data, epochs=3, out=tmp_path / "ref.pt", meta=META, **FAST)

    calls = {"n": 0}
    real = train_mod.accuracy

    def crash_in_epoch_2(*args: Any, **kwargs: Any) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed after training epoch 2, before its evaluation
        return real(*args, **kwargs)

    out = tmp_path / "run.pt"
    monkeypatch.setattr(train_mod, "accuracy", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        finetune(_model(), tiny_data, epochs=3, out=out, meta=META, **FAST)
    monkeypatch.setattr(train_mod, "accuracy", real)
    assert not out.exists() and state_path(out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing half-written

    # the state is keyed on the input: another model (checkpoint) is refused, exit 2 unless forced
    with pytest.raises(UsageError, match="model_sha256 differs") as e:
        finetune(_model(seed=99), tiny_data, epochs=3, out=out, meta=META, **FAST)
    assert e.value.exit_code == 2 and "--force" in str(e.value)
    res = finetune(_model(), tiny_data, epochs=3, out=out, meta=META, **FAST)
    assert res.resumed_from == 1 and len(res.history) == 3
    assert [h["train_loss"] for h in res.history] == [h["train_loss"] for h in ref.history]
    assert _same(res.model.state_dict(), ref.model.state_dict())

    again = finetune(_model(), tiny_data, epochs=3, out=out, meta=META, **FAST)  # finished: no training
    assert again.resumed_from == 3 and _same(again.model.state_dict(), ref.model.state_dict())

    with pytest.raises(UsageError, match="lr=0.05 -> 0.1"):
        finetune(_model(), tiny_data, epochs=3, out=out, meta=META, **{**FAST, "lr": 0.1})


def test_resume_is_keyed_on_the_input_checkpoint_and_data(
    tiny_data: DataBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compress finetune A.pt -o ft.pt, interrupted, then B.pt -o ft.pt: refused (exit 2), not A resumed;
    --force starts B over."""
    from compressor.cli.main import app
    from typer.testing import CliRunner

    meta = {**META, "dataset": "mnist5k"}
    a = save_checkpoint(_model(0), tmp_path / "A.pt", meta=meta)
    b = save_checkpoint(_model(1), tmp_path / "B.pt", meta=meta)
    out = tmp_path / "ft.pt"
    import compressor.data as data_mod

    monkeypatch.setattr(data_mod, "load_data", lambda *a, **k: tiny_data)
    calls = {"n": 0}
    real = train_mod.accuracy

    def crash_in_epoch_2(*args: Any, **kwargs: Any) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "accuracy", crash_in_epoch_2)
    cli = CliRunner()
    args = ["--epochs", "2", "-o", str(out), "--batch-size", "16", "--device", "cpu", "--no-progress"]
    assert cli.invoke(app, ["finetune", str(a), *args]).exit_code == 130
    monkeypatch.setattr(train_mod, "accuracy", real)
    assert state_path(out).exists() and not out.exists()
    res = cli.invoke(app, ["finetune", str(b), *args])
    assert res.exit_code == 2 and "model_sha256 differs" in res.output and "--force" in res.output
    assert not out.exists()
    res = cli.invoke(app, ["finetune", str(b), *args, "--force", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["resumed_from_epoch"] == 0
    # other data (another image in the val split) is refused the same way
    other = finetune(_model(0), tiny_data, epochs=1, out=tmp_path / "c.pt", meta=META, **FAST)
    assert other.resumed_from == 0
    shifted = DataBundle(
        **{**tiny_data.__dict__, "val": torch.utils.data.Subset(tiny_data.val, range(1, len(tiny_data.val)))}
    )
    with pytest.raises(UsageError, match="data differs"):
        finetune(_model(0), shifted, epochs=1, out=tmp_path / "c.pt", meta=META, **FAST)


def test_distillation_and_label_smoothing(tiny_data: DataBundle) -> None:
    s = torch.randn(8, 4)
    assert float(distill_loss(s, s.clone(), 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(s, -s, 4.0)) > 0.0
    teacher = finetune(_model(), tiny_data, epochs=3, **FAST).model
    res = finetune(
        _model(seed=1), tiny_data, epochs=2, teacher=teacher, label_smoothing=0.1, kd_alpha=0.7, **FAST
    )
    assert all(math.isfinite(h["train_loss"]) for h in res.history)
    assert all(p.requires_grad for p in teacher.parameters())  # handed back unchanged


def test_schedule_warms_up_then_decays() -> None:
    f = [lr_factor(s, total_steps=10, warmup_steps=4) for s in range(10)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and all(a > b for a, b in zip(f[4:], f[5:], strict=False))
    assert lr_factor(10, total_steps=10, warmup_steps=0) == pytest.approx(0.0)


def test_errors_before_training(tiny_data: DataBundle, tmp_path: Path) -> None:
    wrong = build_model("resnet_cifar", num_classes=10, in_channels=1, depth=8, width=4)
    with pytest.raises(DataError, match="10 classes"):
        finetune(wrong, tiny_data, epochs=1, **FAST)
    rgb = build_model("resnet_cifar", num_classes=4, in_channels=3, depth=8, width=4)
    with pytest.raises(DataError, match=r"shape \[1, 16, 16\]"):
        finetune(rgb, tiny_data, epochs=1, **FAST)
    with pytest.raises(UsageError, match="arch"):
        finetune(_model(), tiny_data, epochs=1, out=tmp_path / "x.pt", **FAST)
    for bad in ({"lr": 0.0}, {"label_smoothing": 1.0}, {"warmup_epochs": 5}, {"batch_size": 0}):
        with pytest.raises(UsageError):
            finetune(_model(), tiny_data, epochs=1, **{**FAST, **bad})
    with pytest.raises(UsageError, match="lower the learning rate"):
        finetune(_model(), tiny_data, epochs=1, **{**FAST, "lr": 1e30})
    assert not list(tmp_path.iterdir())


def test_accuracy_topk() -> None:
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.arange(6, dtype=torch.float32).flip(0).expand(len(x), 6)  # ranks 0,1,2,...

    x = torch.zeros(6, 1)
    loader = [(x, torch.tensor([0, 1, 2, 3, 4, 5]))]
    acc = accuracy(Fixed(), loader, topk=(1, 3))
    assert acc == {
        "top1": pytest.approx(100 / 6),
        "top3": pytest.approx(50.0),
        "top5": pytest.approx(500 / 6),
    }


def test_cli_finetune(tmp_path: Path) -> None:
    import numpy as np
    from compressor.cli.main import app
    from typer.testing import CliRunner

    cifar = tmp_path / "cifar"  # a tiny fake CIFAR-10 in the python-pickle layout
    cifar.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(cifar / name, "wb") as f:
            pickle.dump(
                {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}, f
            )
    torch.manual_seed(0)
    kw = {"num_classes": 10, "in_channels": 3, "depth": 8, "width": 4}
    ck = save_checkpoint(build_model("resnet_cifar", **kw), tmp_path / "m.pt",
                         meta={"arch": "resnet_cifar", "arch_kwargs": kw, "dataset": f"cifar10:{cifar}",
                               "input_shape": [3, 16, 16], "num_classes": 10})  # fmt: skip
    out = tmp_path / "ft.pt"
    runner = CliRunner()
    r = runner.invoke(app, ["finetune", str(ck), "--epochs", "2", "-o", str(out), "--batch-size", "16",
                            "--device", "cpu", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["dataset"] == f"cifar10:{cifar}" and len(summary["history"]) == 2 and out.exists()
    _, meta = load_checkpoint(out)
    assert meta["accuracy"]["test"] == pytest.approx(summary["test_top1"])

    r = runner.invoke(
        app, ["finetune", str(ck), "--epochs", "1", "-o", str(out), "--data", "cifar10:/nonexistent"]
    )
    assert r.exit_code == 2 and "does not exist" in r.output
    bare = save_checkpoint(
        build_model("resnet_cifar", **kw), tmp_path / "b.pt", meta={"arch": "resnet_cifar", "arch_kwargs": kw}
    )
    r = runner.invoke(app, ["finetune", str(bare), "--epochs", "1", "-o", str(tmp_path / "o.pt")])
    assert r.exit_code == 2 and "--data" in r.output


DDP_WORKER = """
import json, os, sys, torch
torch.set_num_threads(1)
from compressor.data import synthetic
from compressor.models import build_model, canonical_arch
from compressor.train import finetune

kw = {"num_classes": 4, "in_channels": 1, "depth": 8, "width": 8}
torch.manual_seed(int(os.environ["RANK"]))  # different initial weights per rank: DDP must sync them
res = finetune(build_model("resnet_cifar", **kw), synthetic(), epochs=3, out=sys.argv[1], lr=0.05, batch_size=8,
               meta={"arch": canonical_arch("resnet_cifar"), "arch_kwargs": kw}, progress=False, device="cpu")
digest = float(sum(v.double().sum() for v in res.model.state_dict().values()))
with open(sys.argv[2] + "/rank" + os.environ["RANK"] + ".json", "w") as f:  # the test's own report, per rank
    json.dump({"rank": int(os.environ["RANK"]), "world": res.world_size, "best": res.best_acc,
               "epochs": [h["epoch"] for h in res.history], "digest": digest}, f)
"""


@pytest.mark.distributed
def test_ddp_two_processes_gloo(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(DDP_WORKER))
    outdir = tmp_path / "out"
    reports = tmp_path / "reports"
    reports.mkdir()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
         str(outdir / "ft.pt"), str(reports)],
        env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["epochs"] == [1, 2, 3] for r in results)
    assert results[0]["digest"] == pytest.approx(results[1]["digest"], rel=1e-9)  # replicas in sync
    assert results[0]["best"] == results[1]["best"] > 25.0  # trained beyond chance (4 classes)
    assert sorted(p.name for p in outdir.iterdir()) == ["ft.pt", "ft.pt.state"]  # exactly one checkpoint
    model, meta = load_checkpoint(outdir / "ft.pt")
    assert meta["finetune"]["world_size"] == 2 and meta["finetune"]["steps_per_epoch"] == 9  # 144 / (2 * 8)


@pytest.mark.gpu
def test_finetune_on_cuda_with_amp(tiny_data: DataBundle, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    teacher = _model(seed=1)
    res = finetune(_model(), tiny_data, epochs=4, out=tmp_path / "g.pt", meta=META, teacher=teacher,
                   **{**FAST, "device": "auto"})  # fmt: skip
    assert res.best_acc >= 50.0 and all(math.isfinite(h["train_loss"]) for h in res.history)
    assert next(res.model.parameters()).device.type == "cpu"
    assert next(teacher.parameters()).device.type == "cpu"  # handed back where it was
    assert load_checkpoint(tmp_path / "g.pt")[1]["finetune"]["distill"] is True
