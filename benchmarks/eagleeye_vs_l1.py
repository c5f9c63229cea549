"""EagleEye against the l1-uniform baseline at the same FLOPs on the demo, after the same fine-tune.

    OMP_NUM_THREADS=1 python benchmarks/eagleeye_vs_l1.py [--candidates 50] [--epochs 3] [--seeds 2]

l1-uniform: the same ratio in every group, L1-ranked channels, at 50% FLOPs (or as close as one
ratio gets). EagleEye: a search of N candidates at the FLOPs l1-uniform reached (default
settings: 50 calibration batches of 64), best adaptive-BN score.
Each plan is slimmed, then fine-tuned with compressor.train.finetune (the product's own
fine-tune: the same epochs, lr, seed and data for both); reports test top-1 right after
slimming, after adaptive BN, and after fine-tuning. Writes benchmarks/results/eagleeye_vs_l1.json.
"""

from __future__ import annotations

import argparse
import json
import time

from eagleeye_common import RESULTS, batches, load_demo, machine, top1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2, help="fine-tune seeds per method")
    args = ap.parse_args()

    import torch

    from compressor.evaluate import adaptive_bn
    from compressor.graph import slim
    from compressor.methods import get_method
    from compressor.train import finetune

    t_start = time.perf_counter()
    model, meta, data, graph = load_demo()
    calib = [x for x, _ in batches(data.train_eval, 64, 50, shuffle=True, seed=0)]
    test = batches(data.test, 256)
    full = top1(model, test)

    l1 = get_method("l1-uniform")(model, graph, flops=args.flops, data=None, seed=0)
    # one ratio for every group cannot always land on the target (6 groups, whole channels):
    # EagleEye searches at the FLOPs l1-uniform actually reached, so both have the same FLOPs
    same_flops = graph.cost(l1).macs / graph.full.macs
    t0 = time.perf_counter()
    plans = {
        "eagleeye": get_method("eagleeye")(
            model,
            graph,
            flops=same_flops,
            data=data,
            seed=0,
            candidates=args.candidates,
            device="cpu",
            progress=False,
        ),
        "l1-uniform": l1,
    }
    search_s = time.perf_counter() - t0

    out: dict = {}
    for name, plan in plans.items():
        cost = graph.cost(plan)
        sub = slim(model, plan, graph=graph).eval()
        row = {
            "flops": cost.macs / graph.full.macs,
            "params": int(cost.params),
            "kept": {g: len(k) for g, k in plan.groups.items()},
            "test_top1_slimmed": top1(sub, test),
        }
        with torch.no_grad():
            adaptive_bn(sub, calib)
        row["test_top1_adaptive_bn"] = top1(sub, test)
        tuned = []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            res = finetune(
                slim(model, plan, graph=graph),
                data,
                epochs=args.epochs,
                seed=seed,
                device="cpu",
                progress=False,
            )
            tuned.append(
                {
                    "seed": seed,
                    "test_top1": top1(res.model, test),
                    "val_top1": res.best_acc,
                    "seconds": time.perf_counter() - t0,
                }
            )
        row["finetuned"] = tuned
        row["test_top1_finetuned_mean"] = sum(t["test_top1"] for t in tuned) / len(tuned)
        if name == "eagleeye":
            row["search"] = {
                k: plan.info[k] for k in ("score", "candidate", "candidates_scored", "search_seconds")
            }
        out[name] = row
        print(
            f"{name:11s} flops {row['flops']:.4f}  slimmed {row['test_top1_slimmed']:6.2f}  adaptive BN "
            f"{row['test_top1_adaptive_bn']:6.2f}  fine-tuned {row['test_top1_finetuned_mean']:6.2f}",
            flush=True,
        )

    result = {
        "benchmark": "eagleeye_vs_l1",
        "machine": machine(),
        "settings": {
            "checkpoint": "examples/resnet_mnist.pt",
            "data": data.name,
            "flops_requested": args.flops,
            "flops_both": same_flops,
            "eagleeye_candidates": args.candidates,
            "finetune": f"compressor.train.finetune, {args.epochs} epochs, defaults (SGD nesterov lr 0.01 cosine, "
            "batch 64), seeds " + ", ".join(str(s) for s in range(args.seeds)),
            "metric": f"test split top-1 ({sum(int(y.numel()) for _, y in test)} images)",
        },
        "full_model_test_top1": full,
        "eagleeye_search_seconds": search_s,
        "methods": out,
        "finetuned_difference_eagleeye_minus_l1": out["eagleeye"]["test_top1_finetuned_mean"]
        - out["l1-uniform"]["test_top1_finetuned_mean"],
        "seconds": time.perf_counter() - t_start,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eagleeye_vs_l1.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("full_model_test_top1", "finetuned_difference_eagleeye_minus_l1", "seconds")
            }
        )
    )


if __name__ == "__main__":
    main()
