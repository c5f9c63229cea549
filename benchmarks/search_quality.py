"""Search quality: every registered method against l1-uniform, paired over seeds, on the demo models.

For each demo model, FLOPs budget, method and seed: search (the method's defaults, plus any
``--option METHOD:KEY=VALUE``), slim, fine-tune for ``--epochs`` epochs with the same recipe and
the same seed for every method (so seed ``s`` of two methods is a paired comparison), then test
top-1 on every image the demo model never trained on.

Evaluation split (mnist5k): the demo models trained on the 4,000 ``train`` images; the 500
search-validation and the 500 test images were held out, so the test here is those 1,000 images
(one image = 0.1 points). The search-validation split the methods score on (and fine-tuning
keeps its best epoch on) is 500 images carved, per class with a fixed seed, from the training
images, as the EagleEye paper does (it scores on a subset of the training set). Fine-tuning uses
all 4,000 training images.

Each (model, budget, method, seed) runs in its own worker process with one thread
(``OMP_NUM_THREADS=1``), ``--jobs`` at a time. Output: ``results/search_quality.json`` (every run,
and per model/budget/method the mean, standard deviation, and the paired difference to
l1-uniform with a paired t-test and a sign test) and ``results/search_quality.png``.

    python benchmarks/search_quality.py                       # defaults: 120 runs, ~40 min on 2 cores
    python benchmarks/search_quality.py --seeds 5 --epochs 2 --budgets 0.5,0.25
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("examples/resnet_mnist.pt", "examples/mbconv_mnist.pt")
METHODS = ("l1-uniform", "eagleeye", "epruner", "halp")
BASELINE = "l1-uniform"
SEARCH_VAL_PER_CLASS = 50


# --------------------------------------------------------------------------------------- data
def eval_bundle(bundle: Any) -> Any:
    """The demo bundle with search-val carved from the training images and test = every held-out image."""
    import dataclasses

    import numpy as np
    import torch
    from torch.utils.data import ConcatDataset, Subset

    labels = bundle.train_eval.labels.numpy() if hasattr(bundle.train_eval, "labels") else None
    if labels is None:
        labels = np.array([int(bundle.train_eval[i][1]) for i in range(len(bundle.train_eval))])
    rng = np.random.default_rng(12345)
    idx = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:SEARCH_VAL_PER_CLASS] for c in np.unique(labels)]
    )
    val = Subset(bundle.train_eval, torch.as_tensor(np.sort(idx)).tolist())
    test = ConcatDataset([bundle.val, bundle.test])
    return dataclasses.replace(bundle, val=val, test=test)


# --------------------------------------------------------------------------------------- one run
def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Search, slim, fine-tune and test one (model, budget, method, seed)."""
    import torch

    torch.set_num_threads(1)
    from compressor.checkpoint import load_checkpoint
    from compressor.data import load_data
    from compressor.evaluate import accuracy
    from compressor.graph import build_graph, slim
    from compressor.methods import get_method
    from compressor.train import finetune

    model, meta = load_checkpoint(ROOT / job["model"])
    data = eval_bundle(load_data(meta.get("dataset") or "mnist5k", meta=meta))
    graph = build_graph(model, input_shape=(1, *[int(s) for s in meta["input_shape"]]))
    spec = get_method(job["method"])
    opts = {k: v for k, v in job.get("options", {}).items() if spec.has_option(k)}
    if spec.has_option("device"):
        opts["device"] = "cpu"
    t0 = time.perf_counter()
    plan = spec(model.eval(), graph, flops=job["flops"], data=data, seed=job["seed"], progress=False, **opts)
    search_s = time.perf_counter() - t0
    sub = slim(model, plan, graph=graph)
    achieved = graph.cost(plan).macs / graph.full.macs
    t1 = time.perf_counter()
    res = finetune(sub, data, epochs=job["epochs"], seed=job["seed"], device="cpu", progress=False)
    ft_s = time.perf_counter() - t1
    from torch.utils.data import DataLoader

    test = accuracy(res.model, DataLoader(data.test, batch_size=500), device="cpu")["top1"]
    info = {k: v for k, v in plan.info.items() if isinstance(v, (int, float, str, bool)) or v is None}
    return {
        **job,
        "test_top1": float(test),
        "test_images": len(data.test),
        "val_top1": float(res.best_acc),
        "flops_achieved": float(achieved),
        "search_seconds": search_s,
        "finetune_seconds": ft_s,
        "info": info,
    }


# --------------------------------------------------------------------------------------- statistics
def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """Paired comparison a - b over seeds: mean, sd, paired t-test and exact sign test (two-sided)."""
    import numpy as np
    from scipy import stats

    d = np.asarray(a, float) - np.asarray(b, float)
    out: dict[str, Any] = {"n": int(d.size), "mean_diff": float(d.mean()), "diffs": d.tolist()}
    out["sd_diff"] = float(d.std(ddof=1)) if d.size > 1 else None
    if d.size > 1 and np.any(d != d[0]):
        out["t_p"] = float(stats.ttest_rel(a, b).pvalue)
    else:
        out["t_p"] = None
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    out["wins"], out["losses"], out["ties"] = pos, neg, int(d.size - pos - neg)
    out["sign_p"] = float(stats.binomtest(pos, pos + neg).pvalue) if pos + neg else 1.0
    verdict = "no significant difference"
    if out["t_p"] is not None and out["t_p"] < 0.05:
        verdict = "significantly better" if out["mean_diff"] > 0 else "significantly worse"
    out["verdict"] = verdict
    out["beats_by_more_than_spread"] = bool(out["sd_diff"] is not None and out["mean_diff"] > out["sd_diff"])
    return out


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model/budget/method: mean and sd of test top-1, and the paired comparison to the baseline."""
    import numpy as np

    rows = []
    keys = sorted({(r["model"], r["flops"], r["method"]) for r in runs}, key=lambda k: (k[0], -k[1], k[2]))
    for model, flops, method in keys:
        mine = {r["seed"]: r for r in runs if (r["model"], r["flops"], r["method"]) == (model, flops, method)}
        acc = [mine[s]["test_top1"] for s in sorted(mine)]
        row: dict[str, Any] = {
            "model": model,
            "flops": flops,
            "method": method,
            "seeds": sorted(mine),
            "mean": float(np.mean(acc)),
            "sd": float(np.std(acc, ddof=1)) if len(acc) > 1 else None,
            "flops_achieved_mean": float(np.mean([mine[s]["flops_achieved"] for s in mine])),
            "search_seconds_mean": float(np.mean([mine[s]["search_seconds"] for s in mine])),
        }
        base = {
            r["seed"]: r for r in runs if (r["model"], r["flops"], r["method"]) == (model, flops, BASELINE)
        }
        common = sorted(set(mine) & set(base))
        if method != BASELINE and common:
            row["vs_baseline"] = paired(
                [mine[s]["test_top1"] for s in common], [base[s]["test_top1"] for s in common]
            )
        rows.append(row)
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against FLOPs fraction, one panel per model, error bars = sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        methods = sorted({r["method"] for r in rows if r["model"] == model})
        for k, m in enumerate(methods):
            pts = sorted(
                (r for r in rows if r["model"] == model and r["method"] == m), key=lambda r: r["flops"]
            )
            xs = [r["flops_achieved_mean"] + (k - len(methods) / 2) * 0.004 for r in pts]
            ax.errorbar(
                xs, [r["mean"] for r in pts], yerr=[r["sd"] or 0 for r in pts], marker="o", capsize=3, label=m
            )
        n = max((len(r["seeds"]) for r in rows if r["model"] == model), default=0)
        ax.set_title(f"{Path(model).stem}: mean ± sd over {n} seeds")
        ax.set_xlabel("FLOPs kept (fraction of the full model)")
        ax.set_ylabel("test top-1 after fine-tuning (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------- driver
def worker_cmd(job: dict[str, Any]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]


def run_jobs(jobs: list[dict[str, Any]], n_parallel: int, log: Path | None) -> list[dict[str, Any]]:
    """Each job in its own one-thread process, ``n_parallel`` at a time; a failed job stops the run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def one(job: dict[str, Any]) -> dict[str, Any]:
        p = subprocess.run(worker_cmd(job), capture_output=True, text=True, env=env, cwd=ROOT)
        if p.returncode != 0:
            raise RuntimeError(f"job {job} failed:\n{p.stderr[-3000:]}")
        rec = json.loads(p.stdout.strip().splitlines()[-1])
        print(
            f"{Path(job['model']).stem} {job['flops']:.2f} {job['method']:<11} seed {job['seed']}: "
            f"{rec['test_top1']:.2f}%  (search {rec['search_seconds']:.0f}s, ft {rec['finetune_seconds']:.0f}s)",
            flush=True,
        )
        if log is not None:
            with open(log, "a") as f:
                f.write(json.dumps(rec) + "\n")
        return rec

    with ThreadPoolExecutor(max_workers=n_parallel) as ex:
        return list(ex.map(one, jobs))


def parse_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """``METHOD:KEY=VALUE`` items as {method: {key: typed value}} (typed by the method's options)."""
    from compressor.methods import get_method

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        method, sep, kv = item.partition(":")
        if not sep:
            raise SystemExit(f"--option {item!r} is not METHOD:KEY=VALUE")
        key, value = get_method(method).parse_option(kv)
        out.setdefault(method, {})[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument(
        "--models", default=None, help="comma-separated checkpoints (default: the demo models present)"
    )
    ap.add_argument(
        "--methods",
        default=None,
        help="comma-separated (default: the registered ones of " + ", ".join(METHODS) + ")",
    )
    ap.add_argument("--budgets", default="0.5,0.35,0.25", help="FLOPs fractions")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (paired across methods)")
    ap.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs, equal for every method")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes at once (one thread each)")
    ap.add_argument("--option", action="append", default=[], help="METHOD:KEY=VALUE, a method option")
    ap.add_argument("--out", default=str(RESULTS / "search_quality.json"))
    ap.add_argument("--resume", action="store_true", help="keep the runs already logged next to --out")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(json.loads(args.worker))))
        return 0

    from machine_info import machine_info

    from compressor.methods import list_methods

    registered = list_methods()
    methods = args.methods.split(",") if args.methods else [m for m in METHODS if m in registered]
    if BASELINE not in methods:
        methods.insert(0, BASELINE)
    models = args.models.split(",") if args.models else [m for m in MODELS if (ROOT / m).exists()]
    budgets = [float(b) for b in args.budgets.split(",")]
    options = parse_options(args.option)
    jobs = [
        {
            "model": m,
            "flops": f,
            "method": meth,
            "seed": s,
            "epochs": args.epochs,
            "options": options.get(meth, {}),
        }
        for m in models
        for f in budgets
        for s in range(args.seeds)
        for meth in methods
    ]
    # the slow searches first, so two workers finish together
    jobs.sort(key=lambda j: (j["seed"], j["method"] != "eagleeye", j["model"], -j["flops"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".runs.jsonl")
    done: list[dict[str, Any]] = []
    if args.resume and log.exists():
        fields = ("model", "flops", "method", "seed", "epochs", "options")
        old = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        keys = {json.dumps([j[f] for f in fields], sort_keys=True) for j in jobs}
        done = [r for r in old if json.dumps([r[f] for f in fields], sort_keys=True) in keys]
        got = {json.dumps([r[f] for f in fields], sort_keys=True) for r in done}
        jobs = [j for j in jobs if json.dumps([j[f] for f in fields], sort_keys=True) not in got]
        print(f"resuming: {len(done)} runs read back from {log}, {len(jobs)} to run", flush=True)
    else:
        log.unlink(missing_ok=True)
    t0 = time.perf_counter()
    runs = done + run_jobs(jobs, args.jobs, log)
    rows = summarise(runs)
    result = {
        "machine": machine_info("2-core CPU shared with other runs; one thread per worker", jobs=args.jobs),
        "config": {
            "models": models,
            "methods": methods,
            "budgets": budgets,
            "seeds": args.seeds,
            "finetune_epochs": args.epochs,
            "options": options,
            "test": "mnist5k search-val + test splits (1,000 images the demo models never trained on)",
            "search_val": f"{SEARCH_VAL_PER_CLASS} training images per class (500), evaluation transforms",
        },
        "wall_seconds": time.perf_counter() - t0,
        "summary": rows,
        "runs": runs,
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    plot(rows, out.with_suffix(".png"))
    log.unlink(missing_ok=True)
    for r in rows:
        v = r.get("vs_baseline")
        extra = (
            f"  diff {v['mean_diff']:+.2f} ± {v['sd_diff'] or 0:.2f}  t p={v['t_p'] if v['t_p'] is None else round(v['t_p'], 3)}"
            f"  sign p={v['sign_p']:.3f}  {v['verdict']}"
            if v
            else ""
        )
        print(
            f"{Path(r['model']).stem} {r['flops']:.2f} {r['method']:<11} {r['mean']:.2f} ± {r['sd'] or 0:.2f}{extra}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
