"""Training speed of the demo ResNet on this CPU, single process and under torchrun (2 x 1 thread),
the demo checkpoint's accuracy, and l1-uniform pruning at 50% FLOPs + fine-tuning of the demo.

    python benchmarks/train_speed.py [--epochs 3] [--prune-epochs 5]

Writes benchmarks/results/train_speed.json. Images/s come from fine-tuning epochs of
``compressor.finetune`` itself (data loading, augmentation, forward, backward, step), after a
warm-up epoch; the median and spread of the timed epochs are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing

DEMO = ROOT / "examples" / "resnet_mnist.pt"
RESULTS = ROOT / "benchmarks" / "results" / "train_speed.json"


def _speed_run(epochs: int, batch_size: int, out: str | None) -> dict[str, Any]:
    """Fine-tune a fresh demo-architecture model for ``epochs``; return its history and rank info."""
    import torch

    torch.set_num_threads(1)
    from compressor.checkpoint import load_checkpoint
    from compressor.data import load_data
    from compressor.models import build_model
    from compressor.train import finetune

    _, meta = load_checkpoint(DEMO)
    data = load_data("mnist5k", meta=meta)
    model = build_model(meta["arch"], **meta["arch_kwargs"])
    res = finetune(model, data, epochs=epochs, lr=0.05, batch_size=batch_size, progress=False, device="cpu")
    return {"world_size": res.world_size, "history": res.history, "rank": int(os.environ.get("RANK", "0"))}


def _summary(history: list[dict[str, Any]], warm: bool = True) -> dict[str, Any]:
    """Median and spread of images/s; ``warm`` drops the first (warm-up) epoch."""
    timed = [h["img_per_s"] for h in (history[1:] if warm else history)] or [h["img_per_s"] for h in history]
    return {
        "img_per_s_median": statistics.median(timed),
        "img_per_s_min": min(timed),
        "img_per_s_max": max(timed),
        "epochs_timed": len(timed),
        "epoch_seconds": [round(h["train_time_s"], 2) for h in history],
    }


def _torchrun(epochs: int, batch_size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               __file__, "--worker", str(out), "--epochs", str(epochs), "--batch-size", str(batch_size)]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(
                f"torchrun failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        res = json.loads(out.read_text())
        res["wall_s_including_startup"] = wall
        return res


def _prune_and_finetune(epochs: int, batch_size: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    import compressor
    from compressor.checkpoint import load_checkpoint
    from compressor.data import load_data, make_loader
    from compressor.evaluate import accuracy
    from compressor.graph import count, slim
    from compressor.train import finetune

    model, meta = load_checkpoint(DEMO)
    data = load_data(meta["dataset"], meta=meta)
    shape = (1, *meta["input_shape"])
    test = make_loader(data.test, 256)
    before = accuracy(model, test)["top1"]
    t0 = time.perf_counter()
    plan = compressor.search(model, method="l1-uniform", flops=0.5, input_shape=shape)
    small = slim(model, plan, input_shape=shape)
    search_s = time.perf_counter() - t0
    full, pruned = count(model, shape), count(small, shape)
    after_slim = accuracy(small, test)["top1"]
    results: dict[str, Any] = {
        "method": "l1-uniform",
        "flops_target": 0.5,
        "macs_before": int(full.macs),
        "macs_after": int(pruned.macs),
        "flops_ratio": pruned.macs / full.macs,
        "params_before": int(full.params),
        "params_after": int(pruned.params),
        "search_and_slim_s": search_s,
        "test_top1_before": before,
        "test_top1_after_slim": after_slim,
    }
    for name, teacher in (("finetune", None), ("finetune_distill", model)):
        student = slim(model, plan, input_shape=shape)
        t0 = time.perf_counter()
        res = finetune(student, data, epochs=epochs, lr=0.05, batch_size=batch_size, teacher=teacher,
                       progress=False, device="cpu")  # fmt: skip
        results[name] = {
            "epochs": epochs,
            "seconds": time.perf_counter() - t0,
            "val_top1": res.best_acc,
            "test_top1": res.test_acc,
            "best_epoch": res.best_epoch,
        }
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per speed run (the first is warm-up)")
    ap.add_argument("--batch-size", type=int, default=64, help="per process")
    ap.add_argument("--prune-epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="alternating single/torchrun rounds")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--skip-prune", action="store_true")
    args = ap.parse_args()

    if args.worker:  # one torchrun process
        res = _speed_run(args.epochs, args.batch_size, None)
        if res["rank"] == 0:
            Path(args.worker).write_text(json.dumps(res))
        return 0

    load_start = list(os.getloadavg())
    import torch

    torch.set_num_threads(1)
    from compressor.checkpoint import load_checkpoint
    from compressor.data import load_data, make_loader
    from compressor.evaluate import accuracy

    model, meta = load_checkpoint(DEMO)
    data = load_data(meta["dataset"], meta=meta)
    demo = {
        "checkpoint": str(DEMO.relative_to(ROOT)),
        "arch": meta["arch"],
        "arch_kwargs": meta["arch_kwargs"],
        "size_kib": round(DEMO.stat().st_size / 1024, 1),
        "test_top1": accuracy(model, make_loader(data.test, 256))["top1"],
        "val_top1": accuracy(model, make_loader(data.val, 256))["top1"],
        "train_seconds_recorded": meta.get("train_seconds"),
    }
    print(
        f"demo {demo['checkpoint']}: test top-1 {demo['test_top1']:.2f}%, val {demo['val_top1']:.2f}%",
        flush=True,
    )

    # Alternate single-process and torchrun rounds so that both see the same (shared) machine load.
    singles: list[dict[str, Any]] = []
    ddps: list[dict[str, Any]] = []
    for r in range(args.rounds):
        singles.append(_speed_run(args.epochs, args.batch_size, None))
        print(f"round {r + 1}: single process, 1 thread: {_summary(singles[-1]['history'])['img_per_s_median']:.0f} img/s",
              flush=True)  # fmt: skip
        ddps.append(_torchrun(args.epochs, args.batch_size))
        print(f"round {r + 1}: torchrun 2 x 1 thread (gloo): {_summary(ddps[-1]['history'])['img_per_s_median']:.0f} img/s",
              flush=True)  # fmt: skip
    s1 = _summary([h for run in singles for h in run["history"][1:]], warm=False)
    s2 = _summary([h for run in ddps for h in run["history"][1:]], warm=False)
    s2["wall_s_including_startup"] = [round(run["wall_s_including_startup"], 1) for run in ddps]
    print(f"single process: {s1['img_per_s_median']:.0f} img/s; torchrun 2 x 1: {s2['img_per_s_median']:.0f} img/s "
          f"(medians over {args.rounds} rounds x {args.epochs - 1} timed epochs)", flush=True)  # fmt: skip

    prune: dict[str, Any] | None = None
    prune_error = None
    if not args.skip_prune:
        try:
            prune = _prune_and_finetune(args.prune_epochs, args.batch_size)
            print(
                f"l1-uniform 50% FLOPs: {prune['flops_ratio']:.3f} of MACs, test top-1 {prune['test_top1_before']:.2f}% -> "
                f"{prune['test_top1_after_slim']:.2f}% after slimming -> {prune['finetune']['test_top1']:.2f}% after "
                f"{args.prune_epochs} epochs ({prune['finetune_distill']['test_top1']:.2f}% with distillation)",
                flush=True,
            )
        except (ImportError, AttributeError) as e:
            prune_error = f"l1-uniform / graph engine not available in this checkout: {e}"
            print(prune_error, flush=True)

    result = {
        "benchmark": "train_speed",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "note": "2-core CPU shared with other engineers' concurrent runs: absolute numbers are noisy "
            "and lower than on an idle machine",
            "load_average_at_start": load_start,
            "load_average_at_end": list(os.getloadavg()),
        },
        "model": {
            "arch": meta["arch"],
            "arch_kwargs": meta["arch_kwargs"],
            "input_shape": meta["input_shape"],
        },
        "batch_size_per_process": args.batch_size,
        "single_process_1_thread": s1,
        "torchrun_2_processes_1_thread_each": s2,
        "ddp_speedup": s2["img_per_s_median"] / s1["img_per_s_median"],
        "demo": demo,
        "prune_l1_uniform_50": prune,
        "prune_error": prune_error,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    from compressor.io import atomic_write_json

    atomic_write_json(RESULTS, result)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
