"""Reports of ``compress run``: ``report.json`` for machines, ``report.html`` for people.

Pure presentation: a report is a plain dict (see :data:`REPORT_FORMAT` and
``compressor.pipeline``); this module turns it into JSON, a single self-contained HTML file
with inline SVG plots, and a rich table for the terminal. It does not know how the numbers
were made.

The dict's keys (all optional except ``status``)::

    status        "passed" | "budget_not_met" | "validation_failed" | "dry_run"
    exit_code     0 / 3 / 4
    message       one line saying what happened
    command       the exact command line
    checkpoint    {path, sha256, arch}
    settings      {target, method, flops, latency_ms, percentile, max_acc_drop, epochs, data, device, seed, ...}
    original      {macs, params, top1, top1_ort, latency: {p50, p90, mean, std, runs, samples: [ms...]}}
    compressed    the same for the compressed model
    budgets       [{name, limit, value, unit, passed, detail}]
    checks        [{name, limit, value, passed, detail}]
    layers        [{name, before, after, frozen}]
    search        {method, candidates: [{id, flops, score, latency_ms, chosen}], chosen, topk: [{id, score, finetuned}]}
    stages        [{name, seconds, status, note}]
    versions      {python, torch, onnx, onnxruntime, onnxsim, ...}
    artifacts     {name: path}
    notes         [str]
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compressor.io import atomic_write_json, atomic_write_text

REPORT_FORMAT = "compressor.report/1"

# Colours (colour-blind safe pair: blue / orange) and neutral greys.
C_BEFORE = "#b8c4d6"
C_AFTER = "#1f6fb4"
C_ORIG = "#7a8699"
C_COMP = "#e07b00"
C_CHOSEN = "#d62728"
C_GRID = "#e4e7ec"
C_TEXT = "#222"


# ----------------------------------------------------------------------------------------------
# Versions and writing
# ----------------------------------------------------------------------------------------------


def collect_versions() -> dict[str, str | None]:
    """Versions of the runtime stack (the report records them so a result can be reproduced)."""
    import importlib.metadata as md
    import platform
    import sys

    out: dict[str, str | None] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": str(os.cpu_count()),
    }
    for dist in ("compressor", "torch", "torchvision", "onnx", "onnxruntime", "onnxsim", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = _module_version(dist)
    return out


def _module_version(name: str) -> str | None:
    import importlib

    try:
        mod = importlib.import_module(name)
    except Exception:
        return None
    v = getattr(mod, "__version__", None)
    return str(v) if v is not None else None


def write_report(report: dict[str, Any], out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into folder ``out`` (each atomically)."""
    out = Path(out)
    report = {"format": REPORT_FORMAT, **{k: v for k, v in report.items() if k != "format"}}
    j = atomic_write_json(out / "report.json", _jsonable(report))
    h = atomic_write_text(out / "report.html", render_html(report))
    return j, h


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only (numpy scalars, tuples, paths -> python / str; NaN -> null)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        try:
            return _jsonable(obj.item())
        except Exception:
            pass
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    return str(obj)


# ----------------------------------------------------------------------------------------------
# Formatting helpers
# ----------------------------------------------------------------------------------------------


def fmt_count(n: float | int | None, unit: str = "") -> str:
    """``4_090_000_000`` -> ``4.09G``."""
    if n is None:
        return "–"
    n = float(n)
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suf}{unit}"
    return f"{n:.4g}{unit}"


def fmt_num(v: Any, digits: int = 2, suffix: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return "–"
        if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1000:
            return f"{int(v)}{suffix}"
        if v != 0 and abs(v) < 10 ** (-digits):
            return f"{v:.2e}{suffix}"
        return f"{v:.{digits}f}{suffix}"
    return str(v)


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    cur: Any = d
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return float(a) / float(b)
    return None


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, original, compressed, change) rows shared by the HTML and terminal tables."""
    o = report.get("original") or {}
    c = report.get("compressed") or {}
    rows: list[tuple[str, str, str, str]] = []

    def ratio_txt(a: Any, b: Any) -> str:
        r = _ratio(b, a)
        return "–" if r is None else f"×{r:.3f}"

    def diff_txt(a: Any, b: Any, unit: str = " pt") -> str:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return f"{b - a:+.2f}{unit}"
        return "–"

    rows.append(
        (
            "FLOPs (MACs)",
            fmt_count(o.get("macs")),
            fmt_count(c.get("macs")),
            ratio_txt(o.get("macs"), c.get("macs")),
        )
    )
    rows.append(
        (
            "Parameters",
            fmt_count(o.get("params")),
            fmt_count(c.get("params")),
            ratio_txt(o.get("params"), c.get("params")),
        )
    )
    rows.append(
        (
            "Top-1 accuracy, PyTorch (%)",
            fmt_num(o.get("top1")),
            fmt_num(c.get("top1")),
            diff_txt(o.get("top1"), c.get("top1")),
        )
    )
    rows.append(
        (
            "Top-1 accuracy, ONNX Runtime (%)",
            fmt_num(o.get("top1_ort")),
            fmt_num(c.get("top1_ort")),
            diff_txt(o.get("top1_ort"), c.get("top1_ort")),
        )
    )
    for q in ("p50", "p90"):
        a, b = _get(o, "latency", q), _get(c, "latency", q)
        rows.append((f"Latency {q} (ms, ONNX Runtime)", fmt_num(a, 3), fmt_num(b, 3), ratio_txt(a, b)))
    if c.get("precision"):
        rows.append(("Precision shipped", "fp32", str(c["precision"]), ""))
    return rows


def _quantize_html(q: dict[str, Any]) -> str:
    """The quantize stage: FP32 vs INT8 (accuracy, latency, size), the decision, the layers kept FP32."""
    f, i = q.get("fp32") or {}, q.get("int8") or {}

    def size(v: Any) -> str:
        return "–" if not isinstance(v, (int, float)) else f"{v / 1024:.1f} KiB"

    rows = [
        ["top-1 validation split (%)", fmt_num(f.get("val_top1")), fmt_num(i.get("val_top1"))],
        ["top-1 test split (%)", fmt_num(f.get("test_top1")), fmt_num(i.get("test_top1"))],
        ["latency p50 (ms)", fmt_num(f.get("p50"), 3), fmt_num(i.get("p50"), 3)],
        ["latency p90 (ms)", fmt_num(f.get("p90"), 3), fmt_num(i.get("p90"), 3)],
        ["file size", size(f.get("size_bytes")), size(i.get("size_bytes"))],
    ]
    parts = [
        "<h2>Precision: FP32 vs INT8</h2>",
        f'<p class="lead">requested <b>{_e(q.get("requested"))}</b>, shipped '
        f"<b>{_e(q.get('precision'))}</b>: {_e(q.get('reason'))}</p>",
        _table(
            ["", "FP32", f"INT8 ({i.get('candidate') or '–'})"], [[_e(c) for c in r] for r in rows], (1, 2)
        ),
    ]
    cands = q.get("candidates") or []
    if cands:
        parts.append("<h3>INT8 candidates</h3>")
        parts.append(
            _table(
                ["candidate", "top-1 (%)", "drop (pt)", "accuracy", "p50 (ms)", "× FP32", "kept FP32"],
                [
                    [
                        _e(c.get("name")),
                        _e(fmt_num(c.get("top1"))),
                        _e(fmt_num(c.get("drop"))),
                        _e(c.get("accuracy")),
                        _e(fmt_num(c.get("latency_p50"), 3)),
                        _e(fmt_num(c.get("latency_ratio"), 2)),
                        _e(len(c.get("excluded") or [])),
                    ]
                    for c in cands
                ],
                num_cols=(1, 2, 4, 5, 6),
            )
        )
    kept = q.get("kept_fp32") or []
    if kept:
        parts.append("<h3>Layers kept in FP32</h3>")
        parts.append(
            _table(
                ["node", "op", "relative error alone", "why"],
                [
                    [
                        _e(k.get("node")),
                        _e(k.get("op_type")),
                        _e(fmt_num(k.get("rel_error"), 4)),
                        _e(k.get("reason")),
                    ]
                    for k in kept
                ],
                num_cols=(2,),
            )
        )
    return "".join(parts)


# ----------------------------------------------------------------------------------------------
# Terminal table
# ----------------------------------------------------------------------------------------------


def render_table(report: dict[str, Any]) -> Any:
    """A rich renderable: before/after and budgets with pass/fail (printed at the end of a run)."""
    from rich.console import Group
    from rich.table import Table

    t = Table(title="compress run: before / after", title_justify="left")
    t.add_column("metric")
    t.add_column("original", justify="right")
    t.add_column("compressed", justify="right")
    t.add_column("change", justify="right")
    for row in summary_rows(report):
        t.add_row(*row)

    b = Table(title="budgets and checks", title_justify="left")
    b.add_column("")
    b.add_column("limit", justify="right")
    b.add_column("reached", justify="right")
    b.add_column("result")
    for item in list(report.get("budgets") or []) + list(report.get("checks") or []):
        ok = item.get("passed")
        res = "[green]pass[/]" if ok else ("[red]FAIL[/]" if ok is False else "[dim]not checked[/]")
        unit = item.get("unit") or ""
        b.add_row(str(item.get("name")), _limit_txt(item) + unit, fmt_value(item.get("value")) + unit, res)
    return Group(t, b)


def fmt_value(v: Any) -> str:
    """Up to 4 significant digits: 0.5, 0.5024, 30, 4.66e-09, -13."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return fmt_num(v)
    if not math.isfinite(v):
        return "–"
    return f"{v:.4g}"


def _limit_txt(item: dict[str, Any]) -> str:
    lim = item.get("limit")
    op = item.get("op", "<=")
    return "–" if lim is None else f"{op} {fmt_value(lim)}"


# ----------------------------------------------------------------------------------------------
# SVG plots (hand-written, no dependencies, crisp at any zoom)
# ----------------------------------------------------------------------------------------------


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = mag * min((m for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.3g}"
    return f"{v:.4g}"


class _Axes:
    """A linear x/y frame inside an SVG of size (w, h)."""

    def __init__(
        self,
        w: int,
        h: int,
        xlim: tuple[float, float],
        ylim: tuple[float, float],
        margin: tuple[int, int, int, int] = (20, 20, 48, 60),
    ) -> None:
        self.w, self.h = w, h
        self.top, self.right, self.bottom, self.left = margin
        self.xticks = nice_ticks(*xlim)
        self.yticks = nice_ticks(*ylim)
        self.x0, self.x1 = min(self.xticks[0], xlim[0]), max(self.xticks[-1], xlim[1])
        self.y0, self.y1 = min(self.yticks[0], ylim[0]), max(self.yticks[-1], ylim[1])
        if self.x1 == self.x0:
            self.x1 = self.x0 + 1
        if self.y1 == self.y0:
            self.y1 = self.y0 + 1

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.w - self.left - self.right)

    def py(self, y: float) -> float:
        return self.h - self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.h - self.top - self.bottom)

    def frame(self, xlabel: str, ylabel: str) -> list[str]:
        p: list[str] = []
        for t in self.yticks:
            y = self.py(t)
            p.append(
                f'<line x1="{self.left}" x2="{self.w - self.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{C_GRID}"/>'
            )
            p.append(
                f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_tick_label(t)}</text>'
            )
        for t in self.xticks:
            x = self.px(t)
            p.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.top}" y2="{self.h - self.bottom}" stroke="{C_GRID}"/>'
            )
            p.append(
                f'<text x="{x:.1f}" y="{self.h - self.bottom + 16}" text-anchor="middle" font-size="11">{_tick_label(t)}</text>'
            )
        p.append(
            f'<rect x="{self.left}" y="{self.top}" width="{self.w - self.left - self.right}" '
            f'height="{self.h - self.top - self.bottom}" fill="none" stroke="#9aa3af"/>'
        )
        p.append(
            f'<text x="{(self.left + self.w - self.right) / 2:.1f}" y="{self.h - 10}" text-anchor="middle" '
            f'font-size="12">{_e(xlabel)}</text>'
        )
        cy = (self.top + self.h - self.bottom) / 2
        p.append(
            f'<text x="14" y="{cy:.1f}" text-anchor="middle" font-size="12" '
            f'transform="rotate(-90 14 {cy:.1f})">{_e(ylabel)}</text>'
        )
        return p


def _svg(w: int, h: int, parts: Sequence[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
        f'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif" fill="{C_TEXT}" '
        f'role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>' + "".join(parts) + "</svg>"
    )


def _legend(x: float, y: float, items: Sequence[tuple[str, str, str]]) -> list[str]:
    """items: (label, colour, shape 'rect'|'dot'|'ring')."""
    p: list[str] = []
    for label, colour, shape in items:
        if shape == "dot":
            p.append(f'<circle cx="{x + 5}" cy="{y - 4}" r="4.5" fill="{colour}" fill-opacity="0.7"/>')
        elif shape == "ring":
            p.append(
                f'<circle cx="{x + 5}" cy="{y - 4}" r="6" fill="none" stroke="{colour}" stroke-width="2.5"/>'
            )
        elif shape == "line":
            p.append(
                f'<line x1="{x}" x2="{x + 12}" y1="{y - 4}" y2="{y - 4}" stroke="{colour}" stroke-width="2" stroke-dasharray="5 3"/>'
            )
        else:
            p.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{colour}"/>')
        p.append(f'<text x="{x + 17}" y="{y}" font-size="12">{_e(label)}</text>')
        x += 24 + 7 * len(label)
    return p


def svg_layers(layers: Sequence[dict[str, Any]], width: int = 900) -> str:
    """Kept channels per layer (channel group): full width in grey, kept in blue, one row each."""
    rows = [r for r in layers if isinstance(r.get("before"), (int, float))]
    if not rows:
        return ""
    label_w = min(260, max(80, 7 * max(len(str(r.get("name"))) for r in rows)))
    bar_h, gap, top = 14, 4, 34
    h = top + len(rows) * (bar_h + gap) + 36
    left, right = label_w + 12, 90
    vmax = max(float(r["before"]) for r in rows) or 1.0
    scale = (width - left - right) / vmax
    p: list[str] = _legend(left, 18, [("channels before", C_BEFORE, "rect"), ("kept after", C_AFTER, "rect")])
    for t in nice_ticks(0, vmax):
        if t > vmax:
            continue
        x = left + t * scale
        p.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{h - 30}" stroke="{C_GRID}"/>')
        p.append(
            f'<text x="{x:.1f}" y="{h - 16}" text-anchor="middle" font-size="11">{_tick_label(t)}</text>'
        )
    for i, r in enumerate(rows):
        y = top + i * (bar_h + gap)
        name = str(r.get("name"))
        short = name if len(name) * 7 <= label_w else "…" + name[-(label_w // 7 - 1) :]
        before = float(r["before"])
        after = float(r.get("after", before) if r.get("after") is not None else before)
        frozen = bool(r.get("frozen"))
        p.append(
            f'<text x="{label_w}" y="{y + bar_h - 3}" text-anchor="end" font-size="11"><title>{_e(name)}</title>{_e(short)}</text>'
        )
        p.append(
            f'<rect x="{left}" y="{y}" width="{before * scale:.1f}" height="{bar_h}" fill="{C_BEFORE}"/>'
        )
        if frozen:
            p.append(
                f'<rect x="{left}" y="{y}" width="{before * scale:.1f}" height="{bar_h}" fill="none" stroke="#888" stroke-dasharray="3 2"/>'
            )
        else:
            p.append(
                f'<rect x="{left}" y="{y}" width="{after * scale:.1f}" height="{bar_h}" fill="{C_AFTER}"/>'
            )
        txt = f"{int(after)}/{int(before)}" + (" frozen" if frozen else "")
        p.append(
            f'<text x="{left + before * scale + 6:.1f}" y="{y + bar_h - 3}" font-size="11">{_e(txt)}</text>'
        )
    p.append(
        f'<text x="{(left + width - right) / 2:.1f}" y="{h - 2}" text-anchor="middle" font-size="12">channels</text>'
    )
    return _svg(width, h, p, "kept channels per layer, before and after")


def svg_scatter(
    points: Sequence[tuple[float, float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    highlight: Sequence[tuple[float, float]] = (),
    highlight_label: str = "chosen",
    vline: tuple[float, str] | None = None,
    labels: Sequence[str] | None = None,
    width: int = 440,
    height: int = 340,
    colour: str = C_AFTER,
    point_label: str = "candidate",
) -> str:
    """A scatter plot; ``highlight`` points get a red ring (the chosen candidate)."""
    pts = [(float(x), float(y)) for x, y in points if _finite(x) and _finite(y)]
    if not pts:
        return ""
    xs = [x for x, _ in pts] + ([vline[0]] if vline else [])
    ys = [y for _, y in pts]
    xr = (min(xs), max(xs))
    yr = (min(ys), max(ys))
    xpad = (xr[1] - xr[0]) * 0.05 or 0.05 * (abs(xr[0]) or 1)
    ypad = (yr[1] - yr[0]) * 0.05 or 0.05 * (abs(yr[0]) or 1)
    ax = _Axes(
        width, height, (xr[0] - xpad, xr[1] + xpad), (yr[0] - ypad, yr[1] + ypad), margin=(34, 20, 48, 64)
    )
    p = ax.frame(xlabel, ylabel)
    if vline:
        x = ax.px(vline[0])
        p.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{ax.top}" y2="{height - ax.bottom}" stroke="#555" stroke-dasharray="5 3"/>'
        )
    for i, (x, y) in enumerate(pts):
        tip = f"<title>{_e(labels[i])}</title>" if labels and i < len(labels) else ""
        p.append(
            f'<circle cx="{ax.px(x):.1f}" cy="{ax.py(y):.1f}" r="4" fill="{colour}" fill-opacity="0.55">{tip}</circle>'
        )
    for x, y in highlight:
        if _finite(x) and _finite(y):
            p.append(
                f'<circle cx="{ax.px(float(x)):.1f}" cy="{ax.py(float(y)):.1f}" r="8" fill="none" stroke="{C_CHOSEN}" stroke-width="2.5"/>'
            )
    leg = [(point_label, colour, "dot")]
    if highlight:
        leg.append((highlight_label, C_CHOSEN, "ring"))
    if vline:
        leg.append((vline[1], "#555", "line"))
    p += _legend(ax.left, 20, leg)
    return _svg(width, height, p, title)


def svg_latency(
    dists: Sequence[tuple[str, Sequence[float], str]],
    *,
    budget: float | None = None,
    budget_label: str = "budget",
    width: int = 900,
    height: int = 300,
) -> str:
    """Overlaid histograms of latency samples (ms), one per model, with p50 marks and the budget."""
    dists = [(n, [float(v) for v in s if _finite(v)], c) for n, s, c in dists]
    dists = [d for d in dists if d[1]]
    if not dists:
        return ""
    allv = sorted(v for _, s, _ in dists for v in s)

    # the range covers the bulk of the runs (a few stalls on a shared machine would squash the
    # histogram); runs beyond it are counted in the caption, and a budget far off scale is an arrow
    def q(f: float) -> float:
        return allv[min(len(allv) - 1, int(f * len(allv)))]

    lo, hi = allv[0], min(q(0.98), max(3 * q(0.5), q(0.75) + 6 * (q(0.75) - q(0.25))) + 1e-9)
    hidden = sum(1 for v in allv if v > hi)
    budget_off = None
    if budget is not None and _finite(budget):
        if budget <= hi + 2 * (hi - lo) + 1e-12:
            lo, hi = min(lo, budget), max(hi, budget)
        else:
            budget_off = budget
            budget = None
    pad = (hi - lo) * 0.05 or max(hi * 0.05, 1e-3)
    lo, hi = max(0.0, lo - pad), hi + pad
    nbins = 40
    bw = (hi - lo) / nbins
    hists = []
    for name, s, c in dists:
        counts = [0] * nbins
        for v in s:
            if v <= hi:
                counts[min(nbins - 1, max(0, int((v - lo) / bw)))] += 1
        hists.append((name, [k / len(s) for k in counts], c, s))
    ymax = max(max(hh) for _, hh, _, _ in hists)
    ax = _Axes(width, height, (lo, hi), (0.0, ymax * 1.1), margin=(34, 20, 48, 64))
    p = ax.frame("latency per batch (ms), ONNX Runtime", "fraction of runs")
    for _name, hh, c, s in hists:
        for i, f in enumerate(hh):
            if f <= 0:
                continue
            x0, x1 = ax.px(lo + i * bw), ax.px(lo + (i + 1) * bw)
            y = ax.py(f)
            p.append(
                f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" height="{ax.py(0) - y:.1f}" '
                f'fill="{c}" fill-opacity="0.55"/>'
            )
        med = sorted(s)[len(s) // 2]
        xm = ax.px(med)
        p.append(
            f'<line x1="{xm:.1f}" x2="{xm:.1f}" y1="{ax.top}" y2="{ax.py(0):.1f}" stroke="{c}" stroke-width="2"/>'
        )
    leg = [(f"{n} (line: p50)", c, "rect") for n, _, c, _ in hists]
    if budget is not None and _finite(budget):
        xb = ax.px(budget)
        p.append(
            f'<line x1="{xb:.1f}" x2="{xb:.1f}" y1="{ax.top}" y2="{ax.py(0):.1f}" stroke="{C_CHOSEN}" stroke-width="2" stroke-dasharray="6 3"/>'
        )
        leg.append((budget_label, C_CHOSEN, "line"))
    if budget_off is not None:
        y = ax.top + 14
        xr = width - ax.right - 6
        p.append(
            f'<text x="{xr}" y="{y}" text-anchor="end" font-size="12" fill="{C_CHOSEN}">'
            f"{_e(budget_label)} → ({_e(_tick_label(budget_off))} ms, off scale)</text>"
        )
    if hidden:
        p.append(
            f'<text x="{width - ax.right - 6}" y="{ax.top + 30}" text-anchor="end" font-size="11" fill="#555">'
            f"{hidden} slowest runs (above {_e(_tick_label(hi))} ms) not shown</text>"
        )
    p += _legend(ax.left, 20, leg)
    return _svg(width, height, p, "latency distributions")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:960px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:22px;margin:0 0 6px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e4e7ec;padding-bottom:4px}
p.lead{margin:4px 0 10px;color:#444}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
pre{background:#f3f4f6;padding:8px 10px;border-radius:4px;white-space:pre-wrap;word-break:break-all;margin:6px 0}
table{border-collapse:collapse;margin:6px 0 4px;font-size:13.5px}
th,td{padding:4px 12px 4px 0;text-align:left;border-bottom:1px solid #eef0f3;vertical-align:top}
th{font-weight:600;color:#444}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.badge{display:inline-block;padding:3px 10px;border-radius:12px;font-weight:600;font-size:13px;color:#fff}
.ok{background:#2e7d32}.bad{background:#c62828}.warn{background:#a15c00}.dim{background:#8a94a6}
.pass{color:#2e7d32;font-weight:600}.fail{color:#c62828;font-weight:600}.na{color:#8a94a6}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid .fig{width:440px}.fig{margin:6px 0}.cap{font-size:12.5px;color:#555;margin:2px 0 10px}
ul.notes{margin:4px 0;padding-left:20px;font-size:13.5px}
footer{margin-top:30px;font-size:12px;color:#777}
"""


def _status_badge(report: dict[str, Any]) -> str:
    st = str(report.get("status", "unknown"))
    cls = {"passed": "ok", "budget_not_met": "warn", "validation_failed": "bad", "dry_run": "dim"}.get(
        st, "dim"
    )
    label = {
        "passed": "all budgets and checks passed",
        "budget_not_met": "budget not met",
        "validation_failed": "validation failed",
        "dry_run": "dry run",
    }.get(st, st)
    code = report.get("exit_code")
    code_txt = f" · exit code {code}" if code is not None else ""
    return f'<span class="badge {cls}">{_e(label)}{_e(code_txt)}</span>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], num_cols: Sequence[int] = ()) -> str:
    """Cells are already-escaped HTML."""
    h = "".join(f'<th class="{"num" if i in num_cols else ""}">{c}</th>' for i, c in enumerate(head))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"num" if i in num_cols else ""}">{c}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _pf(ok: Any) -> str:
    if ok is True:
        return '<span class="pass">pass</span>'
    if ok is False:
        return '<span class="fail">FAIL</span>'
    return '<span class="na">not checked</span>'


#: Line colours of the per-layer latency plot (cycled).
_LINE_COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04")


def svg_latency_table(rows: Sequence[dict[str, Any]], width: int = 900, height: int = 320) -> str:
    """The latency model's table: per layer, its measured latency (ms) against its output channels
    (at its full input width; an input-only layer against its input channels), one line each."""
    lines = []
    for r in rows:
        gi, go, ms = r.get("grid_in") or [], r.get("grid_out") or [], r.get("ms") or []
        if not ms:
            continue
        if len(go) > 1:
            xs, ys = list(go), list(ms[-1])
        elif len(gi) > 1:
            xs, ys = list(gi), [row[0] for row in ms]
        else:
            continue
        if all(_finite(v) for v in [*xs, *ys]):
            lines.append((str(r.get("layer")), xs, ys))
    if not lines:
        return ""
    xmax = max(max(x) for _, x, _ in lines)
    ymax = max(max(y) for _, _, y in lines)
    ax = _Axes(width, height, (0.0, float(xmax)), (0.0, float(ymax) * 1.1), margin=(34, 170, 48, 64))
    p = ax.frame("channels (output; input for a layer with fixed output)", "latency alone (ms)")
    for i, (name, xs, ys) in enumerate(lines):
        c = _LINE_COLOURS[i % len(_LINE_COLOURS)]
        pts = " ".join(f"{ax.px(x):.1f},{ax.py(y):.1f}" for x, y in zip(xs, ys, strict=True))
        p.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="1.8"/>')
        for x, y in zip(xs, ys, strict=True):
            p.append(
                f'<circle cx="{ax.px(x):.1f}" cy="{ax.py(y):.1f}" r="2.5" fill="{c}"><title>{_e(name)}: {x} ch, {y:.4f} ms</title></circle>'
            )
        ly = ax.top + 12 + 15 * i
        if ly < height - ax.bottom:
            p.append(f'<rect x="{width - ax.right + 10}" y="{ly - 9}" width="10" height="10" fill="{c}"/>')
            p.append(f'<text x="{width - ax.right + 25}" y="{ly}" font-size="11">{_e(name[-22:])}</text>')
    return _svg(width, height, p, "latency model: per-layer latency table")


def _search_plots(search: dict[str, Any], settings: dict[str, Any]) -> str:
    parts: list[str] = []
    cands = [
        c for c in (search.get("candidates") or []) if _finite(c.get("flops")) and _finite(c.get("score"))
    ]
    chosen_id = search.get("chosen")
    if cands:
        chosen = [
            (c["flops"], c["score"])
            for c in cands
            if c.get("chosen") or (chosen_id is not None and c.get("id") == chosen_id)
        ]
        tgt = settings.get("flops")
        svg = svg_scatter(
            [(c["flops"], c["score"]) for c in cands],
            xlabel="FLOPs kept (fraction of the original)",
            ylabel=str(search.get("score_label") or "score (%)"),
            title="candidates: score vs FLOPs",
            highlight=chosen,
            vline=(float(tgt), "FLOPs target") if isinstance(tgt, (int, float)) and _finite(tgt) else None,
            labels=[f"#{c.get('id')}: FLOPs {c['flops']:.4f}, score {c['score']:.2f}" for c in cands],
        )
        parts.append(
            f'<div class="fig">{svg}<div class="cap">Every candidate the search scored ({len(cands)}); '
            f"the chosen one is ringed in red.</div></div>"
        )
    topk = [t for t in (search.get("topk") or []) if _finite(t.get("score")) and _finite(t.get("finetuned"))]
    if topk:
        chosen = [
            (t["score"], t["finetuned"])
            for t in topk
            if t.get("chosen") or (chosen_id is not None and t.get("id") == chosen_id)
        ]
        svg = svg_scatter(
            [(t["score"], t["finetuned"]) for t in topk],
            xlabel="adaptive-BN score (%)",
            ylabel="accuracy after short fine-tune (%)",
            title="EagleEye finalists: adaptive-BN score vs fine-tuned accuracy",
            highlight=chosen,
            colour=C_COMP,
            point_label="finalist",
            labels=[f"#{t.get('id')}: score {t['score']:.2f}, fine-tuned {t['finetuned']:.2f}" for t in topk],
        )
        parts.append(
            f'<div class="fig">{svg}<div class="cap">EagleEye: {len(topk)} finalists (the best adaptive-BN score, those '
            "within one standard error of it, and the uniform plan), each briefly fine-tuned; the best after "
            "fine-tuning (ringed) is kept.</div></div>"
        )
    return '<div class="grid">' + "".join(parts) + "</div>" if parts else ""


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page (inline CSS and SVG; no scripts, no external files)."""
    s = report.get("settings") or {}
    o = report.get("original") or {}
    c = report.get("compressed") or {}
    ck = report.get("checkpoint") or {}
    out: list[str] = []
    title = f"compress run · {ck.get('path') or ''}"
    out.append(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>')
    out.append('<meta name="viewport" content="width=device-width, initial-scale=1">')
    out.append(f"<style>{_CSS}</style></head><body><main>")
    out.append(f"<h1>compress run report {_status_badge(report)}</h1>")
    bits = [
        f"model <code>{_e(ck.get('path', '?'))}</code>"
        + (f" ({_e(ck.get('arch'))})" if ck.get("arch") else ""),
        f"target <b>{_e(s.get('target', '?'))}</b>",
        f"method <b>{_e(s.get('method', '?'))}</b>",
    ]
    if s.get("data"):
        bits.append(f"data <b>{_e(s.get('data'))}</b>")
    out.append(f'<p class="lead">{" · ".join(bits)}</p>')
    if report.get("message"):
        out.append(f'<p class="lead"><b>{_e(report["message"])}</b></p>')
    if report.get("command"):
        out.append(f"<pre>{_e(report['command'])}</pre>")

    # Summary
    out.append("<h2>Before and after</h2>")
    out.append(
        _table(
            ["", "original", "compressed", "change"],
            [[_e(a), _e(b), _e(cc), _e(d)] for a, b, cc, d in summary_rows(report)],
            num_cols=(1, 2, 3),
        )
    )
    lat = c.get("latency") or o.get("latency") or {}
    if lat:
        rt = report.get("target") or {}
        runtime = rt.get("runtime") if isinstance(rt, dict) else None
        rtxt = ""
        if isinstance(runtime, dict) and runtime:
            rtxt = " (" + ", ".join(f"{k} {v}" for k, v in runtime.items()) + ")"
        out.append(
            f'<div class="cap">Latency measured on this machine ({_e(_get(report, "versions", "platform") or "?")}) '
            f"with ONNX Runtime and the target's runtime settings{_e(rtxt)}, batch {_e(s.get('batch', 1))}, "
            f"{_e(lat.get('runs', '?'))} timed runs after warm-up"
            + (
                f", {_e(used)} intra-op thread(s) used here"
                if (used := _get(lat, "session", "intra_op_threads_used"))
                else ""
            )
            + "; original and compressed timed interleaved.</div>"
        )

    # Budgets and checks
    rows = []
    for item in list(report.get("budgets") or []) + list(report.get("checks") or []):
        unit = item.get("unit") or ""
        rows.append(
            [
                _e(item.get("name")),
                _e(_limit_txt(item) + unit),
                _e(fmt_value(item.get("value")) + unit),
                _pf(item.get("passed")),
                _e(item.get("detail") or ""),
            ]
        )
    if rows:
        out.append("<h2>Budgets and checks</h2>")
        out.append(_table(["", "limit", "reached", "result", "detail"], rows, num_cols=(1, 2)))

    if report.get("quantize"):
        out.append(_quantize_html(report["quantize"]))

    # Plots
    layers = report.get("layers") or []
    if layers:
        n_pr = sum(1 for r in layers if not r.get("frozen"))
        out.append("<h2>Kept channels per layer</h2>")
        out.append(
            f'<div class="cap">{len(layers)} channel groups ({n_pr} prunable); coupled layers (e.g. a residual '
            "stream) share one group. Dashed outline: frozen (not pruned), with the reason in report.json.</div>"
        )
        out.append(f'<div class="fig">{svg_layers(layers)}</div>')
    search = report.get("search") or {}
    sp = _search_plots(search, s)
    if sp or search.get("summary"):
        out.append("<h2>Search</h2>")
        if search.get("summary"):
            out.append(f'<p class="lead">{_e(search["summary"])}</p>')
        out.append(sp)
    ol, cl = _get(o, "latency", "samples"), _get(c, "latency", "samples")
    if ol or cl:
        budget = s.get("latency_ms")
        pct = s.get("percentile")
        svg = svg_latency(
            [("original", ol or [], C_ORIG), ("compressed", cl or [], C_COMP)],
            budget=budget if _finite(budget) else None,
            budget_label=f"budget p{pct:g} ≤ {budget:g} ms"
            if _finite(pct) and _finite(budget)
            else "latency budget",
        )
        out.append("<h2>Latency</h2>")
        out.append(f'<div class="fig">{svg}</div>')
    lc = search.get("latency_checked") or []
    if lc:
        out.append("<h3>Candidates measured against the latency budget</h3>")
        out.append(
            _table(
                [
                    "candidate",
                    "FLOPs kept",
                    "score",
                    "predicted (ms)",
                    "measured p50 (ms)",
                    "latency (ms)",
                    "budget (ms)",
                    "fits",
                ],
                [
                    [
                        _e(f"#{r.get('id')}"),
                        _e(fmt_num(r.get("flops"), 4)),
                        _e(fmt_num(r.get("score"))),
                        _e(fmt_num(r.get("predicted_ms"), 3)),
                        _e(fmt_num(r.get("p50"), 3)),
                        _e(fmt_num(r.get("latency_ms"), 3)),
                        _e(fmt_num(r.get("limit_ms", s.get("latency_ms")), 3)),
                        _pf(r.get("fits")),
                    ]
                    for r in lc
                ],
                num_cols=(1, 2, 3, 4, 5, 6),
            )
        )
    lmodel = report.get("latency_model") or {}
    svg_t = svg_latency_table(lmodel.get("layers") or [])
    if svg_t:
        out.append("<h3>Latency model</h3>")
        out.append(
            f'<div class="fig">{svg_t}<div class="cap">Each layer timed alone on ONNX Runtime with the target\'s '
            f"settings over its channel grid; a plan's latency is predicted as {fmt_num(lmodel.get('scale'), 3)} x "
            f"the sum of its layers + {fmt_num(lmodel.get('rest_ms'), 4)} ms (fitted on end-to-end timings).</div></div>"
        )

    # Fine-tuning curve
    history = (report.get("finetune") or {}).get("history") or []
    if history:
        out.append("<h2>Fine-tuning</h2>")
        out.append(
            _table(
                ["epoch", "lr", "train loss", "train top-1 %", "val top-1 %", "images/s"],
                [
                    [
                        _e(h.get("epoch")),
                        _e(fmt_num(h.get("lr"), 4)),
                        _e(fmt_num(h.get("train_loss"), 4)),
                        _e(fmt_num(h.get("train_acc"))),
                        _e(fmt_num(h.get("val_acc"))),
                        _e(fmt_num(h.get("img_per_s"), 0)),
                    ]
                    for h in history
                ],
                num_cols=(0, 1, 2, 3, 4, 5),
            )
        )

    # Stages
    stages = report.get("stages") or []
    if stages:
        total = sum(float(st.get("seconds") or 0) for st in stages)
        out.append("<h2>Stages</h2>")
        out.append(
            _table(
                ["stage", "seconds", "status", "note"],  # a resumed stage: the earlier run's time
                [
                    [
                        _e(st.get("name")),
                        _e(f"{float(st.get('seconds') or 0):.2f}"),
                        _e(st.get("status", "")),
                        _e(st.get("note") or ""),
                    ]
                    for st in stages
                ]
                + [["<b>total</b>", f"<b>{total:.2f}</b>", "", ""]],
                num_cols=(1,),
            )
        )
    notes = report.get("notes") or []
    if notes:
        out.append('<h2>Notes</h2><ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")

    # Settings, artifacts, versions
    out.append("<h2>Settings and environment</h2>")
    kv = [[_e(k), f"<code>{_e(v)}</code>"] for k, v in s.items() if v is not None]
    if ck.get("sha256"):
        kv.append(["checkpoint sha256", f"<code>{_e(ck['sha256'])}</code>"])
    for k, v in (report.get("versions") or {}).items():
        kv.append([_e(k), f"<code>{_e(v)}</code>"])
    out.append(_table(["", "value"], kv))
    arts = report.get("artifacts") or {}
    if arts:
        out.append("<h3>Artifacts</h3>")
        out.append(_table(["file", "path"], [[_e(k), f"<code>{_e(v)}</code>"] for k, v in arts.items()]))
    out.append(f"<footer>{_e(report.get('created', ''))} · compressor report format {REPORT_FORMAT}</footer>")
    out.append("</main></body></html>\n")
    return "".join(out)
