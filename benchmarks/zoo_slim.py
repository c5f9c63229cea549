"""l1-uniform at 50% FLOPs over the whole torchvision classification zoo, beside Torch-Pruning.

For every model: success, MACs/params before and after, groups found and frozen, ``rel_err``
(graph.verify: the max error of the slimmed model against the masked original, relative to the
output scale), and the time to trace+group and to slim.
Torch-Pruning (``pip install torch-pruning``; a benchmark-only dependency, never imported by
the package) prunes the same model with L1 magnitude at a channel ratio of 0.3 (about half
the FLOPs), timed the same way: building its dependency graph, then pruning.

    python benchmarks/zoo_slim.py [--models resnet50,mobilenet_v2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine_info import machine_info  # noqa: E402

from compressor.graph import build_graph, calibrate_bn, count, slim  # noqa: E402

TRANSFORMERS = ("vit_", "swin_", "maxvit")
#: A slim model counts as verified when graph.verify() (max error relative to the output scale)
#: is below this.
REL_TOL = 1e-4


def input_size(name: str) -> int:
    if name.startswith(("vit_", "maxvit")):
        return 224
    if name.startswith("inception"):
        return 96
    return 64


def ours(model: torch.nn.Module, shape: tuple[int, ...]) -> dict:
    t0 = time.perf_counter()
    graph = build_graph(model, input_shape=shape)
    t1 = time.perf_counter()
    plan = graph.plan_from_counts(graph.counts_for_flops(0.5), method="l1-uniform")
    t2 = time.perf_counter()
    small = slim(model, plan, graph=graph)
    t3 = time.perf_counter()
    rel_err = graph.verify(small, plan, [torch.randn(2, *shape[1:])])  # relative to the output scale
    before, after = count(model, shape), count(small, shape)
    return {
        "ok": bool(rel_err < REL_TOL),
        "macs_before": before.macs,
        "macs_after": after.macs,
        "flops_ratio": after.macs / before.macs,
        "params_before": before.params,
        "params_after": after.params,
        "groups": len(graph.groups),
        "prunable_groups": len(graph.prunable),
        "frozen_groups": len(graph.frozen),
        "frozen_reasons": sorted({g.reason for g in graph.frozen if g.reason})[:5],
        "rel_err": rel_err,
        "trace_group_s": t1 - t0,
        "plan_s": t2 - t1,
        "slim_s": t3 - t2,
        "total_s": t3 - t0,
    }


def torch_pruning(model: torch.nn.Module, shape: tuple[int, ...]) -> dict:
    try:
        import torch_pruning as tp
    except ImportError:
        return {"ok": False, "error": "torch-pruning not installed"}
    x = torch.randn(shape)
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
    try:
        t0 = time.perf_counter()
        pruner = tp.pruner.MagnitudePruner(
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=0.3,
            ignored_layers=ignored,
        )
        t1 = time.perf_counter()
        pruner.step()
        t2 = time.perf_counter()
        with torch.no_grad():
            model(x)
        macs, params = tp.utils.count_ops_and_params(model, x)
        return {
            "ok": True,
            "build_s": t1 - t0,
            "prune_s": t2 - t1,
            "total_s": t2 - t0,
            "params_after": params,
        }
    except Exception as e:  # Torch-Pruning fails on some models: that is what we measure
        return {"ok": False, "error": f"{type(e).__name__}: {str(e)[:200]}"}


def torch_pruning_subprocess(name: str, size: int, threads: int, timeout: float) -> dict:
    """Torch-Pruning on one model in a child process, so a slow or hanging case is cut off."""
    import subprocess

    cmd = [sys.executable, __file__, "--tp-one", name, "--tp-size", str(size), "--threads", str(threads)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout: more than {timeout:.0f} s"}
    for line in reversed(res.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"ok": False, "error": f"crashed (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:]}"}


def summarize(results: dict[str, dict], *, threads: int, torch_pruning: bool) -> dict:
    """The summary of one run's rows (every key of the committed JSON comes from here)."""
    conv = {n: r for n, r in results.items() if not r["transformer"]}
    errs = [r["ours"]["rel_err"] for r in results.values() if r["ours"].get("ok")]
    summary = {
        "models": len(results),
        "convolutional_models": len(conv),
        "threads": threads,
        "rel_tol": REL_TOL,
        "ours_ok": sum(r["ours"].get("ok", False) for r in results.values()),
        "ours_ok_convolutional": sum(r["ours"].get("ok", False) for r in conv.values()),
        "ours_failed": sorted(n for n, r in results.items() if not r["ours"].get("ok")),
        "max_rel_err": max(errs) if errs else None,
    }
    if torch_pruning:
        tp = {n: r.get("torch_pruning", {}) for n, r in results.items()}
        summary["torch_pruning_ok"] = sum(t.get("ok", False) for t in tp.values())
        summary["torch_pruning_failed"] = sorted(n for n, t in tp.items() if not t.get("ok"))
    return summary


def code_version() -> dict:
    """The compressor version and git commit the rows were measured with (one engine per file)."""
    import subprocess

    import compressor

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"compressor": compressor.__version__, "git_commit": commit or None, "git_dirty": dirty}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-tp", action="store_true")
    ap.add_argument("--tp-timeout", type=float, default=60.0)
    ap.add_argument("--tp-one", default="")
    ap.add_argument("--tp-size", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "zoo_slim.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.tp_one:
        torch.manual_seed(0)
        model = torchvision.models.get_model(args.tp_one, weights=None).eval()
        print(json.dumps(torch_pruning(model, (1, 3, args.tp_size, args.tp_size))))
        return
    names = (
        args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models)
    )
    results = {}
    for name in names:
        s = input_size(name)
        shape = (1, 3, s, s)
        torch.manual_seed(0)
        row: dict = {"input": list(shape), "transformer": name.startswith(TRANSFORMERS)}
        try:
            model = torchvision.models.get_model(name, weights=None).eval()
            calibrate_bn(model, shape)  # healthy activations, so the equivalence error means something
            ours(model, shape)  # warm-up (first-call overheads)
            row["ours"] = ours(model, shape)
        except Exception as e:
            row["ours"] = {
                "ok": False,
                "error": f"{type(e).__name__}: {str(e)[:300]}",
                "trace": traceback.format_exc()[-800:],
            }
        if not args.no_tp:
            row["torch_pruning"] = torch_pruning_subprocess(name, s, args.threads, args.tp_timeout)
        results[name] = row
        o, t = row["ours"], row.get("torch_pruning", {})
        print(
            f"{name:28s} ours={'ok ' if o.get('ok') else 'FAIL'} "
            f"flops={o.get('flops_ratio', float('nan')):.3f} rel_err={o.get('rel_err', float('nan')):.1e} "
            f"frozen={o.get('frozen_groups', '-')}/{o.get('groups', '-')} t={o.get('total_s', float('nan')):.2f}s  "
            f"tp={'ok ' if t.get('ok') else 'FAIL'} t={t.get('total_s', float('nan')):.2f}s",
            flush=True,
        )
        model = None
    summary = summarize(results, threads=args.threads, torch_pruning=not args.no_tp)
    r50 = results.get("resnet50")
    if r50 and r50["ours"].get("ok"):
        # ResNet-50 at 224x224, timed separately (median of 5) for the speed comparison
        model = torchvision.models.resnet50().eval()
        shape = (1, 3, 224, 224)
        ours(model, shape)
        times = sorted(ours(model, shape)["total_s"] for _ in range(5))
        summary["resnet50_224_ours_s"] = times[2]
        if not args.no_tp:
            tps = []
            for _ in range(5):
                torch.manual_seed(0)
                tp_res = torch_pruning(torchvision.models.resnet50().eval(), shape)
                tps.append(tp_res.get("total_s", float("nan")))
            summary["resnet50_224_torch_pruning_s"] = sorted(tps)[2]
            summary["resnet50_speedup_vs_torch_pruning"] = summary["resnet50_224_torch_pruning_s"] / times[2]
    out = {
        "benchmark": "zoo_slim",
        "command": " ".join(["python", *sys.argv]),
        "code": code_version(),
        "machine": machine_info(
            f"{args.threads} torch thread(s) per process; other jobs may have shared the CPU during this run, "
            "so per-model times are noisy (the ResNet-50 comparison is a median of 5)",
            torchvision=torchvision.__version__,
        ),
        "summary": summary,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
