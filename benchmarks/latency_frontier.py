"""Top-1 against measured ONNX Runtime latency: latency-aware pruning against FLOPs-driven pruning.

For each latency budget (a fraction of the original's measured latency), method and seed: the
plan is searched, slimmed, fine-tuned (same recipe for every method), exported and timed on
ONNX Runtime with the target's settings, interleaved with the original (p50 and the target's
percentile, as a fraction of the original's timed alongside). Methods:

* ``l1-uniform`` and ``eagleeye-flops``: FLOPs-driven, asked for the budget as a FLOPs fraction
  (what a user without a latency model does);
* ``eagleeye-latency``, ``epruner-latency`` and ``halp``: under the target's latency model
  (:mod:`compressor.latency`), meeting the budget as predicted latency; then the plan is timed
  and, when it misses the budget as measured, searched again under a predicted budget 7% lower
  (up to ``--latency-candidates`` plans; the first that fits is kept, else the fastest), as
  ``compress run --latency`` does for the methods without scored candidates (for EagleEye it
  times the next-best of the same search instead). Timing comes before fine-tuning (the weights do
  not change latency), and only the kept plan is fine-tuned.

"At equal measured latency": the FLOPs-driven methods' frontiers (mean top-1 against mean measured
latency fraction over their budgets) are interpolated at each latency-aware result's measured
latency, and the summary gives the difference (outside the latencies a frontier reached: None).

The default is the issue's grid on one demo model (budgets 0.7, 0.5, 0.35; 3 seeds; all five
methods; 1 fine-tuning epoch, 8 EagleEye candidates); run it once per demo model:

    python benchmarks/latency_frontier.py                                   # the demo ResNet
    python benchmarks/latency_frontier.py --checkpoint examples/mbconv_mnist.pt \
        --out benchmarks/results/latency_frontier_mbconv.json
    python benchmarks/latency_frontier.py --methods halp,l1-uniform --budgets 0.5 --seeds 0

Writes the JSON given by --out (default benchmarks/results/latency_frontier.json) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from machine_info import code_version, machine_info  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "latency_frontier.json"

#: method label -> (registered method, search under the latency model?)
METHODS = {
    "l1-uniform": ("l1-uniform", False),
    "eagleeye-flops": ("eagleeye", False),
    "eagleeye-latency": ("eagleeye", True),
    "epruner-latency": ("epruner", True),
    "halp": ("halp", True),
}


def search_plan(
    label: str, budget_frac: float, seed: int, env: dict[str, Any], args: argparse.Namespace
) -> Any:
    """The plan of one method at one budget."""
    from compressor.methods import MethodContext, get_method
    from compressor.methods.spec import CostBudget

    name, by_latency = METHODS[label]
    spec = get_method(name)
    lm, m = env["lm"], env["multiple"]
    budget = None
    if by_latency:
        # as compress run: a budget below the predicted floor (at the multiple) searches at the floor
        floor = lm.fraction(lm.floor_counts(m))
        frac = max(budget_frac, floor * 1.0001)
        budget = CostBudget("latency", frac, lm.fraction, snap=lambda c: lm.snap(c, m), model=lm)
    opts: dict[str, Any] = {}
    if spec.has_option("multiple"):
        opts["multiple"] = m
    if name == "eagleeye":
        opts.update(candidates=args.candidates, calib_batches=args.calib_batches, val_images=args.val_images,
                    top_k=1, device="cpu")  # fmt: skip
    ctx = MethodContext(progress=False, budget=budget)
    return spec(
        env["model"], env["graph"], flops=budget_frac, data=env["bundle"], seed=seed, context=ctx, **opts
    )


def time_plan(plan: Any, env: dict[str, Any], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Slim, export and time interleaved with the original (the weights do not change latency, so
    this is done before fine-tuning, as ``compress run`` times its candidates)."""
    from compressor.export import export_onnx, measure_latency
    from compressor.graph import slim

    model, graph, target, shape = env["model"], env["graph"], env["target"], env["shape"]
    small = slim(model, plan, graph=graph).eval()
    path = tmp / "c.onnx"
    export_onnx(small, path, input_shape=(1, *shape), opset=int(target.export.opset), dynamic_batch=False)
    lat = measure_latency([env["orig_onnx"], path], target=target, time_budget_s=args.seconds)["models"]
    counts = env["lm"].plan_counts(plan)
    pct = target.budget.percentile
    return {
        "flops": round(graph.cost(plan).macs / graph.full.macs, 4),
        "predicted_fraction": round(env["lm"].fraction(counts), 4),
        "latency_p50_ms": lat[1]["p50"],
        "original_p50_ms": lat[0]["p50"],
        "latency_fraction_p50": round(lat[1]["p50"] / lat[0]["p50"], 4),
        f"latency_fraction_p{pct:g}": round(lat[1]["at_percentile"] / lat[0]["at_percentile"], 4),
        "counts": counts,
    }


def choose(label: str, b: float, seed: int, env: dict[str, Any], args: argparse.Namespace,
           tmp: Path) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The plan of one method at one budget and its timing. Latency-aware methods do what
    ``compress run --latency`` does: up to ``--latency-candidates`` plans, each under a predicted
    budget 7% lower than the last, timed in turn; the first whose measured latency fraction is
    within the budget is kept (else the fastest). FLOPs-driven methods: their one plan."""
    by_latency = METHODS[label][1]
    tries = max(int(args.latency_candidates), 1) if by_latency else 1
    timed: list[tuple[Any, dict[str, Any]]] = []
    for k in range(tries):
        plan = search_plan(label, round(b * (1.0 - 0.07 * k), 4), seed, env, args)
        t = time_plan(plan, env, args, tmp)
        t["try"] = k
        timed.append((plan, t))
        if not by_latency or t["latency_fraction_p50"] <= b:
            break
    plan, t = next(((p, t) for p, t in timed if t["latency_fraction_p50"] <= b), None) or min(
        timed, key=lambda pt: pt[1]["latency_fraction_p50"]
    )
    t = {**t, "tries": len(timed), "tried_fractions": [x["latency_fraction_p50"] for _, x in timed]}
    return plan, t


def finetune_top1(plan: Any, seed: int, env: dict[str, Any], args: argparse.Namespace) -> float:
    """Slim, fine-tune (the same recipe for every method), top-1 on the test split."""
    from compressor.data import make_loader
    from compressor.evaluate import accuracy
    from compressor.graph import slim
    from compressor.train import FinetuneConfig, finetune

    small = slim(env["model"], plan, graph=env["graph"])
    if args.epochs > 0:
        cfg = FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=64, seed=seed)
        small = finetune(small, env["bundle"], cfg, device="cpu", progress=False).model.cpu().eval()
    return float(accuracy(small, make_loader(env["bundle"].test, batch_size=256))["top1"])


def setup(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from compressor.checkpoint import load_checkpoint
    from compressor.data import load_data
    from compressor.export import export_onnx
    from compressor.graph import build_graph
    from compressor.latency import build_latency_model
    from compressor.targets import load_target

    model, meta = load_checkpoint(ROOT / args.checkpoint)
    model.eval()
    shape = tuple(meta.get("input_shape") or (1, 28, 28))
    bundle = load_data(str(meta.get("dataset") or "mnist5k"), meta=dict(meta))
    graph = build_graph(model, input_shape=(1, *shape))
    target = load_target(args.target)
    m = int(target.export.channel_multiple)
    lm = build_latency_model(model, graph, target, shape, multiple=m, progress=True)
    orig = tmp / "orig.onnx"
    export_onnx(model, orig, input_shape=(1, *shape), opset=int(target.export.opset), dynamic_batch=False)
    from compressor.data import make_loader
    from compressor.evaluate import accuracy

    top1 = float(accuracy(model, make_loader(bundle.test, batch_size=256))["top1"])
    return dict(model=model, graph=graph, bundle=bundle, target=target, shape=shape, lm=lm, multiple=m,
                orig_onnx=orig, original_top1=top1)  # fmt: skip


def at_equal_latency(summary: list[dict[str, Any]], label: str, x: float) -> float | None:
    """``label``'s mean top-1 interpolated (piecewise linear over its budgets' mean points) at mean
    measured latency fraction ``x``; None outside the latencies it reached."""
    pts = sorted((s["latency_fraction_p50_mean"], s["top1_mean"]) for s in summary if s["method"] == label)
    if len(pts) < 1 or not pts[0][0] <= x <= pts[-1][0]:
        return None
    return round(float(np.interp(x, [p[0] for p in pts], [p[1] for p in pts])), 3)


def summarize(runs: list[dict[str, Any]], budgets: list[float], labels: list[str]) -> list[dict[str, Any]]:
    """Per (budget, method): runs, top-1 mean/sd/min/max, measured latency fraction mean/sd, budget
    met within 5%; for latency-aware methods, each FLOPs-driven method's top-1 at the same measured
    latency (interpolated along its own frontier) and the difference."""
    summary: list[dict[str, Any]] = []
    for b in budgets:
        for label in labels:
            rs = [r for r in runs if r["method"] == label and r["budget"] == b and "top1" in r]
            if not rs:
                continue
            top1 = np.array([r["top1"] for r in rs])
            lat = np.array([r["latency_fraction_p50"] for r in rs])
            summary.append({
                "budget": b, "method": label, "runs": len(rs),
                "top1_mean": round(float(top1.mean()), 3), "top1_sd": round(float(top1.std(ddof=1)), 3) if len(rs) > 1 else None,
                "top1_min": float(top1.min()), "top1_max": float(top1.max()),
                "latency_fraction_p50_mean": round(float(lat.mean()), 4),
                "latency_fraction_p50_sd": round(float(lat.std(ddof=1)), 4) if len(rs) > 1 else None,
                "met_within_5pct": int(sum(lat <= b * 1.05)),
            })  # fmt: skip
    flops_driven = [lb for lb in labels if not METHODS[lb][1]]
    for s in summary:
        if METHODS[s["method"]][1]:
            eq = {lb: at_equal_latency(summary, lb, s["latency_fraction_p50_mean"]) for lb in flops_driven}
            s["flops_driven_top1_at_equal_latency"] = eq
            s["gain_at_equal_latency"] = {
                lb: (round(s["top1_mean"] - v, 3) if v is not None else None) for lb, v in eq.items()
            }
    return summary


def plot(result: dict[str, Any], path: Path) -> None:
    """Top-1 against measured latency fraction: mean over seeds per (method, budget), bars = spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label in result["settings"]["methods"]:
        pts = []
        for b in result["settings"]["budgets"]:
            rs = [r for r in result["runs"] if r["method"] == label and r["budget"] == b and "top1" in r]
            if rs:
                x = np.array([r["latency_fraction_p50"] for r in rs])
                y = np.array([r["top1"] for r in rs])
                pts.append((x.mean(), y.mean(), x.min(), x.max(), y.min(), y.max()))
        if not pts:
            continue
        pts.sort()
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        xerr = [[p[0] - p[2] for p in pts], [p[3] - p[0] for p in pts]]
        yerr = [[p[1] - p[4] for p in pts], [p[5] - p[1] for p in pts]]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=label)
    for b in result["settings"]["budgets"]:
        ax.axvline(b, color="#999", ls="--", lw=0.8)
    ax.set_xlabel("measured latency p50 / original's (ONNX Runtime, target settings)")
    ax.set_ylabel("top-1 after fine-tuning (%)")
    ax.set_title(f"latency frontier: {result['settings']['checkpoint']} (mean over seeds, bars: min-max)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="examples/resnet_mnist.pt")
    ap.add_argument("--target", default="mobile")
    ap.add_argument("--budgets", default="0.7,0.5,0.35")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument(
        "--flops-extra",
        default="0.25,0.15",
        help="extra FLOPs fractions for the FLOPs-driven methods only, so that their frontier reaches the "
        "latencies the latency-aware methods reach (for the comparison at equal measured latency)",
    )
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--calib-batches", type=int, default=5)
    ap.add_argument("--val-images", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=1.5, help="latency timing of each model")
    ap.add_argument(
        "--latency-candidates", type=int, default=4,
        help="latency-aware methods: plans timed until one meets the budget (as compress run does)",
    )  # fmt: skip
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    labels = [m.strip() for m in args.methods.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    unknown = [m for m in labels if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")

    import onnxruntime

    from compressor.io import atomic_write_json

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        env = setup(args, tmp)
        lm = env["lm"]
        result: dict[str, Any] = {
            "benchmark": "latency_frontier",
            "code": code_version(),
            "settings": {
                **{k: v for k, v in vars(args).items() if k != "out"},
                "budgets": budgets,
                "methods": labels,
                "seeds": seeds,
            },  # fmt: skip
            "machine": machine_info(
                "shared 2-core machine (other jobs running): latency timings are noisy",
                onnxruntime=onnxruntime.__version__,
                target_runtime=env["target"].to_dict()["runtime"],
            ),
            "original_top1": env["original_top1"],
            "latency_model": {
                "scale": lm.scale,
                "per_element_ms": lm.per_element,
                "rest_ms": lm.rest,
                "channel_block": lm.block,
                "cache_hit": lm.info.get("cache_hit"),
                "floor_fraction": lm.fraction(lm.floor_counts(env["multiple"])),
            },  # fmt: skip
            "runs": [],
        }
        # the fastest plan at the target's multiple, timed: a budget more than 5% below it cannot be met
        floor_plan = env["graph"].plan_from_counts(lm.floor_counts(env["multiple"]), method="floor", seed=0)
        floor_t = time_plan(floor_plan, env, args, tmp)
        result["latency_model"]["floor_measured_fraction_p50"] = floor_t["latency_fraction_p50"]
        extra = [float(f) for f in args.flops_extra.split(",") if f.strip()]
        grid = [(b, label) for b in budgets for label in labels]
        grid += [(f, label) for f in extra if f not in budgets for label in labels if not METHODS[label][1]]
        for b, label in grid:
            for seed in seeds:
                t0 = time.perf_counter()
                row: dict[str, Any] = {"budget": b, "method": label, "seed": seed}
                try:
                    plan, timing = choose(label, b, seed, env, args, tmp)
                    row["search_seconds"] = round(time.perf_counter() - t0, 1)
                    row["top1"] = round(finetune_top1(plan, seed, env, args), 3)
                    row.update(timing)
                except Exception as e:  # noqa: BLE001 - a failed run is recorded, the others go on
                    row["error"] = f"{type(e).__name__}: {e}"
                row["seconds"] = round(time.perf_counter() - t0, 1)
                result["runs"].append(row)
                print({k: v for k, v in row.items() if k != "counts"}, flush=True)
                atomic_write_json(args.out, result)
        summary = summarize(result["runs"], sorted({b for b, _ in grid}, reverse=True), labels)
        for srow in summary:
            srow["reachable_at_the_multiple"] = bool(srow["budget"] * 1.05 >= floor_t["latency_fraction_p50"])
        result["summary"] = summary
        result["seconds"] = round(time.perf_counter() - t_all, 1)
        atomic_write_json(args.out, result)
        plot(result, Path(args.out).with_suffix(".png"))
    for s in summary:
        print(s)


if __name__ == "__main__":
    main()
