"""benchmarks/results/*.json are exactly what the scripts write: every key comes from the script,
one code version per file (no spliced rows), no hand edits."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _script(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def _rows() -> dict:
    def tool(verified: bool, flops: float, cold: float, rt: bool | None = None) -> dict:
        r = {
            "verified": verified,
            "flops_ratio": flops,
            "cold_s": {"median": cold},
            "warm_s": {"median": cold / 2},
        }
        if rt is not None:
            r["roundtrip"] = {"ok": rt}
        return r

    return {
        "a": {
            "family": "resnet",
            "ours": tool(True, 0.50, 1.0, True),
            "torch_pruning": tool(True, 0.49, 2.0),
        },
        "b": {
            "family": "resnet",
            "ours": tool(True, 0.60, 3.0, False),
            "torch_pruning": tool(False, 0.5, 4.0),
        },
        "c": {"family": "vit", "ours": {"error": "x"}, "torch_pruning": tool(True, 0.51, 1.0)},
    }


def test_zoo_summary_is_computed_by_the_script() -> None:
    """The summary keys the README quotes come from the script's own summarize()."""
    tz = _script("timm_zoo")
    s = tz.summarize(_rows())
    assert s["models"] == 3 and s["families"] == 2
    assert s["ours_verified"] == 1  # b verified but did not round-trip
    assert s["torch_pruning_verified"] == 2 and s["ours_roundtrip_ok"] == 1
    assert s["ours_flops_within_0.02_of_target"] == 1
    assert s["median_cold_s"] == {"ours": 2.0, "torch_pruning": 2.0}
    assert s["models_timed_by_both"] == 2


def test_code_version_names_the_commit() -> None:
    mi = _script("machine_info")
    code = mi.code_version()
    assert set(code) == {"compressor", "git_commit", "git_dirty"}


@pytest.mark.parametrize("name", ["zoo_slim", "timm_zoo"])
def test_committed_zoo_json_is_exactly_what_the_script_writes(name: str) -> None:
    """A committed zoo result is complete, from one clean commit, and its summary recomputes."""
    tz = _script("timm_zoo")
    d = json.loads((BENCH / "results" / f"{name}.json").read_text())
    assert d["complete"] is True
    assert d["code"]["git_commit"] and not d["code"]["git_dirty"]  # one code version for every row
    assert d["summary"] == json.loads(json.dumps(tz.summarize(d["results"]), default=float))


def _sq_row(model: str, flops: float, method: str, mean_diff: float, sd: float, verdict: str) -> dict:
    vs = {
        "mean_diff": mean_diff,
        "sd_diff": sd,
        "verdict": verdict,
        "beats_by_more_than_spread": mean_diff > sd,
    }
    return {"model": model, "flops": flops, "method": method, "vs_baseline": vs}


def test_search_quality_goals_need_a_win_beyond_the_spread_and_no_significant_loss() -> None:
    goals = _script("search_quality_tables").goals
    ns = "no significant difference"
    win = [_sq_row("a.pt", 0.5, "eagleeye", 0.6, 0.4, ns), _sq_row("b.pt", 0.5, "eagleeye", -0.1, 0.2, ns)]
    assert "**met**" in goals(win)[2]
    loss = [win[0], _sq_row("b.pt", 0.5, "eagleeye", -0.3, 0.1, "significantly worse")]
    assert "**not met**" in goals(loss)[2] and "significantly below on b" in goals(loss)[2]
    noise = [_sq_row("a.pt", 0.5, "eagleeye", 0.3, 0.4, ns)]  # a gain inside the spread
    assert "**not met**" in goals(noise)[2]
    # the committed benchmark's summary goes through the same rule
    d = json.loads((BENCH / "results" / "search_quality.json").read_text())
    assert len(goals(d["summary"])) == 2 + len({r["flops"] for r in d["summary"]})


def test_timm_zoo_tables_goals_follow_the_rows() -> None:
    """The timm table script's goals: every family verified, more verified than Torch-Pruning,
    95% on target, median time no more than Torch-Pruning's."""
    tt = _script("timm_zoo_tables")
    tz = _script("timm_zoo")
    rows = _rows()
    d = {"results": rows, "summary": tz.summarize(rows)}
    g = tt.goals(d)
    assert "1 of 2 **not met** (not: vit)" in g[0]  # c (vit) has no model ours verified
    assert "ours verified 1 of 3, Torch-Pruning 2: **not met**" in g[1]
    assert "1 of 3 (33.3%, goal 95%) **not met**" in g[2]
    assert "**met**" in g[3]  # ours' median cold 2.0 s <= Torch-Pruning's 2.0 s
    good = {"a": {**rows["a"], "torch_pruning": {**rows["a"]["torch_pruning"], "verified": False}}}
    d = {"results": good, "summary": tz.summarize(good)}
    assert all("**met**" in line and "not met" not in line for line in tt.goals(d))
    table = tt.family_table(rows)
    assert table[2].startswith("| resnet | 2 | 1 | 1 | 1 |")
    assert [m.split(" | ")[0] for m in tt.misses(rows)[2:]] == ["| b", "| c"]
