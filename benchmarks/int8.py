"""INT8 on ONNX Runtime, with and without pruning: latency ratios, accuracy drop, file size.

For the two demo models (``examples/resnet_mnist.pt``, ``examples/mbconv_mnist.pt``: accuracy on
mnist5k's test split and latency) and for untrained torchvision ResNet-18, MobileNetV2 and
EfficientNet-B0 at 3x224x224 (latency only; batch-norm statistics randomised so activations
look like a trained network's rather than an identity), six models each:

* ``fp32``: the original, exported for the target (static batch 1);
* ``int8_all``: INT8 of every operator ONNX Runtime quantizes (QDQ, per-channel weights);
* ``int8_auto``: what ``precision="auto"`` ships (:func:`compressor.export.quantize.quantize_onnx`
  with the target's runtime settings and accuracy budget): INT8 of the fastest operator
  selection within the budget if it is at least 10% faster than FP32, else FP32;
* ``slim``: l1-uniform at 50% of the FLOPs with the target's channel multiple, through the public
  API (``compressor.search`` + ``compressor.slim``); the demo models are then fine-tuned
  (``compressor.finetune``, distilled from the original) for ``--epochs`` epochs;
* ``slim_int8_all`` and ``slim_auto``: the same two quantizations of the slimmed model (its
  accuracy budget is what the slimming left of the target's).

All six models of one network are timed interleaved in one run (``measure_latency``), repeated,
and the medians of the p50s give the ratios against the FP32 original. For the demo models,
ONNX Runtime's per-operator profile of the FP32 original and of the slimmed model shows how
much of a run is kernels and how much is per-operator overhead.

    python benchmarks/int8.py                         # ~10 minutes on 2 cores
    python benchmarks/int8.py --quick                 # smoke run, writes to the temp folder
    python benchmarks/int8.py --models resnet_mnist --epochs 1 --repeats 3

Each ratio is also taken within every timing run (the same moment's machine load for all six
models) and reported as median, min and max over the runs.

Writes benchmarks/results/int8.json and int8.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # PyTorch work here is export and fine-tuning

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from machine_info import machine_info  # noqa: E402

#: name -> (checkpoint or torchvision spec, input shape with batch 1)
MODELS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet_mnist": ("examples/resnet_mnist.pt", (1, 1, 28, 28)),
    "mbconv_mnist": ("examples/mbconv_mnist.pt", (1, 1, 28, 28)),
    "resnet18": ("torchvision.models:resnet18", (1, 3, 224, 224)),
    "mobilenet_v2": ("torchvision.models:mobilenet_v2", (1, 3, 224, 224)),
    "efficientnet_b0": ("torchvision.models:efficientnet_b0", (1, 3, 224, 224)),
}
VARIANTS = ("fp32", "int8_all", "int8_auto", "slim", "slim_int8_all", "slim_auto")


def _randomise_bn(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)


class _Random:
    """Unlabelled random-normal batches (calibration and validation inputs of untrained models)."""

    def __init__(self, shape: tuple[int, ...], n: int, batch: int, seed: int) -> None:
        self.shape, self.n, self.batch, self.seed = shape[1:], n, batch, seed

    def __iter__(self) -> Any:
        rng = np.random.default_rng(self.seed)
        for s in range(0, self.n, self.batch):
            yield rng.standard_normal((min(self.batch, self.n - s), *self.shape)).astype(np.float32), None


def _profile(path: Path, shape: tuple[int, ...], target: Any, runs: int = 200) -> dict[str, Any]:
    """ONNX Runtime's own profiler: kernel time per operator type vs the whole run."""
    import onnxruntime as ort

    from compressor.export.runtime import cpu_count

    levels = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}
    so = ort.SessionOptions()
    so.intra_op_num_threads = min(target.runtime.intra_op_threads, cpu_count())
    so.inter_op_num_threads = 1
    level = levels.get(target.runtime.graph_optimization_level, "ORT_ENABLE_ALL")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.enable_profiling = True
    so.profile_file_prefix = str(path.with_suffix(""))
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=so, providers=[target.runtime.provider])
    x = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(runs + 20):
        sess.run(None, x)
    prof = Path(sess.end_profiling())
    events = json.loads(prof.read_text())
    prof.unlink()
    run_events = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    first_timed = run_events[20]["ts"] if len(run_events) > 20 else 0  # the first 20 runs warm up
    events = [e for e in events if e.get("ts", 0) >= first_timed]
    per_op: dict[str, float] = {}
    nodes = 0
    run_us = 0.0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"]
            nodes += 1
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            run_us += e["dur"]
    kernels = sum(per_op.values())
    return {
        "runs": runs,
        "run_us": round(run_us / runs, 2),
        "kernel_us": round(kernels / runs, 2),
        "overhead_fraction": round(1 - kernels / run_us, 3) if run_us else None,
        "kernels_per_run": nodes // runs,
        "kernel_us_by_op": {k: round(v / runs, 2) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
    }


def bench(name: str, args: argparse.Namespace, target: Any, tmp: Path) -> dict[str, Any]:
    import compressor
    from compressor.checkpoint import load_checkpoint
    from compressor.data import load_data
    from compressor.export import export_onnx
    from compressor.export.quantize import (
        SELECTIONS,
        Int8Tolerance,
        calibration_batches,
        onnx_top1,
        quantize_onnx,
        validation_batches,
    )
    from compressor.models import build_model

    spec, shape = MODELS[name]
    demo = spec.endswith(".pt")
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    if demo:
        model, meta = load_checkpoint(ROOT / spec)
        data = load_data(meta["dataset"], meta=meta)
        calib = calibration_batches(data, args.calib_batches, batch_size=32, seed=args.seed)
        val = validation_batches(data, "val")
        test = validation_batches(data, "test")
        tol = None
        methods: tuple[str, ...] = ("minmax", "entropy", "percentile")
    else:
        model = build_model(spec)
        _randomise_bn(model, args.seed)
        data, test = None, None
        calib = _Random(shape, 32, 8, args.seed)
        val = _Random(shape, 32, 8, args.seed + 1)
        # untrained logits have no class margin: their top-1 agreement measures nothing
        tol = Int8Tolerance(min_top1_agreement=0.0, max_rel_error=float("inf"))
        methods = ("minmax",)
    model.eval()
    paths = {v: tmp / f"{name}_{v}.onnx" for v in VARIANTS}
    export_onnx(model, paths["fp32"], input_shape=shape, opset=target.export.opset, dynamic_batch=False)
    common: dict[str, Any] = dict(
        calibration=calib,
        validation=val,
        target=target,
        methods=methods,
        tolerance=tol,
        latency_budget_s=args.seconds,
        latency_repeats=args.gate_repeats,
    )
    decisions: dict[str, Any] = {}

    def quantize(src: str, dst: str, **kw: Any) -> None:
        d = quantize_onnx(paths[src], paths[dst], **common, **kw)
        if not d.passed:
            raise SystemExit(f"{name} {dst}: {d.reason}")
        decisions[dst] = d

    quantize("fp32", "int8_all", precision="int8", selections=SELECTIONS[:1], max_acc_drop=100.0)
    quantize("fp32", "int8_auto", precision="auto")
    plan = compressor.search(
        model,
        method="l1-uniform",
        flops=args.flops,
        input_shape=shape,
        multiple=target.export.channel_multiple,
    )
    slim = compressor.slim(model, plan, input_shape=shape).eval()
    finetune_info = None
    if demo:
        res = compressor.finetune(
            slim,
            data,
            epochs=args.epochs,
            teacher=model,
            lr=0.01,
            seed=args.seed,
            progress=False,
            keep_state=False,
        )
        slim = res.model.eval()
        finetune_info = {
            "epochs": args.epochs,
            "lr": 0.01,
            "teacher": "the original",
            "best_epoch": res.best_epoch,
        }
    export_onnx(slim, paths["slim"], input_shape=shape, opset=target.export.opset, dynamic_batch=False)
    slim_budget = target.budget.max_acc_drop
    if demo:  # the INT8 of the slimmed model gets what slimming left of the budget (on the validation split)
        orig_val = decisions["int8_auto"].fp32["top1"]
        slim_val = onnx_top1(paths["slim"], val, runtime=target.runtime)
        slim_budget = max(0.0, target.budget.max_acc_drop - (orig_val - slim_val))
    quantize("slim", "slim_int8_all", precision="int8", selections=SELECTIONS[:1], max_acc_drop=100.0)
    quantize("slim", "slim_auto", precision="auto", max_acc_drop=slim_budget)
    prep_s = time.perf_counter() - t0

    from compressor.export import measure_latency

    runs = []
    for r in range(args.repeats):
        res = measure_latency(
            [paths[v] for v in VARIANTS], target=target, time_budget_s=args.seconds * 2, seed=r
        )
        runs.append([(m["p50"], m["p90"]) for m in res["models"]])
    med = np.median(np.asarray(runs), axis=0)
    base = float(med[0][0])
    # the ratio within each timing run (same moment, same machine load), then its median/min/max
    ratios = np.asarray([[r[i][0] / r[0][0] for i in range(len(VARIANTS))] for r in runs])
    out: dict[str, Any] = {
        "source": spec,
        "input_shape": list(shape),
        "flops_kept": args.flops,
        "channel_multiple": target.export.channel_multiple,
        "slim_flops_ratio": plan.info.get("flops_achieved"),
        "finetune": finetune_info,
        "prepare_seconds": round(prep_s, 1),
        "variants": {},
    }
    accs = {}
    if test is not None:
        accs = {v: onnx_top1(paths[v], test, runtime=target.runtime) for v in VARIANTS}
    for i, v in enumerate(VARIANTS):
        row: dict[str, Any] = {
            "p50_ms": round(float(med[i][0]), 4),
            "p90_ms": round(float(med[i][1]), 4),
            "latency_ratio": round(float(med[i][0]) / base, 4),
            "latency_ratio_median_of_repeats": round(float(np.median(ratios[:, i])), 4),
            "latency_ratio_min": round(float(ratios[:, i].min()), 4),
            "latency_ratio_max": round(float(ratios[:, i].max()), 4),
            "p50_ms_min": round(float(min(r[i][0] for r in runs)), 4),
            "p50_ms_max": round(float(max(r[i][0] for r in runs)), 4),
            "p50_ms_per_repeat": [round(r[i][0], 4) for r in runs],
            "size_bytes": paths[v].stat().st_size,
        }
        if accs:
            row["test_top1"] = accs[v]
            row["acc_drop"] = round(accs["fp32"] - accs[v], 2)
        if v in decisions:
            d = decisions[v]
            row["precision"] = d.precision
            row["reason"] = d.reason
            row["selection"] = d.chosen.selection if d.chosen else None
            row["calibration"] = d.chosen.calibration if d.chosen else None
            row["kept_fp32"] = d.chosen.excluded if d.chosen else []
            row["candidates"] = [
                {
                    k: c.to_dict()[k]
                    for k in ("name", "top1", "drop", "rel_error", "latency_ratio", "accuracy")
                }
                for c in d.candidates
            ]
            if d.numerics:
                row["numerics"] = {k: d.numerics[k] for k in ("top1_agreement", "rel_error", "against")}
        out["variants"][v] = row
    out["auto_never_slower"] = all(
        out["variants"][v]["latency_ratio"] <= out["variants"][src]["latency_ratio"] * 1.05
        for v, src in (("int8_auto", "fp32"), ("slim_auto", "slim"))
    )
    if demo:
        out["profile"] = {v: _profile(paths[v], shape, target) for v in ("fp32", "slim", "slim_auto")}
    return out


def chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["results"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 1.3]})
    ax = axes[0]
    w = 0.8 / len(VARIANTS)
    for j, v in enumerate(VARIANTS):
        vals = [doc["results"][n]["variants"][v]["latency_ratio"] for n in names]
        bars = ax.bar(np.arange(len(names)) + (j - (len(VARIANTS) - 1) / 2) * w, vals, w, label=v)
        for b, val in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, val, f"{val:.2f}", ha="center", va="bottom", fontsize=6)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(0.5, color="grey", lw=0.6, ls="--")
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("p50 latency / FP32 original (same run)")
    ax.set_title(f"ONNX Runtime CPU, {doc['threads']} threads, batch 1")
    ax.legend(fontsize=7, ncol=3)
    ax = axes[1]
    demos = [n for n in names if "test_top1" in doc["results"][n]["variants"]["fp32"]]
    for j, v in enumerate(VARIANTS[1:]):
        vals = [doc["results"][n]["variants"][v]["acc_drop"] for n in demos]
        ax.bar(np.arange(len(demos)) + (j - 2) * 0.16, vals, 0.16, label=v)
    ax.axhline(doc["max_acc_drop"], color="r", lw=0.8, ls="--", label="budget")
    ax.set_xticks(np.arange(len(demos)), demos)
    ax.set_ylabel("top-1 drop vs FP32 original (points, test split)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument(
        "--target", default="mobile", help="deploy target (runtime settings, budget, channel multiple)"
    )
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2; 0 = the target's)")
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of the slimmed demo models")
    ap.add_argument("--calib-batches", type=int, default=8, help="calibration batches of 32 (demo models)")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per model and repeat")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing runs; medians are reported")
    ap.add_argument("--gate-repeats", type=int, default=3, help="timing repeats of auto's latency gate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 epoch, 2 calibration batches, 2 short repeats (numbers are not for quoting)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "int8.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.calib_batches, args.seconds, args.repeats, args.gate_repeats = 1, 2, 0.3, 2, 1
        if args.out == ap.get_default("out"):
            args.out = str(Path(tempfile.gettempdir()) / "int8_quick.json")

    from compressor.export.onnx_export import versions
    from compressor.export.runtime import machine_note
    from compressor.io import atomic_write, atomic_write_json
    from compressor.targets import load_target

    target = load_target(args.target, intra_op_threads=args.threads or None)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; valid: {', '.join(MODELS)}")
    doc: dict[str, Any] = {
        "benchmark": "int8",
        "target": target.to_dict(),
        "threads": target.runtime.intra_op_threads,
        "max_acc_drop": target.budget.max_acc_drop,
        "settings": vars(args),
        "latency": f"p50 of batch-1 runs, median over {args.repeats} interleaved timing runs of all six models of "
        f"a network; {machine_note(target)}",
        "machine": machine_info(
            "shared with other jobs: absolute times are noisy, interleaved ratios less so", **versions()
        ),
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as tmp:
        for name in names:
            t0 = time.perf_counter()
            r = bench(name, args, target, Path(tmp))
            doc["results"][name] = r
            for v in VARIANTS:
                row = r["variants"][v]
                acc = (
                    f" top-1 {row['test_top1']:.2f}% (drop {row['acc_drop']:+.2f})"
                    if "test_top1" in row
                    else ""
                )
                prec = (
                    f" [{row['precision']}{'/' + row['selection'] if row.get('selection') else ''}]"
                    if "precision" in row
                    else ""
                )
                print(
                    f"{name:16s} {v:14s} p50 {row['p50_ms']:8.3f} ms  x{row['latency_ratio']:.2f}"
                    f"  {row['size_bytes'] / 1024:7.0f} KiB{acc}{prec}",
                    flush=True,
                )
            if "profile" in r:
                for v, p in r["profile"].items():
                    print(
                        f"{name:16s} profile {v:10s}: run {p['run_us']:.0f} us, kernels {p['kernel_us']:.0f} us "
                        f"({p['kernels_per_run']} kernels), overhead {p['overhead_fraction']:.0%}"
                    )
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
            r["seconds"] = round(time.perf_counter() - t0, 1)
            # written after every network: a run stopped early keeps what it measured, marked so
            doc["complete"] = len(doc["results"]) == len(names)
            doc["machine"]["load_average_at_end"] = list(os.getloadavg())
            atomic_write_json(args.out, doc)
            png = Path(args.out).with_suffix(".png")
            atomic_write(png, lambda t: chart(doc, Path(t)))
            print(f"wrote {args.out} and {png} ({len(doc['results'])}/{len(names)} networks)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
