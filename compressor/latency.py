"""A latency model of a deploy target's ONNX Runtime: predicted latency of a plan from a lookup table.

Every convolution and linear layer of the model is timed alone (a standalone ONNX model of that
one layer, bias included since BatchNorm folds into it) with the target's provider, threads and
optimisation level, over its possible input and output channel counts on a grid at the target's
rounding multiple (and at one input channel, the search's floor); every point is timed in two
passes and keeps its least time, less the runtime's fixed cost of a call (which end to end is
paid once, not once per layer). A plan's latency is then predicted as

    scale * sum(layer terms) + per_element * (output elements of the layers) + rest

where the element term stands for the elementwise work between layers (activations, additions,
pooling, layout reorders), which shrinks with the channels, and ``rest`` for the runtime's cost
of a call. The three are fitted by weighted non-negative least squares on end-to-end timings of
the full model (timed three times a round, the median kept) and the most-pruned plan a search at
the target's multiple reaches (so tight budgets are not an extrapolation), each weighted as much
as all the random plans together (budgets are fractions of the full model's latency), the plan
with every group at one channel and a few random plans on the widths the searches keep, timed in
interleaved rounds with one session alive at a time (a slow spell of a shared machine then falls
on every plan alike).

The runtime's own channel steps are read from the runtime, not timed: ONNX Runtime's CPU provider
runs convolutions in a blocked layout (NCHWc) whose block (8 floats with AVX2, 16 with AVX-512)
pads every convolution's channels up to a multiple of the block (:func:`runtime_channel_block`
finds it by optimising probe convolutions and reading the graph ONNX Runtime made of them). A
layer's latency is therefore predicted at its padded widths and the table's grid is on multiples
of both the target's rounding multiple and the block: 72 channels cost what 80 cost with a block
of 16, and :meth:`LatencyModel.snap` keeps the 8 free channels.

How a layer's channels depend on the plan is read from the engine itself: each prunable group is
shrunk by one step in turn, the model slimmed, and every layer's ``in_channels``/``out_channels``
compared with the full model's; a layer's width is then a linear function of the groups' counts.

The table is cached on disk (``~/.cache/compressor/latency`` or ``$COMPRESSOR_CACHE``/latency),
keyed by the target's runtime settings, the ONNX Runtime version, the CPU, the model's layer
shapes and the input shape, so a second run reuses it. Progress goes to stderr while measuring.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compressor.io import atomic_write_json

#: Format of the cached table (a change invalidates old caches).
CACHE_FORMAT = "compressor.latency/11"

#: Percentile of the timed runs the table and its calibration use: a low one, since other
#: processes on a shared machine only ever add time (the model predicts the unloaded latency).
TIMING_PERCENTILE = 10.0


# ----------------------------------------------------------------------------- layers
@dataclass
class Layer:
    """One convolution or linear layer: its shape in the full model and how its widths follow the
    groups' counts (``width = full - sum(coef[g] * (size[g] - count[g]))``)."""

    name: str
    kind: str  # "conv", "dwconv" or "linear"
    cin: int
    cout: int
    hw: tuple[int, int]  # input spatial size (conv only)
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    coef_in: dict[str, float] = field(default_factory=dict)
    coef_out: dict[str, float] = field(default_factory=dict)

    def key(self) -> str:
        """The shape that decides its timing (layers of one shape share a table)."""
        return json.dumps(
            [self.kind, self.hw, self.kernel, self.stride, self.padding, self.dilation, self.groups,
             self.cin, self.cout, bool(self.coef_in), bool(self.coef_out)]
        )  # fmt: skip

    def out_pixels(self) -> int:
        """Spatial size of the output (1 for a linear layer)."""
        if self.kind == "linear":
            return 1
        size = 1
        for i in range(2):
            k = self.dilation[i] * (self.kernel[i] - 1) + 1
            size *= max((self.hw[i] + 2 * self.padding[i] - k) // self.stride[i] + 1, 1)
        return size

    def widths(self, removed: Mapping[str, int]) -> tuple[float, float]:
        """(cin, cout) when ``removed[g]`` channels of each group are gone."""
        cin = self.cin - sum(c * removed.get(g, 0) for g, c in self.coef_in.items())
        cout = self.cout - sum(c * removed.get(g, 0) for g, c in self.coef_out.items())
        return max(cin, 1.0), max(cout, 1.0)


def _modules(model: Any) -> dict[str, Any]:
    import torch.nn as nn

    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _input_sizes(model: Any, input_shape: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """Spatial input size of every conv (batch-1 forward with hooks)."""
    import torch

    sizes: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, m in _modules(model).items():

        def hook(mod: Any, inp: Any, out: Any, name: str = name) -> None:
            x = inp[0]
            sizes[name] = (int(x.shape[-2]), int(x.shape[-1])) if x.dim() == 4 else (1, 1)

        hooks.append(m.register_forward_hook(hook))
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return sizes


def _widths(model: Any) -> dict[str, tuple[int, int]]:
    out = {}
    for n, m in _modules(model).items():
        if hasattr(m, "in_channels"):
            out[n] = (int(m.in_channels), int(m.out_channels))
        else:
            out[n] = (int(m.in_features), int(m.out_features))
    return out


def find_layers(model: Any, graph: Any, input_shape: tuple[int, ...]) -> list[Layer]:
    """The model's conv/linear layers with their width coefficients per prunable group."""
    import torch.nn as nn

    from compressor.graph import slim

    sizes = _input_sizes(model, input_shape)
    full = _widths(model)
    layers: dict[str, Layer] = {}
    for name, m in _modules(model).items():
        if name not in sizes:
            continue  # not on the forward path
        cin, cout = full[name]
        if isinstance(m, nn.Conv2d):
            dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            layers[name] = Layer(
                name, "dwconv" if dw else "conv", cin, cout, sizes[name], tuple(m.kernel_size),
                tuple(m.stride), tuple(m.padding) if not isinstance(m.padding, str) else (0, 0),
                tuple(m.dilation), int(m.groups),
            )  # fmt: skip
        else:
            layers[name] = Layer(name, "linear", cin, cout, (1, 1))
    for g in graph.prunable:
        d = 1
        small = slim(model, graph.plan_from_counts({g.name: g.size - d}, method="probe"), graph=graph)
        after = _widths(small)
        for name, lay in layers.items():
            if name not in after:
                continue
            di, do = full[name][0] - after[name][0], full[name][1] - after[name][1]
            if di:
                lay.coef_in[g.name] = di / d
            if do:
                lay.coef_out[g.name] = do / d
    return list(layers.values())


# ----------------------------------------------------------------------------- the runtime's channel block
_BLOCKS: dict[tuple[str, str], int] = {}


def _optimized_ops(module: Any, shape: tuple[int, ...], level: str, tmp: Path) -> list[tuple[str, str]]:
    """(domain, op type) of every node ONNX Runtime's CPU provider makes of ``module`` at ``level``."""
    import onnx
    import onnxruntime as ort
    import torch

    from compressor.export.runtime import _OPT

    src, dst = tmp / "probe.onnx", tmp / "probe.opt.onnx"
    with torch.no_grad():
        torch.onnx.export(module.eval(), (torch.zeros(1, *shape),), str(src), opset_version=17,
                          input_names=["x"], output_names=["y"], dynamo=False)  # fmt: skip
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT[level])
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return [(n.domain, n.op_type) for n in onnx.load(str(dst)).graph.node]


def runtime_channel_block(target: Any) -> int:
    """The channel block the target's runtime pads convolutions to on this machine (1: none).

    ONNX Runtime's CPU provider, at optimisation level ``all``, rewrites convolutions into its
    blocked NCHWc layout; a convolution with fewer input channels than the block reads the plain
    layout directly, one with at least the block is reordered (and padded) into blocks. The block
    is the smallest input width whose probe convolution gets that reorder: read from the graph
    ONNX Runtime optimised, so it is exact and costs no timing. Other providers and levels: 1.
    """
    import warnings

    import torch.nn as nn

    provider, level = str(target.runtime.provider), str(target.runtime.graph_optimization_level)
    if provider != "CPUExecutionProvider":
        return 1
    key = (provider, level)
    if key not in _BLOCKS:
        block = 1
        with tempfile.TemporaryDirectory(prefix="compressor-block-") as td, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for c in (2, 4, 8, 16, 32, 64):
                ops = _optimized_ops(nn.Conv2d(c, 16, 3, padding=1), (c, 8, 8), level, Path(td))
                blocked = [op for dom, op in ops if dom == "com.microsoft.nchwc"]
                if not blocked:
                    break  # this runtime/level has no blocked layout
                if "ReorderInput" in blocked:
                    block = c
                    break
        _BLOCKS[key] = block
    return _BLOCKS[key]


def padded(c: float, block: int, *, reads_plain: bool = False) -> float:
    """Width ``c`` as it costs in the model: up to a multiple of ``block``.

    ``reads_plain`` (a convolution's input): one input channel is read as it is. ONNX Runtime
    reads any input narrower than the block plainly, but inside a model such a width costs more
    than the block: the producer's output leaves the blocked layout and the fused residual
    additions with it (in one diagnostic run on the demo ResNet, four groups at 8 channels ran at
    0.88 of the latency, the same groups at 16 at 0.72, at 1 at 0.53), so it is costed as the block and
    :meth:`LatencyModel.snap` raises it to the block."""
    if block <= 1 or (reads_plain and c <= 1):
        return c
    return float(math.ceil(c / block - 1e-9) * block)


# ----------------------------------------------------------------------------- timing
def _grid(full: int, multiple: int, max_points: int, block: int = 1, plain: bool = False) -> list[int]:
    """Channel counts a layer can take at ``multiple`` (always its full width), at most
    ``max_points`` of them spread evenly; with the runtime's ``block``, each at the width it costs
    (:func:`padded`; ``plain``: a convolution's input)."""
    if full < 2 * multiple:
        pts = list(range(1, full + 1)) if multiple == 1 else [full]
        if multiple > 1 and full > 1:
            pts = sorted({max(1, full // 2), full})
    else:
        pts = sorted({multiple * k for k in range(1, full // multiple + 1)} | {full})
    if block > 1:  # the runtime computes a width at its padded size: time that (capped at full)
        pts = sorted({min(int(padded(p, block, reads_plain=plain)), full) for p in pts})
    if len(pts) > max_points:
        idx = np.unique(np.round(np.linspace(0, len(pts) - 1, max_points)).astype(int))
        pts = [pts[i] for i in idx]
    return pts


def _layer_module(lay: Layer, cin: int, cout: int) -> tuple[Any, tuple[int, ...]]:
    """A standalone torch module of ``lay`` at widths (cin, cout) and its input shape (batch 1)."""
    import torch.nn as nn

    if lay.kind == "linear":
        return nn.Linear(cin, cout), (cin,)
    if lay.kind == "dwconv":
        c = cout
        return (
            nn.Conv2d(c, c, lay.kernel, lay.stride, lay.padding, lay.dilation, groups=c, bias=True),
            (c, *lay.hw),
        )
    groups = math.gcd(lay.groups, math.gcd(cin, cout)) if lay.groups > 1 else 1
    return nn.Conv2d(cin, cout, lay.kernel, lay.stride, lay.padding, lay.dilation, groups, True), (
        cin,
        *lay.hw,
    )


def time_module(
    module: Any, shape: tuple[int, ...], target: Any, *, seconds: float, tmp: Path, clock: str = "wall"
) -> float:
    """ONNX Runtime latency (ms, :data:`TIMING_PERCENTILE`) of ``module`` on a ``(batch, *shape)`` input, target settings."""
    import torch

    batch = int(target.input.batch)
    path = tmp / "layer.onnx"
    module = module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module, (torch.zeros(batch, *shape),), str(path), opset_version=int(target.export.opset),
            input_names=["x"], output_names=["y"], dynamo=False,
        )  # fmt: skip
    return time_onnx(path, target, (batch, *shape), seconds=seconds, clock=clock)


def time_onnx(
    path: Path | str, target: Any, shape: tuple[int, ...], *, seconds: float, clock: str = "wall"
) -> float:
    """Latency (ms, :data:`TIMING_PERCENTILE` of the runs) of an ONNX file with the target's runtime settings."""
    from compressor.export.runtime import input_meta, make_session, time_sessions

    sess, _ = make_session(path, target.runtime)
    name, _, _ = input_meta(sess)
    feed = {name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    # warm up for a while, not a few runs: the first tens of milliseconds after exporting (one
    # core busy in Python) ran small layers up to 1.8x slower
    w0 = time.perf_counter()
    while time.perf_counter() - w0 < WARMUP_S:
        sess.run(None, feed)
    t = time_sessions([(sess, feed)], warmup=1, min_runs=10, time_budget_s=seconds, block=5, clock=clock)[0]
    return float(np.percentile(t, TIMING_PERCENTILE))


#: Seconds a session runs before it is timed (:func:`time_onnx`).
WARMUP_S = 0.02
#: Passes over a latency table's points; each point keeps its least time (a slow spell of a
#: shared machine then has to fall on the same point in every pass to stay in the table).
TABLE_PASSES = 2


_last_progress = [0.0]


def _progress(msg: str, *, force: bool = False) -> None:
    """One progress line on stderr: rewritten in place on a terminal, else at most one line a second."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{msg:<78}")
    elif force or time.monotonic() - _last_progress[0] >= 1.0:
        _last_progress[0] = time.monotonic()
        sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------- the model
@dataclass
class LayerTable:
    """Measured latency (ms) of one layer shape over its grid of (cin, cout)."""

    grid_in: list[int]
    grid_out: list[int]
    ms: list[list[float]]

    def at(self, cin: float, cout: float) -> float:
        """Bilinear interpolation (clamped to the grid)."""
        a = np.asarray(self.ms, dtype=np.float64)
        gi, go = np.asarray(self.grid_in, float), np.asarray(self.grid_out, float)
        row = np.array([np.interp(cout, go, a[i]) for i in range(len(gi))])
        return float(np.interp(cin, gi, row))


class LatencyModel:
    """Predicted end-to-end latency of a plan (by kept channel counts per prunable group)."""

    def __init__(self, layers: list[Layer], tables: dict[str, LayerTable], sizes: dict[str, int],
                 scale: float, rest: float, full_ms: float, info: dict[str, Any], block: int = 1,
                 per_element: float = 0.0) -> None:  # fmt: skip
        self.layers = layers
        #: the runtime's channel block (:func:`runtime_channel_block`): conv widths are padded to it
        self.block = int(block)
        self.tables = tables
        self.sizes = sizes
        self.scale = scale
        self.rest = rest
        #: ms per output element of the layers (the elementwise work between them: activations,
        #: additions, pooling, layout reorders), fitted with ``scale`` and ``rest``
        self.per_element = float(per_element)
        self.full_ms = full_ms
        self.info = info
        self._full_pred = self.predict_ms({})

    def _costed_widths(self, counts: Mapping[str, int]) -> list[tuple[Layer, float, float]]:
        """(layer, cin, cout) for ``counts``, at the widths they cost (:func:`padded`)."""
        removed = {g: self.sizes[g] - int(c) for g, c in counts.items() if g in self.sizes}
        out = []
        for lay in self.layers:
            cin, cout = lay.widths(removed)
            if lay.kind != "linear":
                cin = padded(cin, self.block, reads_plain=lay.kind == "conv")
                cout = padded(cout, self.block)
            out.append((lay, cin, cout))
        return out

    def layer_terms(self, counts: Mapping[str, int]) -> dict[str, float]:
        """Each layer's table latency (ms, before scaling) for ``counts``."""
        return {lay.name: self.tables[lay.key()].at(ci, co) for lay, ci, co in self._costed_widths(counts)}

    def elements(self, counts: Mapping[str, int]) -> float:
        """Output elements of all layers for ``counts`` (at the widths the runtime computes)."""
        return sum(co * lay.out_pixels() for lay, _, co in self._costed_widths(counts))

    def predict_ms(self, counts: Mapping[str, int]) -> float:
        """Predicted latency (ms) of the model keeping ``counts`` (absent groups: all channels)."""
        widths = self._costed_widths(counts)  # one pass serves both terms (searches call this often)
        tables = sum(self.tables[lay.key()].at(ci, co) for lay, ci, co in widths)
        elements = sum(co * lay.out_pixels() for lay, _, co in widths)
        return self.scale * tables + self.per_element * elements + self.rest

    def plan_counts(self, plan: Any) -> dict[str, int]:
        """Kept channels per prunable group of a :class:`~compressor.plan.Plan` (unlisted: all)."""
        return {g: len(plan.groups[g]) if g in plan.groups else s for g, s in self.sizes.items()}

    def fraction(self, counts: Mapping[str, int]) -> float:
        """Predicted latency as a fraction of the full model's predicted latency."""
        return self.predict_ms(counts) / self._full_pred

    def snap(self, counts: Mapping[str, int], multiple: int = 1, tol: float = 1e-3) -> dict[str, int]:
        """Raise each group's count to the largest count (on its ``multiple`` steps) that the table
        says costs no more latency: latency drops only at some steps, channels in between are free."""
        out = {g: int(c) for g, c in counts.items()}
        for g in list(out):
            size = self.sizes.get(g)
            if size is None:
                continue
            base = self.predict_ms(out)
            step = multiple if size >= 2 * multiple else 1
            best = out[g]
            k = (best // step + 1) * step
            while k <= size:
                if self.predict_ms({**out, g: k}) > base * (1 + tol):
                    break
                best = k
                k += step
            out[g] = best
        return out

    def floor_counts(self, multiple: int = 1) -> dict[str, int]:
        """The fastest plan a search at ``multiple`` can reach: every group at one step (``multiple``
        channels, or one channel for a group narrower than two steps, whose widths are free), then
        snapped (:meth:`snap`: channels up to the runtime's next step cost nothing). Below this plan's
        predicted latency no budget can be met at that multiple."""
        m = max(int(multiple), 1)
        counts = {g: (m if m > 1 and s >= 2 * m else 1) for g, s in self.sizes.items()}
        return self.snap(counts, m)

    def table_rows(self) -> list[dict[str, Any]]:
        """Per layer: full widths and the measured table (for the report's plot)."""
        rows = []
        for lay in self.layers:
            t = self.tables[lay.key()]
            rows.append({"layer": lay.name, "kind": lay.kind, "cin": lay.cin, "cout": lay.cout,
                         "grid_in": t.grid_in, "grid_out": t.grid_out, "ms": t.ms})  # fmt: skip
        return rows


# ----------------------------------------------------------------------------- building and caching
def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where latency tables are cached."""
    if explicit is not None:
        return Path(explicit)
    root = os.environ.get("COMPRESSOR_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "compressor") / "latency"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(layers: list[Layer], sizes: dict[str, int], target: Any, input_shape: tuple[int, ...],
              multiple: int, max_points: int) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """A hash of what decides the table, and that description."""
    import onnxruntime as ort

    from compressor.export.runtime import cpu_count

    desc = {
        "format": CACHE_FORMAT,
        "runtime": {
            "provider": target.runtime.provider,
            "threads": min(int(target.runtime.intra_op_threads), cpu_count()),
            "level": target.runtime.graph_optimization_level,
        },  # fmt: skip
        "batch": int(target.input.batch),
        "opset": int(target.export.opset),
        "onnxruntime": ort.__version__,
        "cpu": _cpu_name(),
        "cores": cpu_count(),
        "input_shape": list(input_shape),
        "multiple": int(multiple),
        "channel_block": runtime_channel_block(target),
        "max_points": int(max_points),
        "model": hashlib.sha256(
            json.dumps(
                [[ly.name, ly.key(), ly.coef_in, ly.coef_out] for ly in layers] + [sizes], sort_keys=True
            ).encode()
        ).hexdigest()[:16],
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20], desc


def _table_setup(
    model: Any, graph: Any, target: Any, input_shape: tuple[int, ...], multiple: int | None, max_points: int
) -> tuple[Any, int, tuple[int, ...], list[Layer], dict[str, int], str, dict[str, Any]]:
    """(target, grid multiple, input shape, layers, group sizes, cache key, key description): what
    decides a latency table, shared by building it and estimating the build."""
    from compressor.targets import load_target

    target = load_target(target)
    m = int(multiple if multiple is not None else target.export.channel_multiple) or 1
    shape = tuple(int(s) for s in input_shape)
    layers = find_layers(model, graph, shape)
    sizes = {g.name: int(g.size) for g in graph.prunable}
    key, desc = cache_key(layers, sizes, target, shape, m, max_points)
    return target, m, shape, layers, sizes, key, desc


def grid_step(multiple: int, block: int) -> int:
    """The table's grid step: a multiple of both the target's rounding ``multiple`` and the
    runtime's channel ``block`` (widths in between cost what the next block costs)."""
    return math.lcm(max(int(multiple), 1), max(int(block), 1))


def build_latency_model(
    model: Any,
    graph: Any,
    target: Any,
    input_shape: tuple[int, ...],
    *,
    multiple: int | None = None,
    max_points: int = 8,
    seconds_per_point: float = 0.05,
    calib_plans: int = 6,
    cache: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    progress: bool = True,
    seed: int = 0,
    clock: str = "wall",
) -> LatencyModel:
    """Measure (or read from the cache) the latency table of ``model`` on ``target``.

    ``input_shape``: (C, H, W); ``multiple``: the grid step (default: the target's channel
    multiple); ``max_points``: the most grid points per width axis (interpolated between);
    ``calib_plans``: random plans timed end-to-end (besides the full model) to fit scale and rest;
    ``clock``: ``"wall"`` (latency as seen) or ``"thread_cpu"`` (with one intra-op thread: the
    calling thread's CPU time, which leaves out time other processes take on a shared machine).
    """
    target, m, input_shape, layers, sizes, key, desc = _table_setup(
        model, graph, target, input_shape, multiple, max_points
    )
    if clock != "wall":
        desc["clock"] = clock
        key = hashlib.sha256((key + clock).encode()).hexdigest()[:20]
    path = cache_dir(cache) / f"{key}.json"
    if use_cache and path.is_file():
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            tables = {k: LayerTable(**v) for k, v in d["tables"].items()}
            info = {**d["info"], "cache": str(path), "cache_hit": True}
            return LatencyModel(
                layers, tables, sizes, d["scale"], d["rest"], d["full_ms"], info, desc["channel_block"],
                d["per_element"],
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a broken cache file is measured again
    t0 = time.perf_counter()
    block = int(desc["channel_block"])
    tables, call_ms = _measure_tables(
        layers, target, grid_step(m, block), max_points, seconds_per_point, progress, clock, block
    )
    scale, per_element, rest, full_ms, calib = _calibrate(
        model, graph, layers, tables, sizes, target, input_shape, m, calib_plans, seed, progress, clock, block
    )
    if progress:
        _progress(f"latency table: done in {time.perf_counter() - t0:.1f} s, cached in {path}", force=True)
        if sys.stderr.isatty():
            sys.stderr.write("\n")
    info = {**desc, "key": key, "calibration": calib, "call_ms": round(call_ms, 5),
            "measure_seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    atomic_write_json(
        path,
        {
            "key": key,
            "describe": desc,
            "tables": {k: vars(v) for k, v in tables.items()},
            "scale": scale,
            "per_element": per_element,
            "rest": rest,
            "full_ms": full_ms,
            "info": info,
        },  # fmt: skip
    )
    return LatencyModel(
        layers, tables, sizes, scale, rest, full_ms, {**info, "cache": str(path), "cache_hit": False}, block,
        per_element,
    )  # fmt: skip


def _table_grids(
    layers: list[Layer], m: int, max_points: int, block: int = 1
) -> dict[str, tuple[Layer, list[int], list[int]]]:
    """Per distinct layer shape: (layer, input-width grid, output-width grid) to time."""
    todo: dict[str, Layer] = {}
    for lay in layers:
        todo.setdefault(lay.key(), lay)
    plans = {}
    for k, lay in todo.items():
        b = 1 if lay.kind == "linear" else block
        gi = (
            _grid(lay.cin, m, max_points, b, plain=lay.kind == "conv")
            if lay.coef_in and lay.kind != "dwconv"
            else [lay.cin]
        )
        if lay.coef_in and lay.kind != "dwconv" and gi[0] > 1:
            # one input channel (a group pruned to its last channel, the search's floor) is read as
            # it is, far below the grid's first step: time it rather than clamp to that step
            gi = [1, *gi]
        go = (
            _grid(lay.cout, m, max_points, b)
            if lay.coef_out or (lay.kind == "dwconv" and lay.coef_in)
            else [lay.cout]
        )
        if lay.kind == "dwconv":
            gi = go
        plans[k] = (lay, gi, go)
    return plans


def _timings(plans: dict[str, tuple[Layer, list[int], list[int]]]) -> int:
    """How many single-layer timings ``plans`` take (a depthwise conv's table is its diagonal)."""
    return sum(len(gi) * len(go) if lay.kind != "dwconv" else len(go) for lay, gi, go in plans.values())


#: Seconds a single-layer timing costs besides its timing window (export, session start, warm-up),
#: and an end-to-end calibration timing besides its window (slim, export, simplify, session), on a
#: small CPU (measured on 2 shared cores: the estimate was within 30% of the build on the demo
#: models, ResNet-18 and MobileNetV2 at 112 px); a rough figure.
LAYER_OVERHEAD_S = 0.09
#: Seconds each calibration plan is timed end to end (over 5 rounds).
CALIB_SECONDS = 1.0
PLAN_OVERHEAD_S = 1.0


def estimate_build(
    model: Any,
    graph: Any,
    target: Any,
    input_shape: tuple[int, ...],
    *,
    multiple: int | None = None,
    max_points: int = 8,
    seconds_per_point: float = 0.05,
    calib_plans: int = 6,
    cache: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """What :func:`build_latency_model` with the same arguments would do, without timing anything:
    ``cached`` (the table is read from the cache, ~0 s), the number of single-layer and end-to-end
    timings, and ``estimate_s``, a rough time on this machine."""
    _, m, _, layers, _, key, desc = _table_setup(model, graph, target, input_shape, multiple, max_points)
    path = cache_dir(cache) / f"{key}.json"
    block = int(desc["channel_block"])
    n_layer = _timings(_table_grids(layers, grid_step(m, block), max_points, block)) * TABLE_PASSES + 3
    n_plan = calib_plans + 5  # + the full model (three times) and the two floors (see _calibrate)
    cached = path.is_file()
    seconds = n_layer * (seconds_per_point + LAYER_OVERHEAD_S) + n_plan * (CALIB_SECONDS + PLAN_OVERHEAD_S)
    return {
        "cached": cached,
        "cache": str(path),
        "layers": len(layers),
        "layer_timings": n_layer,
        "plan_timings": n_plan,
        "estimate_s": 0.0 if cached else round(seconds, 1),
    }


def _measure_tables(layers: list[Layer], target: Any, m: int, max_points: int, seconds: float,
                    progress: bool, clock: str = "wall", block: int = 1) -> tuple[dict[str, LayerTable], float]:  # fmt: skip
    """Time every distinct layer shape over its grid, less the runtime's cost of a call.

    A layer timed alone pays ONNX Runtime's fixed cost of a ``run`` (tens of microseconds); end to
    end the model pays it once, not once per layer. It is measured on a one-weight convolution
    (the least of three timings) and taken off every table entry (keeping at least a tenth of
    the entry), so the tables sum the layers' own work and ``rest`` holds the call's cost. Every
    point is timed in :data:`TABLE_PASSES` passes and keeps its least time. Returns the tables and
    that cost (ms).
    """
    import torch.nn as nn

    plans = _table_grids(layers, m, max_points, block)
    total = _timings(plans) * TABLE_PASSES
    done = 0
    tables: dict[str, LayerTable] = {}
    with tempfile.TemporaryDirectory(prefix="compressor-lat-") as td:
        tmp = Path(td)
        call = min(
            time_module(nn.Conv2d(1, 1, 1), (1, 1, 1), target, seconds=seconds, tmp=tmp, clock=clock)
            for _ in range(3)
        )
        raw = {k: [[math.inf] * len(go) for _ in gi] for k, (_, gi, go) in plans.items()}
        for _ in range(TABLE_PASSES):
            for k, (lay, gi, go) in plans.items():
                for i, ci in enumerate(gi):
                    for j, co in enumerate(go):
                        if lay.kind == "dwconv" and i != j:
                            continue
                        mod, shape = _layer_module(lay, ci, co)
                        t = time_module(mod, shape, target, seconds=seconds, tmp=tmp, clock=clock)
                        raw[k][i][j] = min(raw[k][i][j], t)
                        done += 1
                        if progress:
                            _progress(f"latency table: {done}/{total} layer timings ({lay.name} {ci}->{co})")
        for k, (lay, gi, go) in plans.items():
            ms = [[max(t - call, 0.1 * t) if math.isfinite(t) else 0.0 for t in row] for row in raw[k]]
            if lay.kind == "dwconv":  # the table is the diagonal; fill rows so interpolation works
                ms = [[ms[j][j] for j in range(len(go))] for _ in gi]
            tables[k] = LayerTable(list(gi), list(go), ms)
    return tables, call


def random_counts(
    sizes: dict[str, int], rng: np.random.Generator, multiple: int, low: float = 0.2
) -> dict[str, int]:
    """A random plan's counts: each group keeps a uniform fraction in [low, 1], on the multiple."""
    out = {}
    for g, s in sizes.items():
        k = max(1, int(round(s * rng.uniform(low, 1.0))))
        if multiple > 1 and s >= 2 * multiple:
            k = int(min(s, max(multiple, round(k / multiple) * multiple)))
        out[g] = k
    return out


def measure_plan(model: Any, graph: Any, counts: Mapping[str, int], target: Any, input_shape: tuple[int, ...],
                 *, seconds: float = 0.4, tmp: Path | None = None, clock: str = "wall") -> float:  # fmt: skip
    """Measured end-to-end latency (ms, :data:`TIMING_PERCENTILE`, target settings) of the model slimmed to ``counts``."""
    return measure_plans(model, graph, [counts], target, input_shape, seconds=seconds, clock=clock)[0]


def measure_plans(model: Any, graph: Any, plans: list[Mapping[str, int]], target: Any,
                  input_shape: tuple[int, ...], *, seconds: float = 0.4, clock: str = "wall",
                  rounds: int = 3, progress: Callable[[int], None] | None = None) -> list[float]:  # fmt: skip
    """Measured end-to-end latency (ms) of the model slimmed to each of ``plans``, in rounds.

    Every plan is slimmed and exported first; then, ``rounds`` times, each plan in turn gets a
    fresh session timed for ``seconds / rounds``, so a slow spell of a shared machine falls on
    every plan alike. One session lives at a time: ONNX Runtime's intra-op threads spin for a
    while after a run, and sessions kept alive side by side (each with its own threads) slow each
    other down by up to 2x. Each plan's figure is the :data:`TIMING_PERCENTILE` of all its runs.
    ``progress(i)`` is called as plan ``i`` is exported.
    """
    from compressor.export import export_onnx
    from compressor.export.runtime import input_meta, make_session, time_sessions
    from compressor.graph import slim

    batch = int(target.input.batch)
    shape = (batch, *input_shape)
    feed_x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    rounds = max(int(rounds), 1)
    runs: list[list[float]] = [[] for _ in plans]
    with tempfile.TemporaryDirectory(prefix="compressor-lat-") as td:
        paths: list[Path] = []
        exported: dict[tuple[tuple[str, int], ...], Path] = {}  # a plan timed twice is exported once
        for i, counts in enumerate(plans):
            if progress is not None:
                progress(i)
            key = tuple(sorted((g, int(c)) for g, c in counts.items()))
            if key not in exported:
                small = (
                    slim(model, graph.plan_from_counts(dict(counts), method="probe"), graph=graph)
                    if counts
                    else model
                )
                exported[key] = Path(td) / f"m{len(exported)}.onnx"
                export_onnx(small, exported[key], input_shape=shape, opset=int(target.export.opset),
                            dynamic_batch=False, simplify=True)  # fmt: skip
            paths.append(exported[key])
        for _ in range(rounds):
            for i, path in enumerate(paths):
                sess, _ = make_session(path, target.runtime)
                name, _, _ = input_meta(sess)
                runs[i] += time_sessions([(sess, {name: feed_x})], warmup=3, min_runs=max(10 // rounds, 3),
                                         time_budget_s=seconds / rounds, block=5, clock=clock)[0]  # fmt: skip
                del sess
    return [float(np.percentile(r, TIMING_PERCENTILE)) for r in runs]


def fit_scale_rest(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``y ~ scale * x + rest``, robust to a few timings inflated by other processes: least squares,
    the scale clipped to [0.5, 3] of the ratio of medians, then the median intercept; ``rest`` is
    kept at least ``-0.5 * min(scale * x)`` so no plan is predicted near or below zero."""
    ratio = float(np.median(y) / max(float(np.median(x)), 1e-12))
    scale = ratio
    if len(x) >= 3 and np.ptp(x) > 0:
        scale = float(np.polyfit(x, y, 1)[0])
    scale = float(np.clip(scale, 0.5 * ratio, 3.0 * ratio))
    rest = float(np.median(y - scale * x))
    rest = max(rest, -0.5 * float(np.min(scale * x)))
    return scale, rest


def fit_latency(
    x: np.ndarray, e: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, float, float]:
    """``y ~ scale * x + per_element * e + rest`` (``x``: the tables' sum, ``e``: output elements),
    by (``weights``-weighted) least squares with all three kept non-negative: the tables have the
    runtime's cost of a call taken off, so nothing left is negative. Falls back to
    :func:`fit_scale_rest` (no element term) when the points cannot separate the terms (fewer
    than 4, or ``scale`` fitted at 0)."""
    from scipy.optimize import lsq_linear

    if len(x) >= 4 and np.ptp(x) > 0 and np.ptp(e) > 0:
        # columns scaled to similar size so the solver's tolerance treats them alike
        sx, se = float(np.max(x)), float(np.max(e))
        w = np.sqrt(np.ones_like(y) if weights is None else np.asarray(weights, dtype=float))
        a = np.stack([x / sx, e / se, np.ones_like(x)], axis=1) * w[:, None]
        sol = lsq_linear(a, y * w, bounds=([0.0, 0.0, 0.0], [np.inf, np.inf, np.inf]))
        scale, per_element, rest = float(sol.x[0]) / sx, float(sol.x[1]) / se, float(sol.x[2])
        if scale > 0:
            return scale, per_element, rest
    scale, rest = fit_scale_rest(x, y)
    return scale, 0.0, rest


def _calibrate(model: Any, graph: Any, layers: list[Layer], tables: dict[str, LayerTable], sizes: dict[str, int],
               target: Any, input_shape: tuple[int, ...], m: int, n: int, seed: int, progress: bool,
               clock: str = "wall", block: int = 1) -> tuple[float, float, float, float, list[dict[str, float]]]:  # fmt: skip
    """Fit ``measured = scale * sum(layer terms) + per_element * output elements + rest`` on the
    full model, the most-pruned plan a search at the target's multiple ``m`` reaches
    (:meth:`LatencyModel.floor_counts`: the far end of the searches, so the fit does not
    extrapolate to the plans a tight budget asks for), the plan with every group at one channel
    (beyond it: on a model whose floor at the multiple is near the full model, the two alone
    leave the slopes to the noise of a narrow range) and ``n`` random plans with the widths a
    search keeps (on :func:`grid_step`, snapped to the runtime's steps: widths between the
    block's steps cost more in context than the table says, and searches never keep them), all
    timed in interleaved rounds. Returns (scale, per_element, rest, the full model's measured ms,
    the points)."""
    tmp_model = LatencyModel(layers, tables, sizes, 1.0, 0.0, 0.0, {}, block)
    rng = np.random.default_rng([seed, 15])
    plans: list[dict[str, int]] = [{}]
    if sizes:
        step = grid_step(m, block)
        plans += [tmp_model.floor_counts(m), {g: 1 for g in sizes}]
        plans += [tmp_model.snap(random_counts(sizes, rng, step), m) for _ in range(n)]

    # the full model is also timed in the middle and at the end of each round, and its figure is
    # the median of the three: every budget is a fraction of it, and one slow spell of a shared
    # machine on it alone shifted every predicted fraction (ResNet-18: 6.9 ms at calibration, 5.2
    # ms a minute later, predicted fractions 14% high)
    timed = [*plans[: 3 + n // 2], {}, *plans[3 + n // 2 :], {}] if sizes else plans

    def said(i: int) -> None:
        if progress:
            _progress(f"latency table: calibrating end to end, exporting {i + 1}/{len(timed)}")

    x = np.asarray([tmp_model.predict_ms(c) for c in plans])
    e = np.asarray([tmp_model.elements(c) for c in plans])
    ms = measure_plans(
        model, graph, timed, target, input_shape, seconds=CALIB_SECONDS, clock=clock, progress=said, rounds=5
    )  # fmt: skip
    fulls = [t for c, t in zip(timed, ms, strict=True) if not c]
    y = np.asarray([float(np.median(fulls)), *(t for c, t in zip(timed, ms, strict=True) if c)])
    # the full model and the floor at the multiple weigh as much as all the random plans each:
    # budgets are fractions of the full model's latency, and the floor bounds what a budget can
    # ask; the fit goes (nearly) through both, the random plans (noisier, clustered) shape it in
    # between. The one-channel plan weighs as one random plan: it widens a narrow range (on the
    # demo ResNet, whose floor at x8 is 0.7 of its latency, the fit without it over-predicted
    # the searches' plans by about 10%), but one-channel widths cost more in context than their
    # tables (ResNet-18, MobileNetV2: 1.6x), and weighted like the ends it pulled the fit off the
    # searches' plans (ResNet-18: 7% over-predicted on average in one run)
    weights = np.ones_like(y)
    weights[:2] = max(len(y) - 3, 1)
    scale, per_element, rest = fit_latency(x, e, y, weights)
    calib = [
        {"table_ms": round(float(a), 5), "elements": int(b), "measured_ms": round(float(c), 5)}
        for a, b, c in zip(x, e, y, strict=True)
    ]
    return float(scale), float(per_element), float(rest), float(y[0]), calib


# ----------------------------------------------------------------------------- constraint
def counts_for_cost(
    graph: Any,
    cost: Callable[[Mapping[str, int]], float],
    fraction: float,
    shape: Mapping[str, float] | None = None,
    *,
    multiple: int = 1,
    max_ratio: float = 0.95,
) -> dict[str, int]:
    """Kept counts per prunable group so that ``cost(counts)`` (a fraction of the full model's
    cost: FLOPs, predicted latency...) is at most ``fraction``, as close as the steps allow.

    As :meth:`ChannelGraph.counts_for_flops`: ratios ``s * shape[g]`` with one shared scale found
    by bisection, widths on ``multiple``; then single steps toward the target.
    """
    names = [g.name for g in graph.prunable if shape is None or g.name in shape]
    sizes = {g.name: int(g.size) for g in graph.prunable}
    rel = {n: 1.0 if shape is None else float(shape[n]) for n in names}

    def at(s: float) -> dict[str, int]:
        out = {}
        for n in names:
            r = min(s * rel[n], max_ratio)
            k = sizes[n] - math.floor(r * sizes[n])
            if multiple > 1 and sizes[n] >= 2 * multiple:
                k = max(round(k / multiple) * multiple, multiple)
            out[n] = int(min(max(k, 1), sizes[n]))
        return out

    if not names or max(rel.values()) <= 0:
        return {n: sizes[n] for n in names}
    hi = max_ratio / min(v for v in rel.values() if v > 0)
    if cost(at(hi)) > fraction:
        return at(hi)
    lo = 0.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if cost(at(mid)) > fraction:
            lo = mid
        else:
            hi = mid
    counts = at(hi)
    return refine_under(counts, cost, fraction, sizes, multiple)


def refine_under(counts: Mapping[str, int], cost: Callable[[Mapping[str, int]], float], fraction: float,
                 sizes: Mapping[str, int], multiple: int, steps: int = 100) -> dict[str, int]:  # fmt: skip
    """Give back single steps of channels (least-pruned-last) while the cost stays within ``fraction``."""
    counts = dict(counts)
    for _ in range(steps):
        order = sorted(counts, key=lambda n: counts[n] / sizes[n])
        moved = False
        for n in order:
            st = multiple if multiple > 1 and sizes[n] >= 2 * multiple else 1
            k = counts[n] + st
            if k > sizes[n]:
                continue
            if cost({**counts, n: k}) <= fraction:
                counts[n] = k
                moved = True
                break
        if not moved:
            break
    return counts


__all__ = [
    "LatencyModel",
    "Layer",
    "LayerTable",
    "build_latency_model",
    "cache_dir",
    "counts_for_cost",
    "find_layers",
    "measure_plan",
    "measure_plans",
    "padded",
    "random_counts",
    "refine_under",
    "runtime_channel_block",
]
