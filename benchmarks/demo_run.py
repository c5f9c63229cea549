"""The README's demo, timed: ``compress run examples/resnet_mnist.pt --target mobile --flops 0.5``.

For each method (eagleeye, epruner, l1-uniform) at the same FLOPs target, runs the real command
in a fresh process (imports included, as a user sees it) into a temporary folder and records:
wall time in total and per stage, accuracy before/after (PyTorch and ONNX Runtime, test split),
FLOPs, params, latency p50/p90 (ONNX Runtime, the target's settings), budgets and the exit code.

    python benchmarks/demo_run.py [--methods eagleeye,l1-uniform] [--threads 1,2] [--seeds 0,1]

Every method runs once per thread count and seed; the summary gives median/min/max over them
(one run is one draw of the machine's noise and the seed: quote the spread).

Writes benchmarks/results/demo_run.json. Goals: each run < 5 minutes on 2 CPU cores; accuracy
drop <= 1 point at 50% FLOPs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine_info import code_version, machine_info

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "examples" / "resnet_mnist.pt"
RESULTS = ROOT / "benchmarks" / "results" / "demo_run.json"


def machine(threads: int) -> dict[str, Any]:
    return machine_info(
        "2-core machine, possibly shared with other runs at the same time: timings are noisy upper bounds",
        torch_threads=threads,
    )


def run_one(method: str, out: Path, threads: int, seed: int, extra: list[str]) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "compressor.cli.main",
        "run",
        str(CHECKPOINT),
        "--target",
        "mobile",
        "--flops",
        "0.5",
        "--method",
        method,
        "--seed",
        str(seed),
        "--threads",
        str(threads),
        "--out",
        str(out),
        "--json",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rec: dict[str, Any] = {
        "method": method,
        "threads": threads,
        "seed": seed,
        "command": "compress " + " ".join(cmd[3:]),
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
    }
    rp = out / "report.json"
    if not rp.is_file():
        rec["error"] = proc.stderr[-2000:]
        return rec
    rep = json.loads(rp.read_text())
    o, c = rep.get("original") or {}, rep.get("compressed") or {}
    rec["stages_s"] = {s["name"]: s["seconds"] for s in rep.get("stages") or []}
    rec["original"] = {k: o.get(k) for k in ("macs", "params", "top1", "top1_ort")}
    rec["compressed"] = {k: c.get(k) for k in ("macs", "params", "top1", "top1_ort", "top1_after_slim")}
    for side, d in (("original", o), ("compressed", c)):
        lat = d.get("latency") or {}
        rec[side]["latency_ms"] = {k: lat.get(k) for k in ("p50", "p90", "mean", "std", "runs")}
    if o.get("macs") and c.get("macs"):
        rec["flops_ratio"] = round(c["macs"] / o["macs"], 4)
        rec["params_ratio"] = round(c["params"] / o["params"], 4)
    if o.get("top1_ort") is not None and c.get("top1_ort") is not None:
        rec["acc_drop_points"] = round(o["top1_ort"] - c["top1_ort"], 2)
    lo, lc = (o.get("latency") or {}).get("p50"), (c.get("latency") or {}).get("p50")
    if lo and lc:
        rec["latency_ratio_p50"] = round(lc / lo, 3)
    rec["budgets"] = [
        {k: b.get(k) for k in ("name", "limit", "value", "passed")} for b in rep.get("budgets") or []
    ]
    rec["status"] = rep.get("status")
    q = rep.get("quantize") or {}
    rec["precision_shipped"] = q.get("shipped") or q.get("precision") or "fp32"
    rec["settings"] = {
        k: (rep.get("settings") or {}).get(k) for k in ("epochs", "candidates", "calib_batches", "top_k")
    }
    return rec


def _spread(xs: list[float]) -> dict[str, float] | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "n": len(xs)}


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method, over thread counts and seeds: top-1 after (ONNX Runtime), accuracy drop, FLOPs
    and p50 latency ratios and wall time as median/min/max, and how many runs passed."""
    out: dict[str, Any] = {}
    for m in dict.fromkeys(r["method"] for r in results):
        rs = [r for r in results if r["method"] == m]
        out[m] = {
            "runs": len(rs),
            "passed": sum(r.get("status") == "passed" for r in rs),
            "top1_ort_before": _spread([(r.get("original") or {}).get("top1_ort") for r in rs]),
            "top1_ort_after": _spread([(r.get("compressed") or {}).get("top1_ort") for r in rs]),
            "acc_drop_points": _spread([r.get("acc_drop_points") for r in rs]),
            "flops_ratio": _spread([r.get("flops_ratio") for r in rs]),
            "params_ratio": _spread([r.get("params_ratio") for r in rs]),
            "latency_ratio_p50": _spread([r.get("latency_ratio_p50") for r in rs]),
            "wall_s": _spread([r.get("wall_s") for r in rs]),
            "precision_shipped": sorted({str(r.get("precision_shipped")) for r in rs}),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="eagleeye,l1-uniform")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts, each run")
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds, each run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("extra", nargs="*", help="extra flags passed to compress run (after --)")
    args = ap.parse_args()
    if not CHECKPOINT.is_file():
        sys.exit(f"{CHECKPOINT} is missing: train it with examples/train_baseline.py")
    threads = [int(t) for t in args.threads.split(",")]
    seeds = [int(t) for t in args.seeds.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="demo_run_") as tmp:
        for m in args.methods.split(","):
            for t in threads:
                for seed in seeds:
                    print(f"== compress run ... --method {m} --seed {seed} --threads {t}", flush=True)
                    rec = run_one(m, Path(tmp) / f"{m}-{t}-{seed}", t, seed, args.extra)
                    results.append(rec)
                    keys = ("method", "threads", "seed", "exit_code", "wall_s", "stages_s", "flops_ratio")
                    keys += ("acc_drop_points", "latency_ratio_p50", "precision_shipped")
                    print(json.dumps({k: rec.get(k) for k in keys}, indent=1), flush=True)
    payload = {
        "benchmark": "demo_run",
        "checkpoint": str(CHECKPOINT.relative_to(ROOT)),
        "target": "mobile",
        "flops": 0.5,
        "machine": machine(max(threads)),
        "code": code_version(),
        "threads": threads,
        "seeds": seeds,
        "summary": summarize(results),
        "results": results,
        "goals": {"wall_s_max": 300, "acc_drop_points_max": 1.0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
