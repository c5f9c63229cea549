"""The per-family markdown table, what stays frozen and why, and the goals, from
``results/timm_zoo.json`` (read only; the numbers are the benchmark's own).

Per family (a timm module): models, verified by ours (outside check passed and the checkpoint
reloaded in a fresh process), verified by Torch-Pruning, ours within 0.50 +- 0.02 of the FLOPs,
the median share of channels ours froze, and the median cold time of each tool. Then every model
ours did not verify or did not bring to the target, with the reason, the frozen reasons counted
over models, and the goals: every family verified, ours verifying more models than Torch-Pruning,
at least 95% of the models on target, ours' median time per model no more than Torch-Pruning's.

    python benchmarks/timm_zoo_tables.py [results/timm_zoo.json]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
TARGET, TOL = 0.5, 0.02


def _ours_ok(o: dict[str, Any]) -> bool:
    return bool(o.get("verified") and (o.get("roundtrip") or {}).get("ok"))


def _on_target(o: dict[str, Any]) -> bool:
    f = o.get("flops_ratio")
    return f is not None and abs(f - TARGET) <= TOL


def _med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f}" if xs else "-"


def _cold(t: dict[str, Any]) -> list[float]:
    c = t.get("cold_s")
    return [c["median"]] if isinstance(c, dict) else []


def family_table(results: dict[str, dict[str, Any]]) -> list[str]:
    fams: dict[str, list[dict[str, Any]]] = {}
    for row in results.values():
        fams.setdefault(row["family"], []).append(row)
    out = [
        "| family | models | ours verified | Torch-Pruning verified | ours on target | ours frozen share (median) "
        "| ours cold s (median) | Torch-Pruning cold s (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fam, rows in sorted(fams.items()):
        o = [r.get("ours", {}) for r in rows]
        t = [r.get("torch_pruning", {}) for r in rows]
        frozen = [x["frozen_channel_share"] for x in o if isinstance(x.get("frozen_channel_share"), float)]
        out.append(
            f"| {fam} | {len(rows)} | {sum(map(_ours_ok, o))} | {sum(bool(x.get('verified')) for x in t)} "
            f"| {sum(map(_on_target, o))} | {_med(frozen)} | {_med([c for x in o for c in _cold(x)])} "
            f"| {_med([c for x in t for c in _cold(x)])} |"
        )
    return out


def misses(results: dict[str, dict[str, Any]]) -> list[str]:
    """Every model ours did not verify or left off target, with why."""
    out = ["| model | family | FLOPs kept | why |", "|---|---|---|---|"]
    for name, row in results.items():
        o = row.get("ours", {})
        if _ours_ok(o) and _on_target(o):
            continue
        if o.get("error"):
            why = o["error"]
        elif not o.get("verified"):
            why = "outside check: " + ((o.get("outside_check") or {}).get("reason") or "nothing pruned")
        elif not (o.get("roundtrip") or {}).get("ok"):
            why = "round trip: " + str((o.get("roundtrip") or {}).get("why", "outputs differ"))
        else:
            top = list((o.get("frozen_reasons") or {}).items())[:2]
            why = "frozen: " + "; ".join(f"{r} ({n} channels)" for r, n in top)
        f = o.get("flops_ratio")
        out.append(f"| {name} | {row['family']} | {'-' if f is None else f'{f:.3f}'} | {why[:160]} |")
    return out


def _kind(reason: str) -> str:
    """A frozen reason without the node or module it names: ``split_1 (split): splits ...``
    and ``input of stages.2.0.attn.conv: channels ...`` become ``splits ...`` / ``channels ...``."""
    head, sep, tail = reason.partition(": ")
    return tail if sep else reason


def frozen_reasons(results: dict[str, dict[str, Any]]) -> list[tuple[str, int]]:
    """Each kind of frozen reason and the number of models (ours) with channels frozen for it."""
    count: dict[str, int] = {}
    for row in results.values():
        kinds = {_kind(r) for r in (row.get("ours", {}).get("frozen_reasons") or {})}
        for k in kinds:
            count[k] = count.get(k, 0) + 1
    return sorted(count.items(), key=lambda kv: -kv[1])


def goals(d: dict[str, Any]) -> list[str]:
    results, s = d["results"], d["summary"]
    fams: dict[str, list[bool]] = {}
    for row in results.values():
        fams.setdefault(row["family"], []).append(_ours_ok(row.get("ours", {})))
    unverified = sorted(f for f, oks in fams.items() if not any(oks))
    n = len(results)
    on = sum(_on_target(r.get("ours", {})) for r in results.values())
    cold, warm = s["median_cold_s"], s["median_warm_s"]
    both = [
        r
        for r in results.values()
        if isinstance(r.get("ours", {}).get("cold_s"), dict)
        and isinstance(r.get("torch_pruning", {}).get("cold_s"), dict)
    ]

    def paired(kind: str) -> tuple[float, float, float] | None:
        rows = [
            r
            for r in both
            if isinstance(r["ours"].get(kind), dict) and isinstance(r["torch_pruning"].get(kind), dict)
        ]
        if not rows:
            return None
        o = [r["ours"][kind]["median"] for r in rows]
        t = [r["torch_pruning"][kind]["median"] for r in rows]
        return (
            statistics.median(o),
            statistics.median(t),
            statistics.median(a / b for a, b in zip(o, t, strict=True)),
        )

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    def le(a: float | None, b: float | None) -> bool:
        return a is not None and b is not None and a <= b

    return [
        f"- every family verified (at least one model): {len(fams) - len(unverified)} of {len(fams)} "
        f"{verdict(not unverified)}" + (f" (not: {', '.join(unverified)})" if unverified else ""),
        f"- ours verified {s['ours_verified']} of {n}, Torch-Pruning {s['torch_pruning_verified']}: "
        f"{verdict(s['ours_verified'] > s['torch_pruning_verified'])}",
        f"- within {TARGET:.2f} +- {TOL} of the FLOPs: {on} of {n} ({100 * on / max(n, 1):.1f}%, goal 95%) "
        f"{verdict(on >= 0.95 * n)}",
        f"- median time per model, cold: ours {cold['ours']:.3f} s, Torch-Pruning {cold['torch_pruning']:.3f} s "
        f"{verdict(le(cold['ours'], cold['torch_pruning']))}; warm: ours {warm['ours']:.3f} s, "
        f"Torch-Pruning {warm['torch_pruning']:.3f} s {verdict(le(warm['ours'], warm['torch_pruning']))}",
    ] + [
        f"  - on the {len(both)} models both tools slimmed, {kind[:4]}: ours {p[0]:.3f} s, Torch-Pruning "
        f"{p[1]:.3f} s, median ratio ours / Torch-Pruning {p[2]:.2f} {verdict(p[0] <= p[1])}"
        for kind in ("cold_s", "warm_s")
        if (p := paired(kind)) is not None
    ]


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "timm_zoo.json"
    d = json.loads(path.read_text())
    s = d["summary"]
    print(f"{s['models']} models, {s['families']} families; code {d['code']['git_commit'][:10]}\n")
    print("\n".join(family_table(d["results"])))
    print("\nNot verified or not on target:\n")
    print("\n".join(misses(d["results"])))
    print("\nWhy channels stay frozen (models with channels frozen for the reason, node names removed):\n")
    for r, k in frozen_reasons(d["results"])[:15]:
        print(f"- {k}: {r}")
    print("\nGoals:\n")
    print("\n".join(goals(d)))


if __name__ == "__main__":
    main()
