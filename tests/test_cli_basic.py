"""compress profile / prune through the CLI: outputs, exit codes, and a lazy --help."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from compressor.cli.main import app
from typer.testing import CliRunner

from compressor.checkpoint import load_checkpoint, save_checkpoint
from tests.nets import Residual

runner = CliRunner()


def test_help_imports_no_torch() -> None:
    code = "import sys, compressor.cli.main; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_help_lists_commands() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "profile" in res.output and "prune" in res.output


def _ckpt(tmp_path):
    model = Residual().eval()
    path = tmp_path / "m.pt"
    save_checkpoint(
        model, path, meta={"arch": "tests.nets:Residual", "input_shape": [3, 16, 16], "num_classes": 5}
    )
    return model, path


def test_profile_json(tmp_path) -> None:
    _, path = _ckpt(tmp_path)
    res = runner.invoke(app, ["profile", str(path), "--json"])
    assert res.exit_code == 2  # the checkpoint names an untrusted architecture
    assert "--arch tests.nets:Residual" in res.output
    res = runner.invoke(app, ["profile", str(path), "--arch", "tests.nets:Residual", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["input_shape"] == [1, 3, 16, 16]
    assert d["macs"] == sum(r["macs"] for r in d["layers"]) > 0
    assert d["prunable_groups"] >= 3


def test_prune_roundtrip(tmp_path) -> None:
    model, path = _ckpt(tmp_path)
    out = tmp_path / "slim.pt"
    res = runner.invoke(
        app, ["prune", str(path), "--arch", "tests.nets:Residual", "--flops", "0.5", "-o", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert abs(d["flops_ratio"] - 0.5) < 0.05
    assert d["equivalence_rel_err"] < 1e-5
    slim, meta = load_checkpoint(out, arch="tests.nets:Residual")
    assert sum(p.numel() for p in slim.parameters()) == d["after"]["params"]
    assert slim(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    assert meta["pruned"]["method"] == "l1-uniform"


def test_exit_codes(tmp_path) -> None:
    res = runner.invoke(app, ["prune", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "does not exist" in res.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    res = runner.invoke(app, ["profile", str(bad)])
    assert res.exit_code == 2 and "not a readable PyTorch checkpoint" in res.output
    res = runner.invoke(app, ["profile", "--arch", "no_such_net"])
    assert res.exit_code == 2 and "unknown architecture" in res.output
    _, path = _ckpt(tmp_path)
    res = runner.invoke(
        app,
        ["prune", str(path), "--arch", "tests.nets:Residual", "--flops", "1.5", "-o", str(tmp_path / "y.pt")],
    )
    assert res.exit_code == 2 and "outside (0, 1]" in res.output
    assert not (tmp_path / "y.pt").exists()
