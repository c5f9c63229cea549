"""Every registered method runs end to end through ``compress run`` on the embedded demo.

Parametrised over :func:`compressor.methods.list_methods`, so a newly registered method is run
here without editing this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compressor.cli.main import app
from typer.testing import CliRunner

from compressor.methods import get_method, list_methods

DEMO = Path(__file__).resolve().parents[1] / "examples" / "resnet_mnist.pt"


@pytest.mark.parametrize("method", list_methods())
def test_every_method_runs_compress_run_on_the_demo(method: str, tmp_path: Path) -> None:
    """The run passes, ships an ONNX model and reports the method and the FLOPs it reached.

    No fine-tuning (`--epochs 0`), so the accuracy budget is lifted: this checks the plumbing.
    """
    out = tmp_path / "out"
    args = [
        "run",
        str(DEMO),
        "--target",
        "mobile",
        "--flops",
        "0.5",
        "--method",
        method,
        "--epochs",
        "0",
        "--max-acc-drop",
        "100",
    ]
    args += ["--candidates", "2", "--top-k", "1", "--out", str(out), "--json"]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed"
    assert method in json.dumps(report.get("search", report))
    ratio = report["compressed"]["macs"] / report["original"]["macs"]
    assert 0.45 <= ratio <= 0.55, ratio
    assert (out / "model.onnx").is_file()


def test_every_method_declares_what_it_needs() -> None:
    """Each spec says whether it needs data and scores candidates, and has an options type."""
    for name in list_methods():
        spec = get_method(name)
        assert isinstance(spec.needs_data, bool) and isinstance(spec.scores_candidates, bool)
        import dataclasses

        assert dataclasses.is_dataclass(spec.options)
