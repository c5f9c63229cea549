"""report.json / report.html / terminal table from a hand-made report dict."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from compressor import report as rep


def sample_report() -> dict[str, Any]:
    rng = random.Random(0)
    cands = [
        {"id": i, "flops": 0.5 + rng.uniform(-0.004, 0.004), "score": 60 + 35 * rng.random()}
        for i in range(30)
    ]
    best = max(cands, key=lambda c: c["score"])
    best["chosen"] = True
    return {
        "status": "passed",
        "exit_code": 0,
        "message": "all budgets and checks passed",
        "command": "compress run examples/resnet_mnist.pt --target mobile --flops 0.5 <b>",
        "created": "2026-11-21T17:00:00Z",
        "checkpoint": {
            "path": "examples/resnet_mnist.pt",
            "sha256": "ab" * 32,
            "arch": "compressor.models.zoo:resnet_cifar",
        },
        "settings": {
            "target": "mobile",
            "method": "eagleeye",
            "flops": 0.5,
            "latency_ms": 2.0,
            "percentile": 90,
            "max_acc_drop": 1.0,
            "epochs": 3,
            "data": "mnist5k",
            "seed": 0,
            "batch": 1,
        },
        "target": {"runtime": {"provider": "CPUExecutionProvider", "intra_op_threads": 1}},
        "original": {
            "macs": 40_000_000,
            "params": 270_000,
            "top1": 98.4,
            "top1_ort": 98.4,
            "latency": {
                "p50": 1.2,
                "p90": 1.4,
                "mean": 1.25,
                "std": 0.1,
                "runs": 200,
                "samples": [1.2 + rng.gauss(0, 0.1) for _ in range(200)],
            },
        },
        "compressed": {
            "macs": 20_100_000,
            "params": 140_000,
            "top1": 98.0,
            "top1_ort": 98.0,
            "latency": {
                "p50": 0.7,
                "p90": 0.8,
                "mean": 0.72,
                "std": 0.05,
                "runs": 200,
                "samples": [0.7 + rng.gauss(0, 0.05) for _ in range(200)],
            },
        },
        "budgets": [
            {
                "name": "FLOPs kept",
                "limit": 0.5,
                "value": 0.5025,
                "passed": True,
                "detail": "within 1% tolerance",
            },
            {"name": "latency p90 (ms)", "limit": 2.0, "value": 0.8, "passed": True},
            {"name": "accuracy drop (pt)", "limit": 1.0, "value": 0.4, "passed": True},
        ],
        "checks": [{"name": "ONNX vs PyTorch max abs diff", "limit": 1e-4, "value": 3e-6, "passed": True}],
        "layers": [
            {"name": f"layer{i}.conv1", "before": 16 * (1 + i // 3), "after": 8 * (1 + i // 3)}
            for i in range(9)
        ]
        + [{"name": "fc_in", "before": 64, "after": 64, "frozen": True}],
        "search": {
            "method": "eagleeye",
            "candidates": cands,
            "chosen": best["id"],
            "topk": [
                {"id": c["id"], "score": c["score"], "finetuned": 90 + c["score"] / 20} for c in cands[:3]
            ],
            "latency_checked": [
                {
                    "id": best["id"],
                    "flops": best["flops"],
                    "score": best["score"],
                    "latency_ms": 0.8,
                    "fits": True,
                }
            ],
        },
        "stages": [
            {"name": "load", "seconds": 0.2, "status": "done"},
            {"name": "search", "seconds": 40.0, "status": "resumed", "note": "12 candidates reused"},
        ],
        "versions": rep.collect_versions(),
        "artifacts": {"model.onnx": "out/model.onnx"},
        "notes": ["resumed: plan.json found, search skipped"],
        "nan_value": float("nan"),
    }


def test_write_report_json_and_html(tmp_path: Path) -> None:
    r = sample_report()
    j, h = rep.write_report(r, tmp_path / "out")
    assert j.name == "report.json" and h.name == "report.html"
    data = json.loads(j.read_text())
    assert data["format"] == rep.REPORT_FORMAT
    assert data["compressed"]["macs"] == 20_100_000
    assert data["nan_value"] is None  # NaN is not valid JSON
    assert data["versions"]["torch"]
    # no temp files left behind
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json"]


def test_html_is_self_contained_and_escaped() -> None:
    page = rep.render_html(sample_report())
    assert page.startswith("<!DOCTYPE html>")
    # no external resources, no scripts
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", page)
    assert "<script" not in page
    # user-provided text is escaped
    assert "--flops 0.5 &lt;b&gt;" in page
    # four plots: layers, candidates, top-k, latency
    assert page.count("<svg") == 4
    assert "pass" in page and "FAIL" not in page


def test_svgs_are_well_formed_xml() -> None:
    page = rep.render_html(sample_report())
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert svgs
    for s in svgs:
        ElementTree.fromstring(s)  # raises on malformed markup


def test_chosen_candidate_is_marked() -> None:
    r = sample_report()
    page = rep.render_html(r)
    assert f'stroke="{rep.C_CHOSEN}"' in page
    r["search"]["candidates"] = [dict(c, chosen=False) for c in r["search"]["candidates"]]
    r["search"]["chosen"] = None
    r["search"]["topk"] = []
    page2 = rep.render_html(r)
    cand_svg = re.findall(r"<svg.*?</svg>", page2, flags=re.S)[1]
    assert 'r="8"' not in cand_svg


def test_failed_budget_shows_fail() -> None:
    r = sample_report()
    r["status"], r["exit_code"] = "budget_not_met", 3
    r["budgets"][1].update(passed=False, value=9.0)
    page = rep.render_html(r)
    assert "FAIL" in page and "exit code 3" in page


def test_minimal_report_renders() -> None:
    page = rep.render_html({"status": "dry_run"})
    assert "dry run" in page and "<svg" not in page


def test_summary_rows_and_table() -> None:
    rows = rep.summary_rows(sample_report())
    flops = rows[0]
    assert flops[1] == "40M" and flops[2] == "20.1M" and flops[3] == "×0.502"
    acc = rows[2]
    assert acc[3] == "-0.40 pt"
    from rich.console import Console

    con = Console(width=140, record=True)
    con.print(rep.render_table(sample_report()))
    text = con.export_text()
    assert "FLOPs" in text and "pass" in text


@pytest.mark.parametrize(("lo", "hi"), [(0, 1), (0.49, 0.51), (3, 3), (-5, 200), (1e-6, 3e-6)])
def test_nice_ticks_cover_range(lo: float, hi: float) -> None:
    t = rep.nice_ticks(lo, hi)
    assert t[0] <= lo + 1e-12 and t[-1] >= hi - 1e-12
    assert 2 <= len(t) <= 12
    assert all(b > a for a, b in zip(t, t[1:], strict=False))
    assert all(math.isfinite(v) for v in t)
