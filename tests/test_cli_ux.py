"""The command line a practitioner expects (issue 16), each item through the real CLI: clean
--json on every exit code, one's own model in one command, class-count and normalisation checks,
one run per output folder, consistent options, conveniences, excluded layers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from compressor.cli.main import app
from typer.testing import CliRunner

runner = CliRunner()
COMPRESS = [sys.executable, "-m", "compressor.cli.main"]
REPO = Path(__file__).resolve().parents[1]

TARGET_TOML = """
description = "test target: generous budgets, 1 thread"
[budget]
flops = 0.5
latency_ms = 1000.0
max_acc_drop = 100.0
[runtime]
intra_op_threads = 1
[export]
channel_multiple = 1
"""

TINY = {"num_classes": 3, "in_channels": 3, "depth": 8, "width": 4}


def _image_folder(root: Path, size: int = 16, n_train: int = 10, n_val: int = 4) -> Path:
    """DIR/train/cK and DIR/val/cK with 3 classes of noisy solid colours."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]
    for split, n in (("train", n_train), ("val", n_val)):
        for c, col in enumerate(colours):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = np.asarray(col)[None, None, :] + rng.normal(0, 20, (size, size, 3))
                Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from compressor.checkpoint import save_checkpoint
    from compressor.models import build_model

    root = tmp_path_factory.mktemp("ux")
    imgs = _image_folder(root / "imgs")
    torch.manual_seed(0)
    model = build_model("resnet_cifar", **TINY).eval()
    meta = {
        "arch": "resnet_cifar",
        "arch_kwargs": TINY,
        "dataset": f"imagefolder:{imgs}",
        "input_shape": [3, 16, 16],
        "num_classes": 3,
    }
    ckpt = save_checkpoint(model, root / "tiny.pt", meta=meta)
    torch.save(model.state_dict(), root / "bare.pt")  # a state_dict: needs --arch and its arguments
    ten = build_model("resnet_cifar", **{**TINY, "num_classes": 10})
    torch.save(ten.state_dict(), root / "bare10.pt")  # a 10-class model for 3-class data
    target = root / "tiny_target.toml"
    target.write_text(TARGET_TOML, encoding="utf-8")
    return {"root": root, "imgs": imgs, "ckpt": Path(ckpt), "target": target}


def _json(res: Any) -> dict[str, Any]:
    """stdout must be exactly one JSON document."""
    return json.loads(res.stdout)


# ------------------------------------------------------------------- item 2 (+1, 3): a full run
@pytest.fixture(scope="module")
def own_model_run(assets: dict[str, Path]) -> dict[str, Any]:
    """A bare state_dict named with --arch and --arch-args, the input shape from the image folder,
    normalisation from the flags, --json."""
    out = assets["root"] / "out_own"
    args = [
        "run", str(assets["root"] / "bare.pt"), "--arch", "resnet_cifar",
        "--arch-args", "num_classes=3", "--arch-args", "depth=8", "--arch-args", "width=4",
        "--data", f"imagefolder:{assets['imgs']}", "--target", str(assets["target"]),
        "--method", "l1-uniform", "--epochs", "1", "--mean", "0,0,0", "--std", "1,1,1",
        "-o", str(out), "--json",
    ]  # fmt: skip
    res = runner.invoke(app, args)
    return {"args": args, "res": res, "out": out}


def test_run_json_report_and_arch_args_recorded(own_model_run: dict[str, Any]) -> None:
    from compressor.checkpoint import load_checkpoint

    res = own_model_run["res"]
    assert res.exit_code == 0, res.output
    rep = _json(res)
    assert rep["status"] == "passed" and rep["exit_code"] == 0
    assert "[1/9] load" in res.stderr and "[1/9]" not in res.stdout  # progress on stderr only
    model, meta = load_checkpoint(own_model_run["out"] / "model.pt")
    assert meta["arch_kwargs"] == {
        "num_classes": 3,
        "depth": 8,
        "width": 4,
    }  # recorded, so the output loads without --arch-args
    assert meta["input_shape"] == [3, 16, 16]  # taken from the image folder
    assert meta["mean"] == [0.0, 0.0, 0.0] and meta["std"] == [1.0, 1.0, 1.0]  # item 3: recorded
    assert "taken from the data" in res.stderr


def test_loud_warnings_for_small_splits(own_model_run: dict[str, Any]) -> None:
    err = own_model_run["res"].stderr
    assert "WARNING" in err and "the val split has only" in err and "too few" in err
    rep = _json(own_model_run["res"])
    assert any(n.startswith("WARNING: the val split") for n in rep["notes"])


def test_chance_level_original_is_warned(assets: dict[str, Path], tmp_path: Path) -> None:
    """A model whose weights make it predict one class (like a wrongly normalised one) is at chance."""
    import torch

    from compressor.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(assets["ckpt"])
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    ck = save_checkpoint(model, tmp_path / "const.pt", meta=meta)
    res = runner.invoke(
        app,
        ["run", str(ck), "--target", str(assets["target"]), "--method", "l1-uniform", "--epochs", "0",
         "-o", str(tmp_path / "out"), "--json"],
    )  # fmt: skip
    assert res.exit_code in (0, 3), res.output
    assert "chance level for 3 classes" in res.stderr
    assert any("chance level" in n for n in _json(res)["notes"])


# ------------------------------------------------------------------- item 1: --json everywhere
def test_every_command_prints_one_json_document(assets: dict[str, Path], tmp_path: Path) -> None:
    ck, arch = str(assets["ckpt"]), ["--arch", "resnet_cifar"]
    onnx = tmp_path / "m.onnx"
    commands = [
        ["targets", "--json"],
        ["profile", ck, *arch, "--json"],
        ["prune", ck, *arch, "--flops", "0.5", "-o", str(tmp_path / "slim.pt"), "--json"],
        ["search", ck, "--method", "l1-uniform", "--flops", "0.5", "-o", str(tmp_path / "p.json"), "--json"],
        ["export", ck, "--target", str(assets["target"]), "-o", str(onnx), "--json"],
        ["validate", str(onnx), "-r", ck, "--target", str(assets["target"]), "--no-latency", "--json"],
        ["finetune", ck, "--epochs", "1", "-o", str(tmp_path / "ft.pt"), "--json"],
        ["run", ck, "--target", str(assets["target"]), "--dry-run", "--json"],
    ]
    for args in commands:
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args, res.output)
        _json(res)  # raises on anything but one JSON document
    for args in commands[1:]:  # every command, failing on a missing input: an error object
        bad = [str(tmp_path / "missing.pt") if a == ck else a for a in args]
        if args[0] == "validate":
            bad[1] = str(tmp_path / "missing.onnx")
        res = runner.invoke(app, bad)
        assert res.exit_code == 2, (bad, res.output)
        d = _json(res)
        assert d["status"] == "error" and d["exit_code"] == 2 and d["message"], d


def test_json_usage_error_from_the_parser_is_json() -> None:
    res = subprocess.run(
        [*COMPRESS, "run", "x.pt", "--no-such-flag", "--json"], capture_output=True, text=True
    )
    assert res.returncode == 2
    d = json.loads(res.stdout)
    assert d["status"] == "error" and "--no-such-flag" in d["message"]


# ------------------------------------------------------------------- item 2: own model
def test_readme_own_model_example_verbatim_dry_run(tmp_path: Path) -> None:
    """The README's example, verbatim, on a ResNet-18 trained for 3 classes (a bare state_dict)
    and an image folder of 3 classes: no --arch-args, no --input-shape, no target [input]."""
    import torch
    import torchvision

    imgs = _image_folder(tmp_path / "my_images", size=32, n_train=4, n_val=2)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "my_resnet18.pt")
    cmd = "compress run my_resnet18.pt --arch torchvision.models:resnet18 --target server --data imagefolder:my_images"
    res = subprocess.run(
        [*COMPRESS, *cmd.split()[1:], "--dry-run", "--json"], cwd=tmp_path, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["original"]["input_shape"] == [3, 32, 32]
    assert d["checkpoint"] and imgs.is_dir()


@pytest.mark.slow
def test_readme_own_model_example_verbatim_full(tmp_path: Path) -> None:
    import torch
    import torchvision

    _image_folder(tmp_path / "my_images", size=32, n_train=4, n_val=2)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "my_resnet18.pt")
    cmd = "compress run my_resnet18.pt --arch torchvision.models:resnet18 --target server --data imagefolder:my_images"
    res = subprocess.run([*COMPRESS, *cmd.split()[1:]], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode in (0, 3), res.stderr  # 3: the tiny data may miss the accuracy budget
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["name"] for s in rep["stages"]][-1] == "report"


def test_arch_from_a_module_in_the_current_folder(tmp_path: Path) -> None:
    (tmp_path / "mynets.py").write_text(
        "from compressor.models.zoo import resnet_cifar\n\n"
        "def r8(num_classes=10):\n    return resnet_cifar(num_classes=num_classes, depth=8, width=4)\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    exe = Path(sys.executable).parent / "compress"  # the console script: its sys.path lacks the cwd
    cmd = [str(exe)] if exe.is_file() else COMPRESS
    res = subprocess.run(
        [*cmd, "profile", "--arch", "mynets:r8", "--input-shape", "3,16,16", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["prunable_groups"] > 0
    res = subprocess.run(
        [
            *cmd,
            "profile",
            "--arch",
            "mynets:r8",
            "--arch-args",
            "num_classes=7",
            "--input-shape",
            "3,16,16",
            "--json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert {g["name"]: g["size"] for g in json.loads(res.stdout)["groups"]}["fc"] == 7
    help_text = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).stdout
    assert "current folder" in help_text


# ------------------------------------------------------------------- item 4: class count
def test_class_count_mismatch_found_at_load_and_head_replaced(assets: dict[str, Path]) -> None:
    base = [
        "run", str(assets["root"] / "bare10.pt"), "--arch", "resnet_cifar", "--arch-args", "depth=8",
        "--arch-args", "width=4", "--data", f"imagefolder:{assets['imgs']}", "--target",
        str(assets["target"]), "--dry-run", "--json",
    ]  # fmt: skip
    res = runner.invoke(app, base)
    assert res.exit_code == 2
    msg = _json(res)["message"]
    assert "predicts 10 classes" in msg and "has 3" in msg and "--replace-head" in msg
    res = runner.invoke(app, [*base, "--replace-head"])
    assert res.exit_code == 0, res.output
    assert "--replace-head: fc now predicts 3 classes" in res.stderr


# ------------------------------------------------------------------- item 8: rerun, curve
def test_rerun_keeps_the_earlier_timings_and_reports_the_curve(own_model_run: dict[str, Any]) -> None:
    out = own_model_run["out"]
    first = json.loads((out / "report.json").read_text())
    assert [h["epoch"] for h in first["finetune"]["history"]] == [1]
    assert {"train_loss", "train_acc", "val_acc"} <= set(first["finetune"]["history"][0])
    assert "Fine-tuning" in (out / "report.html").read_text()
    res = runner.invoke(app, own_model_run["args"])
    assert res.exit_code == 0, res.output
    again = _json(res)
    was = {st["name"]: st for st in first["stages"]}
    resumed = [st for st in again["stages"] if st["status"] == "resumed"]
    assert {st["name"] for st in resumed} >= {"profile", "finetune"}
    for st in resumed:
        assert st["seconds"] == was[st["name"]]["seconds"] > 0  # the earlier run's time, not 0.0
        assert "resume_seconds" in st
    assert again["finetune"]["history"] == first["finetune"]["history"]
    assert res.stderr.count("fine-tuned model.pt from the earlier run") == 1  # announced once


# ------------------------------------------------------------------- item 7: progress
def test_progress_piped_is_one_unwrapped_line_per_event(assets: dict[str, Path], tmp_path: Path) -> None:
    res = subprocess.run(
        [*COMPRESS, "run", str(assets["ckpt"]), "-t", str(assets["target"]), "--candidates", "4",
         "--top-k", "2", "--epochs", "2", "-o", str(tmp_path / "out"), "--json"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    json.loads(res.stdout)
    lines = res.stderr.splitlines()
    assert sum(line.startswith("epoch 1/2") for line in lines) == 1  # once, not a line and a bar
    assert sum(line.startswith("epoch 2/2") for line in lines) == 1
    load = [line for line in lines if "load done" in line]
    assert len(load) == 1 and "channel groups" in load[0] and len(load[0]) > 80  # not hard-wrapped
    finals = [line for line in lines if "finalist fine-tune" in line]
    # at most 2 by score plus the uniform plan; each finalist's fine-tune shows progress
    assert 2 <= len(finals) <= 3 and "left" in finals[0] and f"{len(finals)}/{len(finals)}" in finals[-1]


# ------------------------------------------------------------------- item 5: lock
def test_second_run_into_the_same_folder_exits_2(own_model_run: dict[str, Any]) -> None:
    from compressor.pipeline.lock import out_lock

    with out_lock(own_model_run["out"]):  # another run holds the folder
        res = runner.invoke(app, own_model_run["args"])
    assert res.exit_code == 2
    assert "another run" in _json(res)["message"]


# ------------------------------------------------------------------- item 6: conventions
def test_one_convention_for_options(assets: dict[str, Path], tmp_path: Path) -> None:
    for cmd in ("run", "search", "prune", "profile", "export", "validate", "finetune", "targets"):
        text = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200"}).stdout
        assert "<bool>" not in text, cmd
        if cmd in ("run", "search", "prune", "finetune"):
            assert "--quiet" in text and "-q" in text, cmd
        if cmd in ("run", "search", "prune", "export", "validate", "finetune"):
            assert "--output" in text and "-o" in text, cmd
    # search takes run's defaults: 20 candidates scored
    plan = tmp_path / "plan.json"
    res = runner.invoke(
        app,
        [
            "search",
            str(assets["ckpt"]),
            "--method",
            "eagleeye",
            "--flops",
            "0.5",
            "-o",
            str(plan),
            "-q",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(plan.with_suffix(".candidates.jsonl").read_text().splitlines()) == 20
    # --config in the target files' layout
    cfg = tmp_path / "run.toml"
    cfg.write_text("method = 'l1-uniform'\n[budget]\nflops = 0.3\n[input]\nshape = [3, 24, 24]\n")
    res = runner.invoke(
        app,
        [
            "run",
            str(assets["ckpt"]),
            "-t",
            str(assets["target"]),
            "--config",
            str(cfg),
            "--dry-run",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    d = _json(res)
    assert d["settings"]["flops"] == 0.3 and d["original"]["input_shape"] == [3, 24, 24]
    cfg.write_text("[runtime]\nintra_op_threads = 2\n")
    res = runner.invoke(app, ["run", str(assets["ckpt"]), "--config", str(cfg), "--dry-run", "--json"])
    assert res.exit_code == 2 and "target file" in _json(res)["message"]


# ------------------------------------------------------------------- item 9: conveniences
def test_conveniences(assets: dict[str, Path]) -> None:
    from compressor import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.stdout
    res = runner.invoke(app, [])
    assert res.exit_code == 0 and "Usage" in res.stdout
    res = runner.invoke(app, ["-h"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--install-completion" in res.stdout
    panel = res.stdout.split("Commands")[1]
    commands = [line.split()[1] for line in panel.splitlines() if line.startswith("│ ") and line[2] != " "]
    assert commands and commands[0] == "run", commands
    res = runner.invoke(app, ["run", str(assets["ckpt"]), "-t", "mobil", "--dry-run"])
    assert res.exit_code == 2 and "did you mean 'mobile'" in res.stderr
    res = runner.invoke(app, ["run", str(assets["ckpt"]), "-t", "mobile", "-m", "eagleye", "--dry-run"])
    assert res.exit_code == 2 and "did you mean 'eagleeye'" in res.stderr
    res = runner.invoke(app, ["targets"], env={"COLUMNS": "80"})
    assert res.exit_code == 0 and "server" in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 80
    # the shipped example config is valid and commented
    example = REPO / "examples" / "run.toml"
    assert example.read_text().count("#") > 20
    res = runner.invoke(
        app,
        [
            "run",
            str(assets["ckpt"]),
            "--config",
            str(example),
            "-t",
            str(assets["target"]),
            "--dry-run",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------- item 10: exclude
def test_exclude_freezes_matching_groups(assets: dict[str, Path]) -> None:
    base = ["run", str(assets["ckpt"]), "-t", str(assets["target"]), "--dry-run", "--json"]
    full = _json(runner.invoke(app, base))["groups"]["prunable"]
    res = runner.invoke(app, [*base, "--exclude", "layer3.*", "--exclude", "conv1"])
    assert res.exit_code == 0, res.output
    assert _json(res)["groups"]["prunable"] == full - 3  # depth 8: layer3's 2 groups, conv1's 1
    res = runner.invoke(app, [*base, "--exclude", "nosuchlayer*"])
    assert res.exit_code == 2 and "matches no channel group" in _json(res)["message"]


def test_profile_compare_shows_channels_before_and_after(assets: dict[str, Path], tmp_path: Path) -> None:
    slim = tmp_path / "slim.pt"
    res = runner.invoke(app, ["prune", str(assets["ckpt"]), "--flops", "0.5", "-o", str(slim), "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["profile", str(slim), "--compare", str(assets["ckpt"]), "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["group"]: r for r in _json(res)["compare"]["groups"]}
    assert rows["conv1"]["before"] == 4 and rows["fc"]["after"] == rows["fc"]["before"] == 3
    assert any(r["after"] < r["before"] for r in rows.values() if not r["frozen"])
    res = runner.invoke(app, ["profile", str(slim), "--compare", str(assets["ckpt"])], env={"COLUMNS": "120"})
    assert res.exit_code == 0 and "before" in res.stdout and "layer3.0.conv1" in res.stdout


# ------------------------------------------------------------------- item 11: threads
def test_thread_count_measured_per_stage_unless_fixed(assets: dict[str, Path], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    base = [
        *COMPRESS,
        "run",
        str(assets["ckpt"]),
        "-t",
        str(assets["target"]),
        "-m",
        "l1-uniform",
        "--epochs",
        "1",
    ]
    res = subprocess.run(
        [*base, "-o", str(tmp_path / "a"), "--json"], capture_output=True, text=True, env=env
    )
    assert res.returncode == 0, res.stderr
    threads = json.loads(res.stdout)["threads"]
    for stage in ("search", "finetune"):
        rec = threads[stage]
        assert rec["how"] == "measured" and "1" in rec["steps_per_s"]
        rates = rec["steps_per_s"]
        assert rec["chosen"] == int(max(rates, key=lambda n: rates[n]))
    assert "CPU thread(s)" in res.stderr
    res = subprocess.run(
        [*base, "--threads", "1", "-o", str(tmp_path / "b"), "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["threads"]["finetune"] == {"chosen": 1, "how": "--threads"}
