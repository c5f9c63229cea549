"""The timm zoo slimmed to 50% of its FLOPs by compressor and by Torch-Pruning, each checked
from the outside, each timed the same way.

Every model of :data:`compressor.testing.zoo_check.TIMM_MODELS` (every convolutional family of
``timm.list_models()`` and the convolutional hybrids, at a small input) is built without
pretrained weights and given random weights (:func:`~compressor.testing.outside_check.randomize`,
so no output is identically zero). Then, in **worker processes** (``OMP_NUM_THREADS=1``, one
torch thread, a per-model timeout):

* **ours**: l1-uniform at 50% of the FLOPs (trace + group, plan, slim);
* **Torch-Pruning** (``pip install torch-pruning``, 1.6.x; a benchmark-only dependency):
  ``MetaPruner`` with L1 magnitude importance, the classifier ignored, its channel ratio
  bisected (untimed) so that it lands near 50% of the FLOPs too (dependency graph + step).

Both slim models go through the same :func:`~compressor.testing.outside_check.outside_check`;
ours also through a checkpoint round trip (saved, reloaded in a fresh process, outputs
compared; Torch-Pruning has no architecture-as-data checkpoint). Timing is fair: each tool is
timed **cold** (its first call in a fresh process; ``--cold-reps`` fresh processes) and
**warm** (``--warm-reps`` further calls in the process), medians with min/max.

    python benchmarks/timm_zoo.py [--models resnet18,efficientnet_b0] [--cold-reps 5] [--warm-reps 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

TARGET = 0.5


def zoo_table(zoo: str) -> tuple[str, dict[str, tuple[str, int, dict[str, Any]]]]:
    """The architecture prefix and the models (name -> family, input size, kwargs) of a zoo."""
    if zoo == "timm":
        from compressor.testing.zoo_check import TIMM_MODELS

        return "timm:", TIMM_MODELS
    if zoo == "torchvision":
        from compressor.testing.zoo_check import torchvision_models

        return "torchvision.models:", torchvision_models()
    raise SystemExit(f"unknown zoo {zoo!r}: timm or torchvision")


# --------------------------------------------------------------------------------------- workers
def _build(zoo: str, name: str) -> tuple[Any, tuple[int, ...], dict[str, Any], str]:
    from compressor.models import build_model
    from compressor.testing.outside_check import randomize

    prefix, table = zoo_table(zoo)
    _family, size, kwargs = table[name]
    shape = (1, 3, size, size)
    model = build_model(prefix + name, **kwargs)
    randomize(model, shape, seed=0)
    return model, shape, kwargs, prefix + name


def _classifier(model: Any) -> list[Any]:
    """The classifier Torch-Pruning is told to ignore: timm's ``get_classifier()``, else the
    last Linear layer."""
    import torch

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, torch.nn.Module) and next(head.parameters(), None) is not None:
        return [head]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1:]


def _stats(xs: list[float]) -> dict[str, float | int]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _tp_prune(model: Any, shape: tuple[int, ...], ratio: float) -> tuple[Any, float]:
    """Torch-Pruning on ``model`` (in place) at channel ratio ``ratio``; returns (model, seconds)."""
    import torch
    import torch_pruning as tp

    x = torch.randn(shape)
    ignored = _classifier(model)
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=ignored,
    )
    pruner.step()
    return model, time.perf_counter() - t0


def _tp_ratio(model: Any, shape: tuple[int, ...], full_macs: int) -> tuple[float, list[float]]:
    """The channel ratio at which Torch-Pruning lands nearest 50% of the FLOPs (bisection on
    copies, untimed), and the FLOPs ratios it tried."""
    from compressor.graph import count

    lo, hi, best, tried = 0.0, 0.95, (1.0, 0.0), []
    r = 1 - TARGET**0.5
    for _ in range(6):
        m, _s = _tp_prune(copy.deepcopy(model), shape, r)
        f = count(m, shape).macs / full_macs
        tried.append(f)
        if abs(f - TARGET) < abs(best[0] - TARGET):
            best = (f, r)
        if abs(f - TARGET) <= 0.01:
            break
        lo, hi = (r, hi) if f > TARGET else (lo, r)
        r = (lo + hi) / 2
    return best[1], tried


def worker(zoo: str, name: str, tool: str, warm_reps: int, full: bool) -> dict[str, Any]:
    """One model, one tool, in this (fresh) process: the cold call, then (``full``) the warm
    calls, the outside check, FLOPs and, for ours, the checkpoint round trip."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    from compressor.graph import count
    from compressor.testing.outside_check import outside_check
    from compressor.testing.zoo_check import engine_slim, roundtrip

    model, shape, kwargs, arch = _build(zoo, name)
    row: dict[str, Any] = {"tool": tool}
    if tool == "ours":
        res = engine_slim(model, shape, TARGET)
        row["cold_s"] = res.total_s
        if not full:
            return row
        row["warm_s"] = _stats([engine_slim(model, shape, TARGET).total_s for _ in range(warm_reps)])
        small = res.small
        row.update(
            flops_ratio=res.flops_ratio,
            groups=res.groups,
            prunable_groups=res.prunable_groups,
            frozen_groups=res.frozen_groups,
            frozen_channel_share=res.frozen_channel_share,
            frozen_reasons=dict(list(res.frozen_reasons.items())[:6]),
        )
    else:
        full_macs = count(model, shape).macs
        ratio, tried = (1 - TARGET**0.5, []) if not full else _tp_ratio(model, shape, full_macs)
        small, secs = _tp_prune(copy.deepcopy(model), shape, ratio)
        row["cold_s"] = secs
        if not full:
            return row
        row["warm_s"] = _stats([_tp_prune(copy.deepcopy(model), shape, ratio)[1] for _ in range(warm_reps)])
        row.update(ratio=ratio, ratios_tried_flops=tried, flops_ratio=count(small, shape).macs / full_macs)
    chk = outside_check(model, small, input_shape=shape)
    row["outside_check"] = {
        k: getattr(chk, k)
        for k in ("ok", "error", "reason", "output_scale", "nonzero_fraction", "layers_pruned", "precision")
    }
    row["verified"] = bool(chk.ok and chk.layers_pruned > 0 and chk.error > 0.0)
    if tool == "ours":
        row["roundtrip"] = roundtrip(small, arch, shape, arch_kwargs=kwargs)
    return row


def run_worker(name: str, tool: str, args: argparse.Namespace, full: bool) -> dict[str, Any]:
    """:func:`worker` in a fresh process (one thread, ``--timeout``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--zoo", args.zoo, "--tool", tool]
    cmd += ["--warm-reps", str(args.warm_reps)]
    if not full:
        cmd.append("--cold-only")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "error": f"timeout: more than {args.timeout:.0f} s"}
    for line in reversed(res.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = [ln for ln in res.stderr.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
    return {"tool": tool, "error": f"crashed (exit {res.returncode}): {tail[0][:300]}"}


def one_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    family, size, kwargs = zoo_table(args.zoo)[1][name]
    row: dict[str, Any] = {"family": family, "input": [1, 3, size, size], "kwargs": kwargs}
    for tool in ("ours", "tp"):
        if tool == "tp" and args.no_tp:
            continue
        r = run_worker(name, tool, args, full=True)
        colds = [r["cold_s"]] if "cold_s" in r else []
        for _ in range(args.cold_reps - 1):
            if "error" in r:
                break
            c = run_worker(name, tool, args, full=False)
            if "cold_s" in c:
                colds.append(c["cold_s"])
        if colds:
            r["cold_s"] = _stats(colds)
        row["ours" if tool == "ours" else "torch_pruning"] = r
    return row


# ---------------------------------------------------------------------------------------- summary
def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per family and overall: verified counts, FLOPs on target, median times, frozen reasons."""
    fam: dict[str, dict[str, Any]] = {}
    reasons: dict[str, int] = {}
    for row in results.values():
        f = fam.setdefault(row["family"], {"models": 0, "ours_verified": 0, "tp_verified": 0, "flops": []})
        f["models"] += 1
        o, t = row.get("ours", {}), row.get("torch_pruning", {})
        f["ours_verified"] += bool(o.get("verified") and o.get("roundtrip", {}).get("ok"))
        f["tp_verified"] += bool(t.get("verified"))
        f["flops"].append([o.get("flops_ratio"), t.get("flops_ratio")])  # ours, Torch-Pruning
        for r in o.get("frozen_reasons") or {}:
            reasons[r] = reasons.get(r, 0) + 1
    rows = list(results.values())

    def times(tool: str, kind: str) -> list[float]:
        return [r[tool][kind]["median"] for r in rows if isinstance(r.get(tool, {}).get(kind), dict)]

    both = [r for r in rows if "cold_s" in r.get("ours", {}) and "cold_s" in r.get("torch_pruning", {})]
    on_target = [
        r
        for r in rows
        if r.get("ours", {}).get("flops_ratio") is not None and abs(r["ours"]["flops_ratio"] - TARGET) <= 0.02
    ]
    return {
        "models": len(rows),
        "families": len(fam),
        "ours_verified": sum(f["ours_verified"] for f in fam.values()),
        "torch_pruning_verified": sum(f["tp_verified"] for f in fam.values()),
        "ours_roundtrip_ok": sum(bool(r.get("ours", {}).get("roundtrip", {}).get("ok")) for r in rows),
        "ours_flops_within_0.02_of_target": len(on_target),
        "median_cold_s": {
            "ours": _med(times("ours", "cold_s")),
            "torch_pruning": _med(times("torch_pruning", "cold_s")),
        },
        "median_warm_s": {
            "ours": _med(times("ours", "warm_s")),
            "torch_pruning": _med(times("torch_pruning", "warm_s")),
        },
        "models_timed_by_both": len(both),
        "per_family": dict(sorted(fam.items())),
        "frozen_reasons_models": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:15]),
    }


def main(zoo: str = "timm", default_out: str = "timm_zoo.json") -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", default=zoo, help=argparse.SUPPRESS)
    ap.add_argument("--models", default="", help="comma-separated subset (default: every model)")
    ap.add_argument("--cold-reps", type=int, default=5, help="fresh processes per tool and model")
    ap.add_argument("--warm-reps", type=int, default=5, help="warm calls per tool and model")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per worker process")
    ap.add_argument("--no-tp", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="models measured at a time (one thread each)")
    ap.add_argument("--out", default=str(HERE / "results" / default_out))
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--tool", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--cold-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        try:
            row = worker(args.zoo, args.worker, args.tool, args.warm_reps, full=not args.cold_only)
        except Exception as e:  # a tool failing on a model is what we measure
            row = {"tool": args.tool, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(json.dumps(row, default=float))
        return
    import timm
    import torchvision
    from machine_info import code_version, machine_info

    code = code_version()
    machine = machine_info(
        "2-core CPU VM shared with other jobs; every worker one thread",
        timm=timm.__version__,
        torchvision=torchvision.__version__,
    )
    table = zoo_table(args.zoo)[1]
    names = args.models.split(",") if args.models else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        sys.exit(f"not in the {args.zoo} table: {', '.join(unknown)}")
    results: dict[str, Any] = {}
    t0 = time.time()
    from compressor import __version__

    def write(done: bool) -> dict[str, Any]:
        """The JSON so far (after every model, so a run cut short keeps what it measured)."""
        out = {
            "benchmark": Path(args.out).stem,
            "complete": done,
            "machine": machine,
            "code": code,
            "settings": {
                "target_flops": TARGET,
                "cold_reps": args.cold_reps,
                "warm_reps": args.warm_reps,
                "timeout_s": args.timeout,
                "jobs": args.jobs,
                "threads": 1,
                "torch_pruning": _tp_version(),
                "compressor": __version__,
                "models_asked": len(names),
                "models_in_table": len(table),
                "wall_s": time.time() - t0,
            },
            "summary": summarize(results),
            "results": results,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".json.tmp")
        tmp.write_text(json.dumps(out, indent=1, default=float))
        tmp.replace(args.out)
        return out

    def report(name: str, row: dict[str, Any]) -> None:
        o, t = row.get("ours", {}), row.get("torch_pruning", {})
        print(
            f"{name:32s} ours {'ok ' if o.get('verified') else 'NO '} f={o.get('flops_ratio', float('nan')):.2f} "
            f"rt={'ok' if o.get('roundtrip', {}).get('ok') else 'NO'} frozen={o.get('frozen_channel_share', float('nan')):.2f} "
            f"| tp {'ok ' if t.get('verified') else 'NO '} f={t.get('flops_ratio', float('nan')):.2f} "
            f"{(o.get('error') or t.get('error') or '')[:60]}",
            flush=True,
        )

    # --jobs models at a time, each tool in its own one-thread worker process (both tools see the
    # same machine load, so their times stay comparable); rows are kept in the table's order
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for name, row in zip(names, pool.map(lambda n: one_model(n, args), names), strict=True):
            results[name] = row
            report(name, row)
            write(done=False)
    out = write(done=True)
    print(json.dumps(out["summary"], indent=1))


def _tp_version() -> str:
    from importlib.metadata import version

    return version("torch-pruning")


if __name__ == "__main__":
    main()
