"""ONNX Runtime sessions built from a target's runtime settings, and latency measurement.

Latency is measured on the machine that runs this code, with the target's execution provider,
intra-op threads (capped to this machine's cores) and graph optimisation level: warm-up runs
first (untimed), then timed runs until a time budget is spent (at least ``min_runs``, at most
``max_runs``). Several models are timed interleaved, in alternating blocks, so that load from
other processes on a shared machine falls on all of them alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import UsageError

_OPT = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


@dataclass
class SessionInfo:
    provider: str
    threads_requested: int
    threads_used: int
    graph_optimization_level: str
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "intra_op_threads_requested": self.threads_requested,
            "intra_op_threads_used": self.threads_used,
            "graph_optimization_level": self.graph_optimization_level,
            "notes": list(self.notes),
        }


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def make_session(onnx_path: str | os.PathLike[str], runtime: Any) -> tuple[Any, SessionInfo]:
    """An ``InferenceSession`` for ``runtime`` (a target's ``Runtime``), and what was actually used."""
    import onnxruntime as ort

    provider = runtime.provider
    available = ort.get_available_providers()
    if provider not in available:
        raise UsageError(
            f"execution provider {provider!r} of the target is not available on this machine; "
            f"available: {', '.join(available)} (set [runtime].provider in the target file)"
        )
    notes: list[str] = []
    requested = int(runtime.intra_op_threads)
    cores = cpu_count()
    used = requested
    if requested > cores:
        used = cores
        notes.append(
            f"target asks for {requested} intra-op threads; this machine has {cores} cores: used {cores}"
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads = used
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = runtime.graph_optimization_level
    if level not in _OPT:
        raise UsageError(f"graph_optimization_level {level!r} is invalid; valid: {', '.join(_OPT)}")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT[level])
    so.log_severity_level = 3
    if not Path(onnx_path).is_file():
        raise UsageError(f"ONNX model {str(onnx_path)!r} does not exist")
    try:
        sess = ort.InferenceSession(str(onnx_path), sess_options=so, providers=[provider])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/InvalidGraph types
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(
            f"{onnx_path} is not an ONNX model that ONNX Runtime can load ({first}); export one with 'compress export'"
        ) from e
    return sess, SessionInfo(provider, requested, used, level, notes)


def input_meta(sess: Any) -> tuple[str, list[int | None], str]:
    """(name, shape with None for symbolic dims, output name) of a one-input classifier session."""
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise UsageError(
            f"the ONNX model has {len(inputs)} inputs ({[i.name for i in inputs]}); expected one image input"
        )
    inp = inputs[0]
    shape = [d if isinstance(d, int) else None for d in inp.shape]
    return inp.name, shape, sess.get_outputs()[0].name


def concrete_shape(sess: Any, batch: int, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The input shape to run ``sess`` with: ``input_shape`` if given, else the model's own
    input shape with a symbolic batch set to ``batch``."""
    _, shape, _ = input_meta(sess)
    if input_shape is not None:
        return tuple(int(s) for s in input_shape)
    if any(s is None for s in shape[1:]):
        raise UsageError(
            f"the ONNX model's input shape {shape} has symbolic dimensions besides the batch; pass input_shape"
        )
    rest = [int(s) for s in shape[1:] if s is not None]
    return (shape[0] if shape[0] is not None else batch, *rest)


def summarize(times_ms: list[float], percentile: float | None = None) -> dict[str, Any]:
    a = np.asarray(times_ms, dtype=np.float64)
    out: dict[str, Any] = {
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
        "runs": int(a.size),
    }
    if percentile is not None:
        out["percentile"] = float(percentile)
        out["at_percentile"] = float(np.percentile(a, percentile))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


#: Rest before each block when several multi-threaded sessions are timed interleaved (see
#: :func:`time_sessions`): longer than ONNX Runtime's idle threads spin after a run.
SWITCH_PAUSE_S = 0.05


def _threads(sess: Any) -> int:
    """Intra-op threads of an ``InferenceSession`` (0: ONNX Runtime's default, one per core)."""
    try:
        return int(sess.get_session_options().intra_op_num_threads)
    except Exception:  # noqa: BLE001 - a stand-in session without options: assume the default
        return 0


def time_sessions(
    sessions: list[tuple[Any, dict[str, Any]]],
    *,
    warmup: int = 10,
    min_runs: int = 30,
    max_runs: int = 2000,
    time_budget_s: float = 3.0,
    block: int = 10,
    clock: str = "wall",
) -> list[list[float]]:
    """Time ``sess.run(None, feed)`` for each (session, feed), interleaved in blocks of ``block``.

    Returns the per-run times in milliseconds of each session. The time budget is shared by all
    sessions; every session gets at least ``min_runs`` runs. ``clock="wall"`` (the default) is
    latency as a user sees it; ``clock="thread_cpu"`` is the CPU time of the calling thread,
    which with one intra-op thread (ONNX Runtime then computes on the calling thread) leaves out
    the time other processes pre-empt the run: a steadier figure on a shared machine.

    Several sessions with more than one intra-op thread each get :data:`SWITCH_PAUSE_S` of rest
    before each block (not counted in the budget), and each block then lasts at least five rests:
    after a run, a session's idle threads spin for tens of milliseconds, and on a small machine
    that spinning took the cores from the next session's block (identical models timed
    interleaved differed by up to 1.6x; with the pause, a few percent).
    """
    if clock not in ("wall", "thread_cpu"):
        raise UsageError(f"clock {clock!r} is invalid; valid: wall, thread_cpu")
    now = time.perf_counter if clock == "wall" else time.thread_time
    pause = SWITCH_PAUSE_S if len(sessions) > 1 and any(_threads(s) != 1 for s, _ in sessions) else 0.0
    paused = 0.0
    # warm-up: ``warmup`` runs each, cut short (after at least 2) once a fifth of the budget is spent
    warm_limit = max(0.5, 0.2 * time_budget_s) / max(len(sessions), 1)
    for sess, feed in sessions:
        w0 = time.perf_counter()
        for i in range(warmup):
            sess.run(None, feed)
            if i >= 1 and time.perf_counter() - w0 > warm_limit:
                break
    times: list[list[float]] = [[] for _ in sessions]
    start = time.perf_counter()
    while True:
        for k, (sess, feed) in enumerate(sessions):
            rec = times[k]
            if pause:
                time.sleep(pause)
                paused += pause
            b0 = time.perf_counter()
            i = 0
            # with a rest between blocks, a block also lasts 5 rests, so resting costs at most a fifth
            while i < block or (pause and time.perf_counter() - b0 < 5 * pause and len(rec) < max_runs):
                t0 = now()
                sess.run(None, feed)
                rec.append((now() - t0) * 1e3)
                i += 1
        n = min(len(t) for t in times)
        if n >= max_runs or (n >= min_runs and time.perf_counter() - start - paused >= time_budget_s):
            break
    return times


def measure_latency(
    onnx_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    target: Any,
    input_shape: tuple[int, ...] | None = None,
    warmup: int = 10,
    min_runs: int = 30,
    max_runs: int = 2000,
    time_budget_s: float = 3.0,
    seed: int = 0,
    clock: str = "wall",
) -> dict[str, Any]:
    """ONNX Runtime latency of one model (or several, timed interleaved) with ``target``'s runtime.

    ``input_shape`` includes the batch; by default the model's input shape with the target's batch.
    Returns ``{"p50", "p90", "p99", "mean", "std", "min", "max", "runs", "percentile",
    "at_percentile", "input_shape", "session": {...}, "measured_on": ...}`` in milliseconds; for a
    list of paths, ``{"models": [one such dict per path]}``. ``clock``: see :func:`time_sessions`.
    """
    from compressor.targets import load_target

    target = load_target(target)
    single = isinstance(onnx_path, (str, os.PathLike))
    paths: list[str | os.PathLike[str]] = [onnx_path] if single else list(onnx_path)  # type: ignore[list-item,arg-type]
    rng = np.random.default_rng(seed)
    sessions, infos, shapes = [], [], []
    for p in paths:
        sess, info = make_session(p, target.runtime)
        name, _, _ = input_meta(sess)
        shape = concrete_shape(sess, target.input.batch, input_shape)
        feed = {name: rng.standard_normal(shape).astype(np.float32)}
        sessions.append((sess, feed))
        infos.append(info)
        shapes.append(shape)
    times = time_sessions(
        sessions,
        warmup=warmup,
        min_runs=min_runs,
        max_runs=max_runs,
        time_budget_s=time_budget_s,
        clock=clock,
    )
    results = []
    for p, t, info, shape in zip(paths, times, infos, shapes, strict=True):
        r = summarize(t, target.budget.percentile)
        r.update(
            path=str(p),
            input_shape=list(shape),
            session=info.to_dict(),
            measured_on=machine_note(target),
            clock=clock,
        )
        results.append(r)
    return results[0] if single else {"models": results}


def machine_note(target: Any) -> str:
    import platform

    return (
        f"measured on this machine ({platform.node() or 'unknown host'}, {platform.machine()}, "
        f"{cpu_count()} cores available) with the runtime settings of target {target.name!r} "
        f"({target.runtime.provider}, {target.runtime.intra_op_threads} intra-op threads requested, "
        f"optimisation level {target.runtime.graph_optimization_level!r}), not on the device itself"
    )
