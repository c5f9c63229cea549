"""EagleEye search speed on the demo: time per candidate against the bare cost of its forward passes.

    OMP_NUM_THREADS=1 python benchmarks/eagleeye_speed.py [--candidates 12] [--search 100]

Part 1: for each of N candidates (after 2 warm-up candidates), the time the search spends on it
(strategy, plan, slim, adaptive BN on the cached calibration batches, top-1 on the cached
validation batches) and the bare cost of the forward passes it contains: the same calibration
images (BN in train mode) and the same validation images (eval mode) pushed through the same
candidate network, with nothing else. Goal: overhead (per-candidate time / bare forward
time) at most 1.3x. Part 2: the end-to-end time of ``eagleeye(..., candidates=100)`` on the
demo (model and data loading, batch caching and the whole search).
Writes benchmarks/results/eagleeye_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from eagleeye_common import RESULTS, load_demo, machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=12)
    ap.add_argument("--search", type=int, default=100, help="candidates of the end-to-end search (0: skip)")
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--calib-batches", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    import torch

    from compressor.evaluate import adaptive_bn
    from compressor.graph import build_graph, slim
    from compressor.methods.eagleeye import cache_batches, eagleeye, sample_strategy

    t0 = time.perf_counter()
    model, meta, data, graph = load_demo()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    calib = cache_batches(
        data.train_eval,
        batch_size=args.batch_size,
        n_batches=args.calib_batches,
        shuffle=True,
        with_targets=False,
    )
    val = cache_batches(data.val, batch_size=256)
    cache_s = time.perf_counter() - t0
    n_calib = sum(len(x) for x in calib)
    n_val = sum(len(y) for _, y in val)

    def phases(i: int) -> tuple[dict[str, float], torch.nn.Module]:
        t = {}
        c = time.perf_counter()
        s = sample_strategy(graph, args.flops, seed=0, index=i)
        t["strategy"] = time.perf_counter() - c
        c = time.perf_counter()
        plan = graph.plan_from_counts(s.counts, method="eagleeye", seed=0)
        t["plan"] = time.perf_counter() - c
        c = time.perf_counter()
        sub = slim(model, plan, graph=graph)
        t["slim"] = time.perf_counter() - c
        c = time.perf_counter()
        with torch.no_grad():
            adaptive_bn(sub, calib)
        t["adaptive_bn"] = time.perf_counter() - c
        c = time.perf_counter()
        correct = 0
        sub.eval()
        with torch.no_grad():
            for x, y in val:
                correct += int((sub(x).argmax(1) == y).sum())
        t["score"] = time.perf_counter() - c
        t["total"] = sum(t.values())
        return t, sub

    def bare(sub: torch.nn.Module) -> dict[str, float]:
        bns = [m for m in sub.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        with torch.no_grad():
            for m in bns:
                m.train()
            c = time.perf_counter()
            for x in calib:
                sub(x)
            calib_s = time.perf_counter() - c
            sub.eval()
            c = time.perf_counter()
            for x, _ in val:
                sub(x)
            val_s = time.perf_counter() - c
            c = time.perf_counter()
            for x in calib:
                sub(x)
            calib_eval_s = time.perf_counter() - c
        return {"calib": calib_s, "val": val_s, "total": calib_s + val_s, "calib_eval_mode": calib_eval_s}

    for i in range(2):  # warm-up
        _, sub = phases(1000 + i)
        bare(sub)
    rows = []
    for i in range(args.candidates):
        t, sub = phases(i)
        b1 = bare(sub)
        # candidate, bare, candidate, bare: the best of two of each cancels some of the shared CPU's drift
        t2, sub2 = phases(i)
        b2 = bare(sub2)
        b = b1 if b1["total"] <= b2["total"] else b2
        cand = min(t["total"], t2["total"])
        rows.append(
            {
                "index": i,
                "phases": t,
                "phases_repeat": t2,
                "bare": b,
                "candidate_s": cand,
                "overhead": cand / b["total"],
            }
        )
        print(
            f"candidate {i:2d}: {cand * 1e3:7.1f} ms  bare forward {b['total'] * 1e3:7.1f} ms  "
            f"overhead {cand / b['total']:.3f}x  (slim {t['slim'] * 1e3:.1f} ms, strategy {t['strategy'] * 1e3:.1f} ms)",
            flush=True,
        )
    over = [r["overhead"] for r in rows]
    per = [r["candidate_s"] for r in rows]
    summary = {
        "overhead_median": statistics.median(over),
        "overhead_min": min(over),
        "overhead_max": max(over),
        "candidate_seconds_median": statistics.median(per),
        "bare_forward_seconds_median": statistics.median(r["bare"]["total"] for r in rows),
        "phase_medians_ms": {
            k: 1e3 * statistics.median(r["phases"][k] for r in rows) for k in rows[0]["phases"]
        },
        # work that is not a forward pass (strategy, plan, slimming): robust to the shared CPU's noise
        "non_forward_ms_median": 1e3
        * statistics.median(
            r["phases"]["strategy"] + r["phases"]["plan"] + r["phases"]["slim"] for r in rows
        ),
        "non_forward_fraction_median": statistics.median(
            (r["phases"]["strategy"] + r["phases"]["plan"] + r["phases"]["slim"]) / r["phases"]["total"]
            for r in rows
        ),
        "goal_overhead": 1.3,
    }
    summary["goal_met"] = summary["overhead_median"] <= 1.3
    print(json.dumps(summary, indent=2))

    rejection = {"demo": rejection_vs_correction(graph, args.flops)}
    import torchvision

    r50 = build_graph(torchvision.models.resnet50().eval(), input_shape=(1, 3, 224, 224))
    rejection["torchvision_resnet50"] = rejection_vs_correction(r50, args.flops)
    print(json.dumps(rejection, indent=2))

    e2e = None
    if args.search:
        t0 = time.perf_counter()
        model2, meta2, data2, graph2 = load_demo()
        plan = eagleeye(
            model2,
            graph2,
            flops=args.flops,
            data=data2,
            seed=0,
            candidates=args.search,
            calib_batches=args.calib_batches,
            batch_size=args.batch_size,
            device="cpu",
            progress=False,
        )
        total = time.perf_counter() - t0
        e2e = {
            "candidates": args.search,
            "seconds_total": total,
            "seconds_search": plan.info["search_seconds"],
            "seconds_data": plan.info["data_seconds"],
            "candidates_per_minute": 60.0 * args.search / plan.info["search_seconds"],
            "best_score": plan.info["score"],
            "best_candidate": plan.info["candidate"],
            "flops": plan.info["flops"],
        }
        print(json.dumps(e2e, indent=2))

    result = {
        "benchmark": "eagleeye_speed",
        "machine": machine(),
        "settings": {
            "checkpoint": "examples/resnet_mnist.pt",
            "flops": args.flops,
            "calib_images": n_calib,
            "calib_batches": len(calib),
            "val_images": n_val,
            "warmup_candidates": 2,
            "timed_candidates": args.candidates,
            "device": "cpu",
        },
        "load_seconds": load_s,
        "cache_batches_seconds": cache_s,
        "per_candidate": summary,
        "end_to_end": e2e,
        "strategy_generation": rejection,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eagleeye_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'eagleeye_speed.json'}")


def rejection_vs_correction(graph, flops: float, draws: int = 2000) -> dict:  # type: ignore[no-untyped-def]
    """The official generator keeps a raw draw only if its FLOPs ratio is within +-0.005 of the
    target (rejection sampling); ours rescales every draw. Acceptance rate and time of both."""
    import math

    import numpy as np

    from compressor.methods.eagleeye import default_ratio_max, sample_strategy

    R = default_ratio_max(flops)
    rng = np.random.default_rng(0)
    sizes = {g.name: g.size for g in graph.prunable}
    c = time.perf_counter()
    hits = 0
    for _ in range(draws):
        r = rng.uniform(0, R, size=len(sizes))
        counts = {n: max(1, s - math.floor(x * s)) for (n, s), x in zip(sizes.items(), r, strict=True)}
        hits += abs(graph.cost_of_counts(counts).macs / graph.full.macs - flops) <= 0.005
    raw_s = (time.perf_counter() - c) / draws
    c = time.perf_counter()
    ours = [sample_strategy(graph, flops, seed=0, index=i) for i in range(50)]
    ours_s = (time.perf_counter() - c) / len(ours)
    rate = hits / draws
    return {
        "groups": len(sizes),
        "ratio_max": R,
        "rejection_acceptance_rate": rate,
        "rejection_draws_per_accepted": (1 / rate) if rate else None,
        "rejection_seconds_per_accepted": (raw_s / rate) if rate else None,
        "corrected_seconds_per_strategy": ours_s,
        "corrected_within_1pct": sum(abs(s.flops - flops) <= 0.01 * flops for s in ours) / len(ours),
        "corrected_max_abs_error": max(abs(s.flops - flops) for s in ours),
    }


if __name__ == "__main__":
    main()
