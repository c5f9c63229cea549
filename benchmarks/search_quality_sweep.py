"""The diagnosis behind EagleEye's and EPruner's defaults: one setting changed at a time.

For each demo model, FLOPs budget (0.5 and 0.25 by default) and seed (0 and 1 by default), the
same one-epoch fine-tune and test as ``search_quality.py`` (its worker, one thread per process),
for l1-uniform (the baseline), EagleEye with its defaults (20 candidates as in ``compress run``)
and with one setting changed (fewer or more candidates, a smaller
search-validation split, a narrower or wider per-group ratio range R, the best score instead of
the finalists), and EPruner with the paper's preference (column median) and/or the paper's
exemplar channels. Each variant's row gives the mean test top-1 over seeds and the mean paired
difference to l1-uniform; EagleEye's rows also say which candidate was kept.

    python benchmarks/search_quality_sweep.py [--seeds 2] [--budgets 0.5,0.25] [--jobs 2]

Writes ``results/search_quality_sweep.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from machine_info import code_version, machine_info  # noqa: E402
from search_quality import MODELS, RESULTS, run_jobs  # noqa: E402

BASE_EAGLEEYE = {"candidates": 20, "random_candidates": 10}
#: variant name -> (method, options)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "l1-uniform": ("l1-uniform", {}),
    "eagleeye (defaults, 20 candidates)": ("eagleeye", {}),
    "eagleeye, 10 candidates": ("eagleeye", {"candidates": 10, "random_candidates": 5}),
    "eagleeye, 40 candidates": ("eagleeye", {"candidates": 40, "random_candidates": 20}),
    "eagleeye, 250 search-val images": ("eagleeye", {"val_images": 250}),
    "eagleeye, R = 0.5": ("eagleeye", {"ratio_max": 0.5}),
    "eagleeye, R = 0.9": ("eagleeye", {"ratio_max": 0.9}),
    "eagleeye, best score (top_k 1)": ("eagleeye", {"top_k": 1}),
    "epruner (defaults)": ("epruner", {}),
    "epruner, column median (paper's preference)": ("epruner", {"median": "column"}),
    "epruner, exemplar channels": ("epruner", {"channels": "exemplars"}),
    "epruner, paper (column median, exemplars)": ("epruner", {"median": "column", "channels": "exemplars"}),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--budgets", default="0.5,0.25")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--variants", default="", help="comma-separated subset of the variant names")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "search_quality_sweep.json"))
    args = ap.parse_args()

    names = [v for v in args.variants.split(",") if v] or list(VARIANTS)
    jobs = []
    for model in args.models.split(","):
        for flops in (float(b) for b in args.budgets.split(",")):
            for seed in range(args.seeds):
                for name in names:
                    method, opts = VARIANTS[name]
                    options = {**BASE_EAGLEEYE, **opts} if method == "eagleeye" else dict(opts)
                    jobs.append(
                        {"model": model, "flops": flops, "method": method, "seed": seed, "epochs": 1,
                         "options": options, "variant": name}
                    )  # fmt: skip
    jobs.sort(key=lambda j: (j["method"] != "eagleeye", -j["options"].get("candidates", 0)))  # slow first
    t0 = time.perf_counter()
    runs = run_jobs(jobs, args.jobs, None)
    rows = []
    for model in args.models.split(","):
        for flops in (float(b) for b in args.budgets.split(",")):
            mine = [r for r in runs if (r["model"], r["flops"]) == (model, flops)]
            base = {r["seed"]: r["test_top1"] for r in mine if r["variant"] == "l1-uniform"}
            for name in names:
                rs = sorted((r for r in mine if r["variant"] == name), key=lambda r: r["seed"])
                acc = [r["test_top1"] for r in rs]
                row: dict[str, Any] = {
                    "model": model, "flops": flops, "variant": name, "seeds": [r["seed"] for r in rs],
                    "top1": acc, "mean": sum(acc) / len(acc),
                    "mean_diff_vs_l1": sum(a - base[r["seed"]] for a, r in zip(acc, rs, strict=True)) / len(acc),
                }  # fmt: skip
                if rs and rs[0]["method"] == "eagleeye":
                    row["chosen"] = [r["info"].get("candidate") for r in rs]
                    row["uniform_rank"] = [r["info"].get("uniform_rank") for r in rs]
                rows.append(row)
    out = {
        "benchmark": "search_quality_sweep",
        "code": code_version(),
        "machine": machine_info("2-core CPU, one thread per worker", jobs=args.jobs),
        "config": {
            "variants": {n: VARIANTS[n] for n in names},
            "eagleeye_base": BASE_EAGLEEYE,
            "seeds": args.seeds,
            "finetune_epochs": 1,
        },  # fmt: skip
        "wall_seconds": time.perf_counter() - t0,
        "summary": rows,
        "runs": runs,
    }
    path = Path(args.out)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)
    for r in rows:
        print(
            f"{Path(r['model']).stem} {r['flops']:.2f} {r['variant']:<45} {r['mean']:.2f}  "
            f"vs l1 {r['mean_diff_vs_l1']:+.2f}  {r.get('chosen', '')}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
