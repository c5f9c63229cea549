"""How well does the latency model predict? Prediction error against measured end-to-end latency.

For each model, the target's latency model (:mod:`compressor.latency`) is built (each conv and
linear layer timed alone over its channel grid, then the scale of the tables, the element term
and the call's cost fitted on the full model, the most-pruned plan and a few random plans), then
``--plans`` other random plans (each group keeps a uniform fraction in [0.2, 1] of its channels,
on the widths a latency-aware search keeps: multiples of the target's multiple and the runtime's
channel block, snapped to the runtime's steps as the searches do; ``--plan-multiple M``: raw plans
on M instead) are slimmed, exported and timed end to end with the
target's runtime settings (``--rounds`` rounds over all plans and the full model, a fresh session
each, ``--seconds`` per plan in all; the 10th percentile of the runs, as the table: the unloaded
latency), and compared with the prediction. Goal: median absolute error <= 10%.

Two errors are reported: of the latency in ms (``error``), and of the latency as a fraction of
the full model's (``fraction_error``: predicted fraction against the plan's time over the full
model's, timed in the same rounds). The second is what a ``--latency F`` budget uses and is free
of the machine's drift between building the table and timing the plans (on a shared machine the
same model's latency moved by 25% within minutes).

Models: both MNIST demos (examples/resnet_mnist.pt and examples/mbconv_mnist.pt), and untrained torchvision ResNet-18
and MobileNetV2 at ``--size`` (default 112: at 224 a shared 2-core machine cannot time 20 plans
of each in a few minutes; pass --size 224 for the full size).

    python benchmarks/latency_model.py                                  # ~10 minutes on 2 cores
    python benchmarks/latency_model.py --models demo --plans 20
    python benchmarks/latency_model.py --size 224 --max-points 8 --seconds 1.0
    python benchmarks/latency_model.py --threads 1 --clock thread_cpu   # steady on a loaded machine
    python benchmarks/latency_model.py --plan-multiple 8 --out benchmarks/results/latency_model_x8.json

Writes benchmarks/results/latency_model.json (after each model).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from machine_info import machine_info  # noqa: E402

#: The full model is timed before every this many plans (the reference of the measured fractions).
FULL_EVERY = 5

OUT = ROOT / "benchmarks" / "results" / "latency_model.json"


def load(name: str, size: int) -> tuple[Any, tuple[int, int, int]]:
    """(model in eval mode, input C,H,W)."""
    import torch

    torch.manual_seed(0)
    if name == "demo":
        from compressor.checkpoint import load_checkpoint

        m, _ = load_checkpoint(ROOT / "examples" / "resnet_mnist.pt")
        return m.eval(), (1, 28, 28)
    if name == "mbconv_demo":
        from compressor.checkpoint import load_checkpoint

        m, meta = load_checkpoint(ROOT / "examples" / "mbconv_mnist.pt")
        return m.eval(), tuple(meta.get("input_shape") or (1, 28, 28))  # type: ignore[return-value]
    import torchvision

    m = getattr(torchvision.models, name)(weights=None)
    return m.eval(), (3, size, size)


def run_model(name: str, args: argparse.Namespace, target: Any) -> dict[str, Any]:
    from compressor.graph import build_graph
    from compressor.latency import build_latency_model, grid_step, measure_plans, random_counts

    model, shape = load(name, args.size)
    graph = build_graph(model, input_shape=(1, *shape))
    t0 = time.perf_counter()
    lm = build_latency_model(
        model, graph, target, shape, max_points=args.max_points, seconds_per_point=args.seconds_per_point,
        calib_plans=args.calib_plans, cache=args.cache, progress=True, clock=args.clock,
    )  # fmt: skip
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(1000)
    # default: the widths a latency-aware search keeps (on the target's multiple and the runtime's
    # block, snapped: between the block's steps channels cost nothing, and the search raises them);
    # --plan-multiple M: raw random plans on M (what a FLOPs-driven search may keep)
    tm = int(target.export.channel_multiple)
    m = args.plan_multiple or grid_step(tm, lm.block)
    plans = [random_counts(lm.sizes, rng, m) for _ in range(args.plans)]
    if not args.plan_multiple:
        plans = [lm.snap(c, tm) for c in plans]
    # the full model is timed in the same rounds as the plans, before every FULL_EVERY plans and
    # at the end: the measured fraction of each plan is taken against the median of those timings
    # (free of the machine's drift between the calibration and now, and of one slow timing of the
    # reference, which would shift every plan's fraction at once); their spread is the noise.
    # The most-pruned plan a search at the target's multiple reaches is timed too: its floor
    floor = lm.floor_counts(tm)
    order: list[dict[str, int]] = []
    where: list[int] = []  # index of each plan (and then the floor) in the timed order
    for i, c in enumerate([*plans, floor]):
        if i % FULL_EVERY == 0:
            order.append({})
        where.append(len(order))
        order.append(c)
    order.append({})
    timed = measure_plans(
        model, graph, order, target, shape, seconds=args.seconds, clock=args.clock, rounds=args.rounds
    )  # fmt: skip
    fulls = [t for c, t in zip(order, timed, strict=True) if not c]
    full_first, full_again = fulls[0], fulls[-1]
    full_now = float(np.median(fulls))  # the reference
    measured = [timed[j] for j in where]
    floor_ms = measured.pop()
    rows = []
    for i, (counts, meas) in enumerate(zip(plans, measured, strict=True)):
        pred = lm.predict_ms(counts)
        err = (pred - meas) / meas
        frac, meas_frac = lm.fraction(counts), meas / full_now
        ferr = (frac - meas_frac) / meas_frac
        rows.append({"plan": i, "predicted_ms": round(pred, 5), "measured_ms": round(meas, 5), "error": round(err, 4),
                     "predicted_fraction": round(frac, 4), "measured_fraction": round(meas_frac, 4),
                     "fraction_error": round(ferr, 4)})  # fmt: skip
        print(f"{name} plan {i}: predicted {pred:.4f} ms, measured {meas:.4f} ms, error {err:+.1%}; "
              f"fraction {frac:.3f} vs {meas_frac:.3f}, error {ferr:+.1%}", flush=True)  # fmt: skip
    errs = np.abs([r["error"] for r in rows])
    ferrs = np.abs([r["fraction_error"] for r in rows])
    return {
        "model": name,
        "input_shape": list(shape),
        "layers": len(lm.layers),
        "channel_block": lm.block,
        "plan_multiple": m,
        "plans_snapped": not args.plan_multiple,
        "table_seconds": round(build_s, 1),
        "cache_hit": lm.info.get("cache_hit"),
        "scale": round(lm.scale, 4),
        "per_element_ms": lm.per_element,
        "rest_ms": round(lm.rest, 5),
        "full_measured_ms": round(lm.full_ms, 5),
        "full_measured_with_the_plans_ms": round(full_now, 5),
        "full_measured_again_ms": round(full_again, 5),
        "full_measured_first_ms": round(full_first, 5),
        "noise_full_timed_twice": round(abs(full_again - full_first) / full_now, 4),
        "full_timings_ms": [round(t, 5) for t in fulls],
        "noise_full_spread": round((max(fulls) - min(fulls)) / full_now, 4),
        "floor_predicted_fraction": round(lm.fraction(floor), 4),
        "floor_measured_fraction": round(floor_ms / full_now, 4),
        "calibration": lm.info.get("calibration"),
        "median_abs_error": round(float(np.median(errs)), 4),
        "max_abs_error": round(float(errs.max()), 4),
        "mean_signed_error": round(float(np.mean([r["error"] for r in rows])), 4),
        "median_abs_fraction_error": round(float(np.median(ferrs)), 4),
        "max_abs_fraction_error": round(float(ferrs.max()), 4),
        "mean_signed_fraction_error": round(float(np.mean([r["fraction_error"] for r in rows])), 4),
        "plans": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,mbconv_demo,resnet18,mobilenet_v2")
    ap.add_argument("--target", default="mobile")
    ap.add_argument("--size", type=int, default=112, help="input H=W of the torchvision models")
    ap.add_argument("--plans", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=1.5, help="timing of each plan end to end (all rounds)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds over all plans (a fresh session each)")
    ap.add_argument("--seconds-per-point", type=float, default=0.05, help="timing of each table point")
    ap.add_argument("--max-points", type=int, default=6, help="grid points per width axis")
    ap.add_argument("--calib-plans", type=int, default=6)
    ap.add_argument(
        "--plan-multiple", type=int, default=0,
        help="raw random plans on this multiple (default 0: on the target's multiple and the runtime's "
        "channel block, snapped to the runtime's steps: the widths a latency-aware search keeps)",
    )  # fmt: skip
    ap.add_argument("--cache", default=None, help="latency table cache folder (default ~/.cache/compressor)")
    ap.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "thread_cpu"),
        help="thread_cpu (needs --threads 1): CPU time of the calling thread, steady on a loaded machine",
    )
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the target's)")
    ap.add_argument(
        "--out", default=None, help="default: results/latency_model.json, _thread_cpu.json for that clock"
    )
    args = ap.parse_args()
    if args.out is None:
        args.out = str(OUT if args.clock == "wall" else OUT.with_name(f"latency_model_{args.clock}.json"))
    if args.clock == "thread_cpu" and args.threads != 1:
        ap.error("--clock thread_cpu needs --threads 1 (ONNX Runtime then runs on the calling thread)")

    from compressor.io import atomic_write_json
    from compressor.targets import load_target

    target = load_target(args.target, **({"intra_op_threads": args.threads} if args.threads else {}))
    import onnxruntime

    result: dict[str, Any] = {
        "benchmark": "latency_model",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": machine_info(
            "shared 2-core machine (other jobs running): timings are noisy",
            onnxruntime=onnxruntime.__version__,
            target_runtime=target.to_dict()["runtime"],
        ),
        "models": [],
    }
    for name in args.models.split(","):
        result["models"].append(run_model(name.strip(), args, target))
        atomic_write_json(args.out, result)
    for r in result["models"]:
        print(f"{r['model']}: median |error| {r['median_abs_error']:.1%}, max {r['max_abs_error']:.1%}; "
              f"of the fraction {r['median_abs_fraction_error']:.1%}, max {r['max_abs_fraction_error']:.1%}; "
              f"the full model timed twice differed by {r['noise_full_timed_twice']:.1%}; "
            f"floor predicted {r['floor_predicted_fraction']:.3f}, measured {r['floor_measured_fraction']:.3f}; "
              f"table {r['table_seconds']} s")  # fmt: skip


if __name__ == "__main__":
    main()
