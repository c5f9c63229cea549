"""Fuzz the channel graph: random small CNNs, slimmed at random plans, each checked against the masked original.

    OMP_NUM_THREADS=1 python benchmarks/fuzz_graph.py            # 1,000 networks (seeds 0..999)
    OMP_NUM_THREADS=1 python benchmarks/fuzz_graph.py --n 50     # a quick look

Writes benchmarks/results/fuzz_graph.json: networks generated / traced / slimmed / verified, frozen
groups (by reason), failures by kind with the seeds that reproduce each
(``python -c "from compressor.testing.fuzz import reproduce; print(reproduce(SEED))"``), and timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

RESULTS = Path(__file__).resolve().parent / "results" / "fuzz_graph.json"


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="number of networks (seeds start..start+n-1)")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--plans", type=int, default=3, help="random plans per network")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--time-limit", type=float, default=0.0, help="stop after this many seconds (0: none)")
    args = ap.parse_args(argv)

    import torch

    from compressor.testing.fuzz import check_net

    torch.set_num_threads(1)
    check_net(10_000_000, plans=1)  # warm up (imports, first trace)

    per_net: list[float] = []
    counts: Counter[str] = Counter()
    frozen_reasons: Counter[str] = Counter()
    failures: dict[str, list[int]] = {}
    examples: dict[str, str] = {}
    ops: Counter[str] = Counter()
    max_rel = 0.0
    cost_seeds: list[int] = []
    t0 = time.perf_counter()
    stopped_early = False
    for seed in range(args.start, args.start + args.n):
        t = time.perf_counter()
        r = check_net(seed, plans=args.plans)
        per_net.append(time.perf_counter() - t)
        counts["generated"] += 1
        counts["traced"] += int(r.traced)
        counts["groups"] += r.n_groups
        counts["prunable_groups"] += r.n_prunable
        counts["frozen_groups"] += r.n_frozen
        counts["nets_with_prunable_groups"] += int(r.n_prunable > 0)
        counts["plans_slimmed"] += r.plans_slimmed
        counts["plans_verified"] += r.plans_verified
        counts["nets_ok"] += int(r.ok)
        counts["nets_slimmed"] += int(r.plans_slimmed > 0)
        counts["nets_verified"] += int(r.plans_verified > 0 and r.ok)
        counts["plans_costed"] += r.plans_costed
        counts["cost_mismatches"] += len(r.cost_mismatches)
        if r.cost_mismatches and len(cost_seeds) < 50:
            cost_seeds.append(seed)
        frozen_reasons.update(r.frozen_reasons)
        ops.update(r.ops)
        max_rel = max(max_rel, r.max_rel_err)
        for f in r.failures:
            seeds = failures.setdefault(f.kind, [])
            if seed not in seeds:
                seeds.append(seed)
            examples.setdefault(f.kind, f"seed {seed}: {f.message.splitlines()[0][:300]}")
        done = len(per_net)
        if done % 50 == 0:
            bad = sum(len(v) for v in failures.values())
            print(f"{done:5d} nets  {time.perf_counter() - t0:7.1f}s  failures so far: {bad}", flush=True)
        if args.time_limit and time.perf_counter() - t0 > args.time_limit:
            stopped_early = True
            break
    total = time.perf_counter() - t0

    failing = sorted({s for v in failures.values() for s in v})
    result: dict[str, object] = {
        "benchmark": "fuzz_graph",
        "seeds": [args.start, args.start + len(per_net) - 1],
        "plans_per_net": args.plans,
        "networks_generated": counts["generated"],
        "networks_traced": counts["traced"],
        "networks_with_prunable_groups": counts["nets_with_prunable_groups"],
        "networks_slimmed": counts["nets_slimmed"],
        "networks_verified": counts["nets_verified"],
        "networks_failed": len(failing),
        "plans_slimmed": counts["plans_slimmed"],
        "plans_verified": counts["plans_verified"],
        "groups": counts["groups"],
        "prunable_groups": counts["prunable_groups"],
        "frozen_groups": counts["frozen_groups"],
        "frozen_reasons": dict(frozen_reasons.most_common()),
        "max_rel_err_verified": max_rel,
        "cost_model": {
            "plans_checked": counts["plans_costed"],
            "mismatches": counts["cost_mismatches"],
            "seeds": cost_seeds,
            "what": "graph.cost(plan) (analytic MACs, params) == compressor.graph.count(slimmed model)",
        },
        "tolerance_rel": 1e-4,
        "failures": {
            k: {"count": len(v), "seeds": v, "example": examples[k]} for k, v in sorted(failures.items())
        },
        "failing_seeds": failing,
        "reproduce": 'python -c "from compressor.testing.fuzz import reproduce, check_net; print(reproduce(SEED)); '
        'print(check_net(SEED).failures)"',
        "op_counts": dict(ops.most_common()),
        "time_s": {
            "total": round(total, 2),
            "per_net_median": round(statistics.median(per_net), 4) if per_net else None,
            "per_net_p90": round(sorted(per_net)[int(0.9 * (len(per_net) - 1))], 4) if per_net else None,
            "per_net_max": round(max(per_net), 4) if per_net else None,
        },
        "stopped_early_at_time_limit": stopped_early,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "note": "2-core CPU shared with other engineers' runs; timings are indicative only",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from compressor.io import atomic_write_json

    atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in list(result)[:16]}, indent=2))
    print(f"failing seeds: {failing[:50]}{' ...' if len(failing) > 50 else ''}")
    print(f"total {total:.1f}s, median {result['time_s']['per_net_median']}s per net")  # type: ignore[index]
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
