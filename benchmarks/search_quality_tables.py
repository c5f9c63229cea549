"""The markdown tables and the issue's verdict from ``results/search_quality.json`` (read only).

Per model: test top-1 mean ± sd over seeds per budget and method, the paired difference to
l1-uniform (mean ± sd, paired t-test, sign test), and for EagleEye how often its finalists' fine-tune
chose the uniform plan. Then the goals: at every budget, EagleEye's mean above l1-uniform's by more
than the sd of the paired differences on at least one model, and never significantly below on
either; EPruner never significantly below l1-uniform.

    python benchmarks/search_quality_tables.py [results/search_quality.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def fmt(x: float | None, spec: str = ".2f", sign: bool = False) -> str:
    if x is None:
        return "-"
    return format(x, ("+" if sign else "") + spec)


def tables(d: dict[str, Any]) -> str:
    rows, runs = d["summary"], d["runs"]
    out: list[str] = []
    for model in sorted({r["model"] for r in rows}):
        n = max(len(r["seeds"]) for r in rows if r["model"] == model)
        out += [
            f"**{Path(model).stem}** ({n} seeds, {d['config']['finetune_epochs']} fine-tuning epoch, "
            f"test top-1 on {runs[0]['test_images']} held-out images)",
            "",
            "| FLOPs | method | test top-1 mean ± sd | paired diff vs l1-uniform (mean ± sd) | t-test p "
            "| sign test (W/L/T, p) | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r["model"] == model):
            v = r.get("vs_baseline")
            extra = ""
            if r["method"] == "eagleeye":
                mine = [
                    x
                    for x in runs
                    if (x["model"], x["flops"], x["method"]) == (model, r["flops"], "eagleeye")
                ]
                info = [x.get("info") or {} for x in mine]
                if all(i.get("sampling") == "guided" for i in info):  # candidate 0 is the uniform plan
                    uni = sum(int(i.get("candidate", -1)) == 0 for i in info)
                    extra = f" (chose the uniform plan in {uni}/{len(mine)})"
                else:
                    extra = f" ({info[0].get('sampling', '?')} sampling)"
            out.append(
                f"| {r['flops']:g} | {r['method']}{extra} | {fmt(r['mean'])} ± {fmt(r['sd'])} | "
                + (
                    f"{fmt(v['mean_diff'], sign=True)} ± {fmt(v['sd_diff'])} | {fmt(v['t_p'], '.3f')} | "
                    f"{v['wins']}/{v['losses']}/{v['ties']}, {v['sign_p']:.3f} | {v['verdict']}"
                    + (", **mean gain > sd**" if v["beats_by_more_than_spread"] else "")
                    + " |"
                    if v
                    else "- | - | - | baseline |"
                )
            )
        out.append("")
    out += goals(rows)
    return "\n".join(out)


def goals(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's goals, budget by budget."""
    out = ["Goals:", ""]
    for flops in sorted({r["flops"] for r in rows}, reverse=True):
        ee = [r for r in rows if r["flops"] == flops and r["method"] == "eagleeye" and r.get("vs_baseline")]
        ep = [r for r in rows if r["flops"] == flops and r["method"] == "epruner" and r.get("vs_baseline")]
        wins = [Path(r["model"]).stem for r in ee if r["vs_baseline"]["beats_by_more_than_spread"]]
        worse = [Path(r["model"]).stem for r in ee if r["vs_baseline"]["verdict"] == "significantly worse"]
        ep_worse = [Path(r["model"]).stem for r in ep if r["vs_baseline"]["verdict"] == "significantly worse"]
        ok = bool(wins) and not worse
        line = (
            f"- {flops:g} of the FLOPs: EagleEye above l1-uniform by more than the spread on "
            f"{', '.join(wins) or 'no model'}; significantly below on {', '.join(worse) or 'none'} -> "
            f"**{'met' if ok else 'not met'}**."
        )
        if ep:
            line += (
                f" EPruner significantly below l1-uniform on {', '.join(ep_worse) or 'none'} -> "
                f"**{'met' if not ep_worse else 'not met'}**."
            )
        out.append(line)
    return out


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "search_quality.json"
    print(tables(json.loads(path.read_text())))
