"""EPruner's plans on the demo before fine-tuning: per-group pruning ratios and adaptive-BN top-1.

For each FLOPs budget: the l1-uniform plan and EPruner's (``median`` = column and global, beta
found for the budget), the spread of the per-group pruning ratios, and top-1 on the benchmark's
search-validation split (as :mod:`search_quality`) right after slimming and after adaptive BN
(20 calibration batches). Cheap (no fine-tuning): shows whether EPruner's exemplar counts start
from a worse sub-net than the uniform one. Writes ``results/search_quality_epruner.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    import numpy as np
    import torch
    from search_quality import eval_bundle

    torch.set_num_threads(1)
    from compressor.checkpoint import load_checkpoint
    from compressor.data import load_data
    from compressor.graph import build_graph, slim
    from compressor.methods import get_method
    from compressor.methods.eagleeye import Scorer, cache_batches

    model, meta = load_checkpoint(ROOT / "examples" / "resnet_mnist.pt")
    data = eval_bundle(load_data("mnist5k", meta=meta))
    graph = build_graph(model, input_shape=(1, *meta["input_shape"]))
    model.eval()
    calib = cache_batches(
        data.train_eval, batch_size=64, n_batches=20, shuffle=True, seed=0, with_targets=False
    )
    val = cache_batches(data.val, batch_size=256)
    sc = Scorer(model, graph, calib, val, "cpu")
    rows = []
    for flops in (0.5, 0.35, 0.25):
        for name, opts in (
            ("l1-uniform", {}),
            ("epruner", {"median": "column", "channels": "exemplars"}),
            ("epruner", {"median": "global", "channels": "exemplars"}),
        ):
            plan = get_method(name)(model, graph, flops=flops, progress=False, **opts)
            ratios = np.array([plan.ratios().get(g.name, 0.0) for g in graph.prunable])
            with torch.no_grad():
                raw = sc.accuracy(slim(model, plan, graph=graph))
                abn = sc.accuracy(sc.build(plan))
            row = {
                "flops": flops,
                "method": name,
                **opts,
                "beta": plan.info.get("beta"),
                "flops_achieved": graph.cost(plan).macs / graph.full.macs,
                "ratio_min": float(ratios.min()),
                "ratio_max": float(ratios.max()),
                "ratio_sd": float(ratios.std()),
                "ratios": {g.name: round(float(r), 3) for g, r in zip(graph.prunable, ratios, strict=True)},
                "top1_inherited_bn": raw,
                "top1_adaptive_bn": abn,
            }
            if name == "epruner":
                # the same per-group counts, channels kept by L1 norm instead of AP's exemplars
                l1 = graph.plan_from_counts({g: len(k) for g, k in plan.groups.items()}, method="x")
                default = get_method(name)(model, graph, flops=flops, progress=False, median=opts["median"])
                with torch.no_grad():
                    row["top1_adaptive_bn_default_l1_rescaled"] = sc.accuracy(sc.build(default))
                with torch.no_grad():
                    row["top1_adaptive_bn_same_counts_l1_channels"] = sc.accuracy(sc.build(l1))
            print(json.dumps({k: v for k, v in row.items() if k != "ratios"}), flush=True)
            rows.append(row)
    out = ROOT / "benchmarks" / "results" / "search_quality_epruner.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"search_val_images": len(data.val), "rows": rows}, indent=1))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
