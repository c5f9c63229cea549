"""One model of a zoo slimmed by compressor, checked from the outside and round-tripped.

Shared by the zoo tests and ``benchmarks/timm_zoo.py`` / ``benchmarks/zoo_slim.py``:

* :func:`engine_slim` slims a (randomised) model with l1-uniform at a FLOPs target and says
  what share of its channels the engine froze and why;
* :func:`roundtrip` saves a slim model as a compressor checkpoint, reloads it **in a fresh
  Python process** and compares the outputs there;
* :data:`TIMM_MODELS` lists the timm models the benchmark covers, one or more per
  convolutional family (a timm module) and per convolutional hybrid, with the input size and
  builder arguments that let each run at a small input.

Equivalence itself is :func:`compressor.testing.outside_check.outside_check`, which does not use
the engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


@dataclass
class EngineResult:
    """What the engine did to one model."""

    small: nn.Module | None
    flops_ratio: float
    groups: int
    prunable_groups: int
    frozen_groups: int
    #: share of the channels (summed over groups) the engine froze
    frozen_channel_share: float
    #: reason -> number of channels frozen for it (reasons shortened: node names removed)
    frozen_reasons: dict[str, int] = field(default_factory=dict)
    trace_s: float = 0.0
    plan_s: float = 0.0
    slim_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.trace_s + self.plan_s + self.slim_s


def _short_reason(reason: str | None) -> str:
    """A frozen group's reason without the node name (``batch_norm_5 (batch_norm) is ...``
    becomes ``batch_norm is ...``), so reasons can be counted across a model."""
    r = reason or "unknown"
    head, sep, tail = r.partition(") ")
    if sep and " (" in head:
        return head.rpartition(" (")[2] + " " + tail
    return r


def engine_slim(model: nn.Module, shape: tuple[int, ...], target: float = 0.5) -> EngineResult:
    """Slim ``model`` with l1-uniform at ``target`` of its FLOPs (the engine's own plan)."""
    from compressor.graph import build_graph, count, slim

    t0 = time.perf_counter()
    graph = build_graph(model, input_shape=shape)
    t1 = time.perf_counter()
    plan = graph.plan_from_counts(graph.counts_for_flops(target), method="l1-uniform")
    t2 = time.perf_counter()
    small = slim(model, plan, graph=graph)
    t3 = time.perf_counter()
    total = sum(g.size for g in graph.groups) or 1
    reasons: Counter[str] = Counter()
    for g in graph.frozen:
        reasons[_short_reason(g.reason)] += g.size
    return EngineResult(
        small=small,
        flops_ratio=count(small, shape).macs / max(graph.full.macs, 1),
        groups=len(graph.groups),
        prunable_groups=len(graph.prunable),
        frozen_groups=len(graph.frozen),
        frozen_channel_share=sum(g.size for g in graph.frozen) / total,
        frozen_reasons=dict(reasons.most_common()),
        trace_s=t1 - t0,
        plan_s=t2 - t1,
        slim_s=t3 - t2,
    )


_RELOAD = r"""
import json, sys, torch
from compressor.checkpoint import load_checkpoint
torch.set_num_threads(1)
model, _ = load_checkpoint(sys.argv[1])
x, y = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    got = model(x)
got = got if isinstance(got, torch.Tensor) else got[0]
scale = float(y.abs().max())
print(json.dumps({"max_abs": float((got - y).abs().max()), "scale": scale}))
"""


@torch.no_grad()
def roundtrip(
    small: nn.Module, arch: str, shape: tuple[int, ...], *, arch_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Save ``small`` as a compressor checkpoint, reload it in a fresh process, compare outputs.

    Returns ``{"ok", "error"}`` where ``error`` is ``max |reloaded - saved| / max |saved|``
    (``ok`` needs it <= 1e-6 and the saved output not identically zero), or ``{"ok": False,
    "why": ...}`` when the reload failed.
    """
    from compressor.checkpoint import save_checkpoint

    small.eval()
    x = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(1))
    y = small(x)
    y = y if isinstance(y, torch.Tensor) else y[0]
    with tempfile.TemporaryDirectory() as tmp:
        ck, io = Path(tmp) / "slim.pt", Path(tmp) / "io.pt"
        save_checkpoint(small, ck, meta={"arch": arch, "arch_kwargs": dict(arch_kwargs or {})})
        torch.save((x, y), io)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        res = subprocess.run(
            [sys.executable, "-c", _RELOAD, str(ck), str(io)], capture_output=True, text=True, env=env
        )
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"ok": False, "why": f"reload failed: {last[:300]}"}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["scale"] == 0.0:
        return {"ok": False, "why": "the saved model's output is identically zero (vacuous)"}
    err = out["max_abs"] / out["scale"]
    return {"ok": err <= 1e-6, "error": err}


#: timm models of the benchmark: name -> (family, input size, builder keyword arguments).
#: Families are timm's modules; ``hybrid`` marks convolution + attention networks.
TIMM_MODELS: dict[str, tuple[str, int, dict[str, Any]]] = {}
