"""The CPU thread count of a stage, chosen by measurement unless the user fixes it.

On a busy machine more intra-op threads can be several times slower than one (a thread waiting
for a core another job holds stalls every parallel region). At the start of a heavy stage a few
training steps of the stage's model are timed at 1, 2, 4 ... N threads and the fastest count is
kept. ``--threads N`` (or ``OMP_NUM_THREADS`` in the environment) fixes it instead. The report
says what was chosen per stage, and the measured steps per second.
"""

from __future__ import annotations

import os
import time
from typing import Any

#: Training steps timed per thread count (after one warm-up step).
STEPS = 3


def candidates(cpus: int) -> list[int]:
    """1, 2, 4 ... up to ``cpus`` (and ``cpus`` itself)."""
    out, n = [], 1
    while n < cpus:
        out.append(n)
        n *= 2
    return [*out, cpus]


def steps_per_second(model: Any, shape: tuple[int, ...], batch: int, threads: int) -> float:
    """Training steps per second of ``model`` on random input at ``threads`` intra-op threads."""
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(batch, *shape)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        out = model(x)
        out.float().mean().backward()
        for p in params:
            p.grad = None

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(STEPS):
        step()
    return STEPS / max(time.perf_counter() - t, 1e-9)


def choose_threads(ctx: Any, stage: str, model: Any) -> dict[str, Any]:
    """Set and record the thread count of ``stage``: fixed by ``--threads``/``OMP_NUM_THREADS``,
    else the fastest measured on ``model`` (CPU only)."""
    import copy

    import torch

    fixed = ctx.s.threads or (
        int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit() else 0
    )
    if fixed:
        torch.set_num_threads(fixed)
        rec: dict[str, Any] = {"chosen": fixed, "how": "--threads" if ctx.s.threads else "OMP_NUM_THREADS"}
    elif not str(ctx.device).startswith("cpu"):
        rec = {"chosen": torch.get_num_threads(), "how": f"not measured on {ctx.device}"}
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        probe = copy.deepcopy(model).cpu()
        batch = max(1, min(ctx.s.batch_size, 16))
        rates = {n: round(steps_per_second(probe, ctx.shape, batch, n), 2) for n in candidates(cpus)}
        best = max(rates, key=lambda n: rates[n])
        torch.set_num_threads(best)
        rec = {"chosen": best, "how": "measured", "steps_per_s": {str(k): v for k, v in rates.items()}}
    ctx.threads[stage] = rec
    extra = f" (steps/s by threads: {rec['steps_per_s']})" if "steps_per_s" in rec else f" ({rec['how']})"
    ctx.log.note(f"{stage}: {rec['chosen']} CPU thread(s){extra}")
    return rec


__all__ = ["candidates", "choose_threads", "steps_per_second"]
