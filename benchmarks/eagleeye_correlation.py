"""EagleEye's central claim on the demo: adaptive-BN accuracy ranks sub-nets like fine-tuning does.

    OMP_NUM_THREADS=1 python benchmarks/eagleeye_correlation.py [--candidates 36]

For each of N random candidates at 50% FLOPs (the search's own strategy generator, seed 0):
top-1 on the search-validation split with the BatchNorm statistics inherited from the full
model, top-1 after adaptive BN (50 calibration batches of 64 training images, evaluation
transforms), and test top-1 after a short identical fine-tune (the same cached training
batches in the same order, SGD). Reports the Spearman rank correlation of each score with
the fine-tuned accuracy, writes every point to benchmarks/results/eagleeye_correlation.json
and a scatter plot to benchmarks/results/eagleeye_correlation.png.
"""

from __future__ import annotations

import argparse
import json
import time

from eagleeye_common import RESULTS, batches, load_demo, machine, short_finetune, top1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=36)
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib-batches", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--finetune-steps", type=int, default=60)
    args = ap.parse_args()

    import numpy as np
    import torch
    from scipy.stats import kendalltau, pearsonr, spearmanr

    from compressor.evaluate import adaptive_bn
    from compressor.graph import slim
    from compressor.methods.eagleeye import default_ratio_max, sample_strategy

    t_start = time.perf_counter()
    model, meta, data, graph = load_demo()
    calib = [
        x
        for x, _ in batches(
            data.train_eval, args.batch_size, args.calib_batches, shuffle=True, seed=args.seed
        )
    ]
    val = batches(data.val, 256)
    test = batches(data.test, 256)
    # the fine-tune sees training augmentation, the same batches for every candidate
    train = batches(data.train, args.batch_size, args.finetune_steps, shuffle=True, seed=args.seed + 1)
    full = {"val_top1": top1(model, val), "test_top1": top1(model, test)}
    print(f"full model: val {full['val_top1']:.2f}%  test {full['test_top1']:.2f}%")

    points = []
    for i in range(args.candidates):
        t0 = time.perf_counter()
        s = sample_strategy(graph, args.flops, seed=args.seed, index=i)
        plan = graph.plan_from_counts(s.counts, method="eagleeye", seed=args.seed)
        sub = slim(model, plan, graph=graph).eval()
        inherited = top1(sub, val)
        with torch.no_grad():
            adaptive_bn(sub, calib)
        adaptive = top1(sub, val)
        ft_start = slim(model, plan, graph=graph)  # fine-tune from the inherited weights, like the paper
        tuned = short_finetune(ft_start, train, steps=args.finetune_steps, seed=args.seed)
        ft_val, ft_test = top1(tuned, val), top1(tuned, test)
        p = {
            "index": i,
            "flops": s.flops,
            "params": s.params,
            "ratios": s.ratios(),
            "acc_inherited_bn": inherited,
            "acc_adaptive_bn": adaptive,
            "acc_finetuned": ft_test,
            "acc_finetuned_val": ft_val,
            "seconds": time.perf_counter() - t0,
        }
        points.append(p)
        print(
            f"[{i + 1:3d}/{args.candidates}] flops {s.flops:.4f}  inherited {inherited:6.2f}  adaptive {adaptive:6.2f}  "
            f"fine-tuned {ft_test:6.2f}  ({p['seconds']:.1f} s)",
            flush=True,
        )

    ft = np.array([p["acc_finetuned"] for p in points])
    stats = {}
    for key in ("acc_inherited_bn", "acc_adaptive_bn"):
        x = np.array([p[key] for p in points])
        rho, pval = spearmanr(x, ft)
        tau, _ = kendalltau(x, ft)
        r, _ = pearsonr(x, ft) if x.std() > 0 else (float("nan"), None)
        stats[key] = {
            "spearman": float(rho),
            "spearman_p": float(pval),
            "kendall": float(tau),
            "pearson": float(r),
            "mean": float(x.mean()),
            "min": float(x.min()),
            "max": float(x.max()),
        }
    best_by = {
        k: int(max(points, key=lambda p, k=k: (p[k], -p["index"]))["index"])
        for k in ("acc_inherited_bn", "acc_adaptive_bn")
    }
    order = np.argsort(-ft, kind="stable")
    rank_of = {int(points[j]["index"]): r + 1 for r, j in enumerate(order)}
    result = {
        "benchmark": "eagleeye_correlation",
        "machine": machine(),
        "checkpoint": "examples/resnet_mnist.pt",
        "data": data.name,
        "settings": {
            "candidates": args.candidates,
            "flops": args.flops,
            "seed": args.seed,
            "ratio_max": default_ratio_max(args.flops),
            "calib_batches": len(calib),
            "batch_size": args.batch_size,
            "calib_split": "train_eval (training split, evaluation transforms)",
            "score_split": f"val ({sum(int(y.numel()) for _, y in val)} images)",
            "finetune": f"{args.finetune_steps} SGD steps of {args.batch_size} augmented training images "
            "(nesterov 0.9, wd 1e-4, lr 0.01 cosine), identical for every candidate, from the inherited weights",
            "finetuned_metric": f"test split top-1 ({sum(int(y.numel()) for _, y in test)} images)",
        },
        "full_model": full,
        "spearman_vs_finetuned": {k: v["spearman"] for k, v in stats.items()},
        "stats": stats,
        "finetuned": {"mean": float(ft.mean()), "min": float(ft.min()), "max": float(ft.max())},
        "best_candidate_by": best_by,
        "finetuned_rank_of_best_by": {k: rank_of[v] for k, v in best_by.items()},
        "seconds": time.perf_counter() - t_start,
        "points": points,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "eagleeye_correlation.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    _plot(points, stats, RESULTS / "eagleeye_correlation.png", args.flops)
    print(
        json.dumps(
            {k: result[k] for k in ("spearman_vs_finetuned", "finetuned_rank_of_best_by", "seconds")},
            indent=2,
        )
    )
    print(f"wrote {out} and eagleeye_correlation.png")


def _plot(points: list[dict], stats: dict, path, flops: float) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    ft = [p["acc_finetuned"] for p in points]
    for ax, key, title, color in (
        (axes[0], "acc_inherited_bn", "inherited BN statistics", "tab:red"),
        (axes[1], "acc_adaptive_bn", "after adaptive BN", "tab:blue"),
    ):
        ax.scatter([p[key] for p in points], ft, s=18, color=color, alpha=0.8)
        ax.set_xlabel(f"search-val top-1 (%), {title}")
        ax.set_ylabel("test top-1 after the short fine-tune (%)")
        ax.set_title(f"{title}: Spearman {stats[key]['spearman']:.3f}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"EagleEye on the demo ResNet / mnist5k: {len(points)} candidates at {flops:.0%} FLOPs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
