"""A generic candidate-search loop: budgets, resumable ``candidates.jsonl``, sharding across ranks.

The loop knows nothing about pruning. It is handed ``evaluate(index) -> record``, a function that
builds and scores candidate ``index`` deterministically (the same index always gives the same
candidate, e.g. from an RNG seeded with ``(seed, index)``), and it

* stops after ``candidates`` candidates and/or ``time_budget`` seconds (whichever comes first);
* appends every record to ``candidates_file`` (JSON lines) as soon as it is scored, and on a
  rerun reads the file back and skips the indices already scored, so an interrupted search
  resumes where it stopped;
* under ``torchrun`` (``WORLD_SIZE > 1``) hands candidate ``i`` to rank ``i % world`` (of the
  indices still to score), gathers the records on every rank after each round with
  :meth:`compressor.device.Dist.all_gather`, and lets only rank 0 write the file. For a candidate
  budget the records, and so the best candidate, are the same as in one process;
* shows a rich progress bar (candidates done, best score so far, candidates/min) on rank 0.

EagleEye (:mod:`compressor.methods.eagleeye`) uses it; any method that scores candidates can.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.device import init_distributed
from compressor.errors import UsageError
from compressor.io import append_jsonl, read_jsonl


def search_id(config: dict[str, Any]) -> str:
    """A short stable fingerprint of a search's configuration (which candidates it generates)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """Every scored candidate (read back from the file and scored now), sorted by index."""

    records: list[dict[str, Any]]
    resumed: int = 0
    evaluated: int = 0
    seconds: float = 0.0
    stopped_by: str = "candidates"
    world_size: int = 1
    info: dict[str, Any] = field(default_factory=dict)

    def ranked(self, key: str = "score") -> list[dict[str, Any]]:
        """Best first: highest ``key``, ties broken by the lower index (deterministic)."""
        scored = [r for r in self.records if r.get(key) is not None]
        return sorted(scored, key=lambda r: (-float(r[key]), int(r["index"])))

    def best(self, key: str = "score") -> dict[str, Any] | None:
        ranked = self.ranked(key)
        return ranked[0] if ranked else None


class _Progress:
    """A rich progress bar (rank 0 only): candidates done, best score so far, candidates/min."""

    def __init__(
        self, enabled: bool, total: int | None, done: int, description: str, best: float | None = None
    ) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()
        self.new = 0
        self.bar: Any = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"),
            TextColumn("{task.fields[rate]} cand/min"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.task = self.bar.add_task(
            description, total=total, completed=done, best="-" if best is None else f"{best:.2f}", rate="-"
        )
        self.bar.start()

    def update(self, n_new: int, best: float | None) -> None:
        self.new += n_new
        if not self.enabled:
            return
        minutes = max(time.perf_counter() - self.start, 1e-9) / 60.0
        self.bar.update(
            self.task,
            advance=n_new,
            best="-" if best is None else f"{best:.2f}",
            rate=f"{self.new / minutes:.1f}",
        )

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()


def _pending(done: set[int], candidates: int | None) -> Iterator[int]:
    it: Iterator[int] = iter(range(candidates)) if candidates is not None else itertools.count()
    return (i for i in it if i not in done)


def _read_own_records(path: Path, search_key: str | None, candidates: int | None) -> list[dict[str, Any]]:
    out = []
    for r in read_jsonl(path):
        if r.get("search") != search_key:
            raise UsageError(
                f"candidates file {str(path)!r} was written by a different search (search key "
                f"{r.get('search')!r}, this one is {search_key!r}: another seed, FLOPs target, method options "
                "or model); pass another --candidates-file or delete the file to start afresh"
            )
        if "index" in r and (candidates is None or int(r["index"]) < candidates):
            out.append(r)
    return out


def run_search(
    evaluate: Callable[[int], dict[str, Any]],
    *,
    candidates: int | None = None,
    time_budget: float | None = None,
    candidates_file: str | os.PathLike[str] | None = None,
    search_key: str | None = None,
    score_key: str = "score",
    progress: bool = True,
    description: str = "search",
) -> SearchResult:
    """Score candidates ``0, 1, 2, ...`` with ``evaluate`` until a budget is spent.

    ``evaluate(index)`` returns a JSON-serialisable dict with at least ``score_key``; the loop adds
    ``index``, ``seconds`` (wall time of the call), ``rank`` and ``search`` (= ``search_key``).
    ``candidates``: how many candidates in total (resumed ones count); ``time_budget``: seconds
    for this run (checked before each round, so a run may overshoot by one candidate's time).
    Give at least one. ``search_key`` (see :func:`search_id`) identifies the search in the file:
    a file written by a different search is refused rather than silently mixed in.
    """
    if candidates is None and time_budget is None:
        raise UsageError(
            "give a budget: a number of candidates (--candidates N) and/or seconds (--time-budget S)"
        )
    if candidates is not None and candidates < 1:
        raise UsageError(f"--candidates {candidates} must be at least 1")
    if time_budget is not None and time_budget <= 0:
        raise UsageError(f"--time-budget {time_budget} must be a positive number of seconds")
    d = init_distributed()  # under torchrun: joins the process group if the caller has not
    rank, world = d.rank, d.world
    path = Path(candidates_file) if candidates_file is not None else None

    # rank 0 reads the file (it is the only writer) and hands the records to the other ranks
    old: list[dict[str, Any]] | str = []
    if path is not None and rank == 0:
        try:
            old = _read_own_records(path, search_key, candidates)
        except UsageError as e:
            old = str(e)
    old = d.broadcast(old)
    if isinstance(old, str):
        raise UsageError(old)
    by_index = {int(r["index"]): r for r in old}
    records = dict(by_index)
    pending = _pending(set(by_index), candidates)

    def best_score() -> float | None:
        scores = [float(r[score_key]) for r in records.values() if r.get(score_key) is not None]
        return max(scores) if scores else None

    bar = _Progress(progress and rank == 0, candidates, len(records), description, best_score())
    start = time.perf_counter()
    stopped_by = "candidates"
    evaluated = 0

    def run_one(i: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        rec = dict(evaluate(i))
        rec.update(index=i, seconds=time.perf_counter() - t0, rank=rank, search=search_key)
        return rec

    try:
        while True:
            if world <= 1:
                if time_budget is not None and time.perf_counter() - start >= time_budget:
                    stopped_by = "time"
                    break
                i = next(pending, None)
                if i is None:
                    break
                new = [run_one(i)]
                exhausted = False
            else:
                round_ = list(itertools.islice(pending, world))
                if not round_:
                    break
                mine = round_[rank] if rank < len(round_) else None
                payload: dict[str, Any] | None = None
                error: str | None = None
                if mine is not None:
                    try:
                        payload = run_one(mine)
                    except Exception as e:  # every rank must reach the gather, then all fail together
                        error = f"candidate {mine} failed on rank {rank}: {e!r}"
                gathered = d.all_gather((payload, error, time.perf_counter() - start))
                errors = [g[1] for g in gathered if g[1]]
                if errors:
                    raise RuntimeError("; ".join(errors))
                new = [g[0] for g in gathered if g[0] is not None]
                # every rank sees the same gathered list, so all agree on when to stop
                if time_budget is not None and max(g[2] for g in gathered) >= time_budget:
                    stopped_by = "time"
                exhausted = len(round_) < world
            for rec in new:
                records[int(rec["index"])] = rec
                if path is not None and rank == 0:
                    append_jsonl(path, rec)
            evaluated += len(new)
            bar.update(len(new), best_score())
            if stopped_by == "time" or exhausted:
                break
    finally:
        bar.close()

    return SearchResult(
        records=[records[i] for i in sorted(records)],
        resumed=len(by_index),
        evaluated=evaluated,
        seconds=time.perf_counter() - start,
        stopped_by=stopped_by,
        world_size=world,
    )
