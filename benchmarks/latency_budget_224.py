"""Latency budgets on 224-pixel models: what a latency budget reaches against FLOPs-driven plans.

For untrained torchvision ResNet-18, MobileNetV2 and EfficientNet-B0 at 3x224x224 (latency does
not depend on the weights), on the target's runtime settings (ONNX Runtime provider, threads,
optimisation level, batch), for each budget ``b`` (a fraction of the original's latency):

* ``halp`` and ``l1-uniform`` under the target's latency model (:mod:`compressor.latency`), asked
  for ``b`` as predicted latency;
* ``l1-uniform`` by FLOPs at the FLOPs the latency-aware plan reached (equal FLOPs), and at ``b``
  as a FLOPs fraction (what a user without a latency model asks for).

Every plan is slimmed with the graph engine, exported with the target's export options and timed
interleaved with the original (alternating blocks, so load from other processes falls on both);
the fraction is the slim model's p50 over the original's in the same timing. The latency model's
predicted fraction sits next to it (its error), and so does the predicted floor (every group at one
channel). No fine-tuning: this measures where each plan lands, not its accuracy.

    python benchmarks/latency_budget_224.py                        # ~15 min on 2 shared cores
    python benchmarks/latency_budget_224.py --models resnet18 --budgets 0.5

Writes benchmarks/results/latency_budget_224.json.
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

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from machine_info import code_version, machine_info  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "latency_budget_224.json"
MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0")
SHAPE = (3, 224, 224)


def plans_for_budget(env: dict[str, Any], b: float) -> list[tuple[str, Any]]:
    """(label, plan) for one budget: latency-aware first, then FLOPs-driven at equal FLOPs and at b."""
    from compressor.methods import MethodContext, get_method
    from compressor.methods.spec import CostBudget

    lm, m, model, graph = env["lm"], env["multiple"], env["model"], env["graph"]
    out: list[tuple[str, Any]] = []
    for name in ("halp", "l1-uniform"):
        budget = CostBudget("latency", b, lm.fraction, snap=lambda c: lm.snap(c, m), model=lm)
        ctx = MethodContext(progress=False, budget=budget)
        plan = get_method(name)(model, graph, flops=b, seed=0, context=ctx, multiple=m)
        out.append((f"{name} by latency", plan))
    flops_eq = graph.cost(out[0][1]).macs / graph.full.macs  # halp's FLOPs
    l1 = get_method("l1-uniform")
    out.append(("l1-uniform by FLOPs, equal FLOPs", l1(model, graph, flops=flops_eq, seed=0, multiple=m)))
    out.append(("l1-uniform by FLOPs = budget", l1(model, graph, flops=b, seed=0, multiple=m)))
    return out


def measure(env: dict[str, Any], plan: Any, tmp: Path, seconds: float) -> dict[str, Any]:
    """Slim, export and time interleaved with the original."""
    from compressor.export import export_onnx, measure_latency
    from compressor.graph import slim

    target, graph = env["target"], env["graph"]
    small = slim(env["model"], plan, graph=graph).eval()
    path = tmp / "slim.onnx"
    export_onnx(small, path, input_shape=(1, *SHAPE), opset=int(target.export.opset), dynamic_batch=False)
    lat = measure_latency([env["orig_onnx"], path], target=target, time_budget_s=seconds)["models"]
    counts = env["lm"].plan_counts(plan)
    return {
        "flops": round(graph.cost(plan).macs / graph.full.macs, 4),
        "predicted_fraction": round(env["lm"].fraction(counts), 4),
        "measured_fraction_p50": round(lat[1]["p50"] / lat[0]["p50"], 4),
        "original_p50_ms": round(lat[0]["p50"], 3),
        "slim_p50_ms": round(lat[1]["p50"], 3),
    }


def run_model(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch
    import torchvision

    from compressor.export import export_onnx
    from compressor.graph import build_graph
    from compressor.latency import build_latency_model
    from compressor.targets import load_target

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    graph = build_graph(model, input_shape=(1, *SHAPE))
    target = load_target(args.target)
    m = int(target.export.channel_multiple)
    t0 = time.perf_counter()
    lm = build_latency_model(model, graph, target, SHAPE, multiple=m, progress=True)
    orig = tmp / f"{name}.onnx"
    export_onnx(model, orig, input_shape=(1, *SHAPE), opset=int(target.export.opset), dynamic_batch=False)
    env = dict(model=model, graph=graph, target=target, lm=lm, multiple=m, orig_onnx=orig)
    row: dict[str, Any] = {
        "model": name,
        "latency_model": {
            "layers": len(lm.layers),
            "cache_hit": lm.info.get("cache_hit"),
            "build_seconds": round(time.perf_counter() - t0, 1),
            "floor_fraction": round(lm.fraction({g.name: 1 for g in graph.prunable}), 4),
        },
        "budgets": [],
    }
    for b in args.budgets:
        entry: dict[str, Any] = {"budget": b, "plans": []}
        try:
            for label, plan in plans_for_budget(env, b):
                entry["plans"].append({"plan": label, **measure(env, plan, tmp, args.seconds)})
                print(name, b, entry["plans"][-1], flush=True)
        except Exception as e:  # noqa: BLE001 - recorded; the other budgets go on
            entry["error"] = f"{type(e).__name__}: {e}"
            print(name, b, entry["error"], flush=True)
        row["budgets"].append(entry)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--budgets", default="0.7,0.5,0.35")
    ap.add_argument("--target", default="mobile")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing window per pair")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    args.budgets = [float(b) for b in args.budgets.split(",")]
    import onnxruntime

    from compressor.io import atomic_write_json
    from compressor.targets import load_target

    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "latency_budget_224",
        "code": code_version(),
        "settings": {
            "models": args.models.split(","),
            "budgets": args.budgets,
            "target": args.target,
            "input_shape": list(SHAPE),
            "seconds": args.seconds,
        },  # fmt: skip
        "machine": machine_info(
            "shared 2-core machine (other jobs running): latency timings are noisy",
            onnxruntime=onnxruntime.__version__,
            target_runtime=load_target(args.target).to_dict()["runtime"],
        ),
        "results": [],
    }
    with tempfile.TemporaryDirectory() as td:
        for name in args.models.split(","):
            result["results"].append(run_model(name, args, Path(td)))
            atomic_write_json(args.out, result)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
