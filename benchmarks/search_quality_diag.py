"""Diagnosis for EagleEye on the demo: where the uniform plan ranks among paper-mode candidates.

For each FLOPs budget and seed: draw ``--candidates`` paper-mode strategies (EagleEye's own
sampler, same seed and index as the search), score each and the uniform (l1-uniform) plan by
top-1 after adaptive BN on the benchmark's search-validation split, with ``--calib`` batch
counts (the score's sensitivity to calibration data), then fine-tune the top ``--top`` by score
and the uniform plan for ``--epochs`` epochs (same seed) and test them on the 1,000 held-out
images (as :mod:`search_quality`). Writes ``results/search_quality_diag.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="0.5,0.25")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--calib", default="10,50", help="calibration batch counts to score with")
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--model", default="examples/resnet_mnist.pt")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_quality_diag.json"))
    args = ap.parse_args()

    import numpy as np
    import torch
    from scipy import stats
    from search_quality import eval_bundle
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    from compressor.checkpoint import load_checkpoint
    from compressor.data import load_data
    from compressor.evaluate import accuracy
    from compressor.graph import build_graph
    from compressor.methods.eagleeye import Scorer, cache_batches, default_ratio_max, sample_strategy
    from compressor.train import finetune

    model, meta = load_checkpoint(ROOT / args.model)
    data = eval_bundle(load_data("mnist5k", meta=meta))
    graph = build_graph(model, input_shape=(1, *[int(s) for s in meta["input_shape"]]))
    model.eval()
    imp = graph.importance()
    calibs = [int(c) for c in args.calib.split(",")]
    out: list[dict] = []
    t0 = time.perf_counter()
    for flops in [float(b) for b in args.budgets.split(",")]:
        for seed in range(args.seeds):
            uni = {k: int(v) for k, v in graph.counts_for_flops(flops).items()}
            cands = [("uniform", uni)] + [
                (
                    i,
                    sample_strategy(
                        graph, flops, seed=seed, index=i, ratio_max=default_ratio_max(flops)
                    ).counts,
                )
                for i in range(args.candidates)
            ]
            val = cache_batches(data.val, batch_size=256)
            scores: dict[int, list[float]] = {}
            for nb in calibs:
                calib = cache_batches(
                    data.train_eval, batch_size=64, n_batches=nb, shuffle=True, seed=seed, with_targets=False
                )
                sc = Scorer(model, graph, calib, val, "cpu")
                with torch.no_grad():
                    scores[nb] = [
                        sc.accuracy(sc.build(graph.plan_from_counts(c, method="x", importance=imp)))
                        for _, c in cands
                    ]
            main_nb = max(calibs)
            s = np.asarray(scores[main_nb])
            order = np.argsort(-s, kind="stable")
            uni_rank = int(np.flatnonzero(order == 0)[0]) + 1
            rho = float(stats.spearmanr(scores[min(calibs)], scores[main_nb])[0])
            picks = [int(j) for j in order[: args.top] if j != 0] + [0]
            ft = {}
            for j in picks:
                sub = Scorer(model, graph, [], val, "cpu")
                from compressor.graph import slim

                net = slim(
                    model, graph.plan_from_counts(cands[j][1], method="x", importance=imp), graph=graph
                )
                res = finetune(net, data, epochs=args.epochs, seed=seed, device="cpu", progress=False)
                ft[str(cands[j][0])] = {
                    "score": float(s[j]),
                    "rank": int(np.flatnonzero(order == j)[0]) + 1,
                    "test_top1": float(accuracy(res.model, DataLoader(data.test, batch_size=500))["top1"]),
                }
                del sub
            rec = {
                "flops": flops,
                "seed": seed,
                "candidates": args.candidates,
                "uniform_score": float(s[0]),
                "uniform_rank_by_score": uni_rank,
                "score_best": float(s.max()),
                "score_median": float(np.median(s[1:])),
                "spearman_calib_small_vs_large": rho,
                "scores": {str(k): v for k, v in scores.items()},
                "finetuned": ft,
            }
            print(json.dumps({k: v for k, v in rec.items() if k != "scores"}), flush=True)
            out.append(rec)
    path = Path(args.out)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"config": vars(args), "seconds": time.perf_counter() - t0, "runs": out}, indent=1)
    )
    os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
