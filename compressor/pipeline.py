"""``compress run``: the whole pipeline, from a checkpoint to a validated ONNX model and a report.

    load -> profile -> search -> slim -> fine-tune -> export (+ simplify) -> validate -> report

Every stage is a public function of another room (checkpoint, graph, methods, train, export);
this module composes them, decides what to resume, writes the artifacts of DESIGN.md into ``out``
and turns the numbers into budgets with pass/fail::

    out/
      model.onnx  model.pt  plan.json  candidates.jsonl  report.json  report.html  test_data_set_0/
      .state/     run fingerprint, cached profile of the original, scratch ONNX files

Settings come from the deploy target, then a ``--config`` TOML file, then the arguments (flags).

Resuming: a rerun with the same settings into the same ``out`` picks up what was finished
(``plan.json`` -> the search is skipped; ``candidates.jsonl`` -> the search resumes after the
candidates already scored; the fine-tune checkpoint ``model.pt`` -> training resumes from its
last epoch) and says so. A rerun with *different* settings (another checkpoint, method, budget,
epochs, seed, data...) is refused with a :class:`UsageError` rather than mixing stale artifacts
in: pick another ``out`` or pass ``force=True`` (``--force``) to discard them and start over.

Latency budget: when the target or ``latency_ms`` sets one, the chosen plan must meet it on ONNX
Runtime with the target's settings. The best few candidates (EagleEye: by score; deterministic
methods: the plan at the FLOPs target, then plans at lower FLOPs) are slimmed, exported and timed,
and the best one that fits is chosen; when none fits, a report is written and
:class:`BudgetError` says what was reached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compressor.errors import BudgetError, CompressorError, UsageError, ValidationError
from compressor.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl

STAGES = ("load", "profile", "search", "slim", "finetune", "export", "validate", "report")
ARTIFACTS = (
    "model.onnx",
    "model.pt",
    "plan.json",
    "candidates.jsonl",
    "report.json",
    "report.html",
    "test_data_set_0",
)
STATE_DIR = ".state"
RUN_STATE_FORMAT = "compressor.run-state/1"

#: Defaults when neither the target, the config file nor a flag says otherwise. Sized so that the
#: README demo (ResNet on mnist5k) runs end to end in a few minutes on 2 CPU cores.
DEFAULTS: dict[str, Any] = {
    "method": "eagleeye",
    "epochs": 10,
    "device": "auto",
    "seed": 0,
    "candidates": 20,  # EagleEye candidates scored by adaptive BN
    "calib_batches": 10,  # adaptive-BN calibration batches per candidate
    "top_k": 3,  # EagleEye: fine-tune the top-k 1 epoch each, keep the best (1 = take the best score)
    "batch_size": 64,
    # fine-tuning learning rate: None = the checkpoint's own training recipe (meta["finetune"]["lr"],
    # scaled linearly to this batch size) when it records one, else FALLBACK_LR
    "lr": None,
    "distill": False,  # fine-tune with the original model as teacher
    "latency_candidates": 4,  # how many plans are timed against a latency budget
    "flops_tolerance": 0.01,  # relative slack on the FLOPs budget (methods hit the target within 1%)
}

FALLBACK_LR = 0.01  # the papers' fine-tuning learning rate (EagleEye, EPruner)

#: Keys a ``--config`` TOML file may set (flat), with their types. ``[method_options]`` is a table
#: passed to the method as keyword arguments.
CONFIG_KEYS: dict[str, tuple[type, ...]] = {
    "target": (str,),
    "flops": (float, int),
    "latency_ms": (float, int),
    "percentile": (float, int),
    "max_acc_drop": (float, int),
    "method": (str,),
    "data": (str,),
    "epochs": (int,),
    "device": (str,),
    "seed": (int,),
    "out": (str,),
    "candidates": (int,),
    "calib_batches": (int,),
    "top_k": (int,),
    "batch_size": (int,),
    "lr": (float, int),
    "distill": (bool,),
    "latency_candidates": (int,),
    "flops_tolerance": (float, int),
    "arch": (str,),
    "method_options": (dict,),
}

#: Settings that define what a run produces (its fingerprint); the device and out folder do not.
FINGERPRINT_KEYS = (
    "target",
    "flops",
    "latency_ms",
    "percentile",
    "max_acc_drop",
    "method",
    "data",
    "epochs",
    "seed",
    "candidates",
    "calib_batches",
    "top_k",
    "batch_size",
    "lr",
    "distill",
    "latency_candidates",
    "flops_tolerance",
    "arch",
    "method_options",
    "channel_multiple",
)


# ----------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """Resolved settings of one run (target < config file < flags)."""

    checkpoint: str
    target: str
    method: str
    flops: float
    latency_ms: float | None
    percentile: float
    max_acc_drop: float
    data: str | None
    epochs: int
    device: str
    seed: int
    out: str
    candidates: int
    calib_batches: int
    top_k: int
    batch_size: int
    lr: float | None
    distill: bool
    latency_candidates: int
    flops_tolerance: float
    arch: str | None = None
    channel_multiple: int = 1
    batch: int = 1
    method_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        d = self.to_dict()
        return {k: d[k] for k in FINGERPRINT_KEYS}


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a run config TOML: flat keys of :data:`CONFIG_KEYS`; unknown keys are an error."""
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {str(p)!r} does not exist")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config file {str(p)!r} is not valid TOML: {e}") from e
    if isinstance(raw.get("run"), dict) and len(raw) == 1:  # also accept everything under [run]
        raw = raw["run"]
    for k, v in raw.items():
        if k not in CONFIG_KEYS:
            raise UsageError(f"{p}: unknown key {k!r}; valid keys: {', '.join(sorted(CONFIG_KEYS))}")
        types = CONFIG_KEYS[k]
        if isinstance(v, bool) and bool not in types or not isinstance(v, types):
            want = " or ".join(t.__name__ for t in types)
            raise UsageError(f"{p}: {k} = {v!r} is invalid: expected {want}")
    return raw


def resolve_settings(
    checkpoint: str | os.PathLike[str], flags: dict[str, Any], config: str | os.PathLike[str] | None
) -> tuple[Settings, Any]:
    """Merge target < config < flags (``None`` flags are "not given"). Returns (settings, target)."""
    from compressor.methods import check_flops, list_methods
    from compressor.targets import list_targets, load_target

    cfg = load_config(config) if config is not None else {}
    given = {k: v for k, v in flags.items() if v is not None}
    merged: dict[str, Any] = {**cfg, **given}
    target_name = merged.get("target")
    if not target_name:
        raise UsageError(
            f"no deploy target: pass --target NAME (valid: {', '.join(list_targets())}) or a .toml path"
        )
    overrides = {k: merged[k] for k in ("flops", "latency_ms", "percentile", "max_acc_drop") if k in merged}
    if "flops" in overrides:
        check_flops(overrides["flops"])
    lat = overrides.get("latency_ms")
    if lat is not None and not (isinstance(lat, (int, float)) and lat > 0):
        raise UsageError(f"--latency-ms {lat} must be a positive number of milliseconds")
    target = load_target(str(target_name), **{k: float(v) for k, v in overrides.items()})
    method = str(merged.get("method", DEFAULTS["method"]))
    methods = list_methods()
    if method not in methods:
        raise UsageError(f"unknown method {method!r}; valid: {', '.join(methods)}")

    def pick(key: str) -> Any:
        return merged.get(key, DEFAULTS.get(key))

    s = Settings(
        checkpoint=str(checkpoint),
        target=str(target_name),
        method=method,
        flops=float(target.budget.flops),
        latency_ms=None if target.budget.latency_ms is None else float(target.budget.latency_ms),
        percentile=float(target.budget.percentile),
        max_acc_drop=float(target.budget.max_acc_drop),
        data=merged.get("data"),
        epochs=int(pick("epochs")),
        device=str(pick("device")),
        seed=int(pick("seed")),
        out=str(merged.get("out", "out")),
        candidates=int(pick("candidates")),
        calib_batches=int(pick("calib_batches")),
        top_k=int(pick("top_k")),
        batch_size=int(pick("batch_size")),
        lr=None if pick("lr") is None else float(pick("lr")),
        distill=bool(pick("distill")),
        latency_candidates=int(pick("latency_candidates")),
        flops_tolerance=float(pick("flops_tolerance")),
        arch=merged.get("arch"),
        channel_multiple=int(target.export.channel_multiple),
        batch=int(target.input.batch),
        method_options=dict(merged.get("method_options") or {}),
    )
    for key, lo in (
        ("epochs", 0),
        ("candidates", 1),
        ("calib_batches", 1),
        ("top_k", 1),
        ("batch_size", 1),
        ("latency_candidates", 1),
    ):
        v = getattr(s, key)
        if v < lo:
            raise UsageError(f"--{key.replace('_', '-')} {v} must be at least {lo}")
    if s.device not in ("auto", "cpu") and not s.device.startswith("cuda"):
        raise UsageError(f"--device {s.device!r} is not valid; use auto, cpu, cuda or cuda:N")
    if s.lr is not None and not s.lr > 0:
        raise UsageError(f"lr {s.lr} must be positive")
    return s, target


# ----------------------------------------------------------------------------------------------
# progress and timing
# ----------------------------------------------------------------------------------------------


class _Run:
    """Per-stage timing, status lines and notes of one run."""

    def __init__(self, console: Any, progress: bool) -> None:
        self.console = console
        self.progress = progress
        self.stages: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.t0 = time.perf_counter()

    def say(self, text: str) -> None:
        if self.progress:
            self.console.print(text)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.say(f"  [cyan]·[/] {text}")

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        idx = STAGES.index(name) + 1 if name in STAGES else 0
        rec: dict[str, Any] = {"name": name, "status": "done", "note": ""}
        self.say(f"[bold]\\[{idx}/{len(STAGES)}] {name}[/]")
        t = time.perf_counter()
        try:
            if self.progress and name not in ("search", "finetune"):
                with self.console.status(f"{name}…", spinner="dots"):
                    yield rec
            else:
                yield rec
        except _BudgetStop:
            rec["status"] = "budget not met"
            self.say(f"  [red]✗[/] {name}: budget not met after {time.perf_counter() - t:.1f} s")
            raise
        except BaseException:
            rec["status"] = "failed"
            raise
        finally:
            rec["seconds"] = round(time.perf_counter() - t, 3)
            self.stages.append(rec)
            if rec["status"] not in ("failed", "budget not met"):
                extra = f" ({rec['note']})" if rec.get("note") else ""
                self.say(f"  [green]✓[/] {name} {rec['status']} in {rec['seconds']:.1f} s{extra}")


def _resolve_device(device: str) -> str:
    from compressor.evaluate import resolve_device

    return str(resolve_device(device))


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _command_line(checkpoint: Any, s: Settings) -> str:
    """The call as Python (the CLI passes its exact command line instead)."""
    return f"compressor.run({str(checkpoint)!r}, target={s.target!r}, flops={s.flops}, method={s.method!r}, out={s.out!r})"


# ----------------------------------------------------------------------------------------------
# the out folder: fingerprint, resume, force
# ----------------------------------------------------------------------------------------------


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (to name exactly what changed between two runs)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _prepare_out(out: Path, fingerprint: dict[str, Any], *, force: bool, run: _Run) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder for the artifacts")
    fingerprint = json.loads(json.dumps(fingerprint, default=str))  # as it reads back from run.json
    state_file = out / STATE_DIR / "run.json"
    present = [a for a in ARTIFACTS if (out / a).exists()]
    if force:
        for a in (*ARTIFACTS, "model.pt.state"):  # and an interrupted fine-tune's state
            p = out / a
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)
        if present:
            run.note(f"--force: discarded the earlier artifacts in {out} ({', '.join(present)})")
    elif state_file.is_file():
        try:
            old = json.loads(state_file.read_text(encoding="utf-8")).get("fingerprint") or {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        if old != fingerprint:
            was, now = _flat(old), _flat(fingerprint)
            diff = [
                f"{k}: {was.get(k)!r} -> {now.get(k)!r}"
                for k in sorted(set(was) | set(now))
                if was.get(k) != now.get(k)
            ]
            diff = diff[:6] + (["..."] if len(diff) > 6 else [])
            raise UsageError(
                f"{out} holds the artifacts of a run with different settings ({'; '.join(diff) or 'unreadable state'}); "
                "pick a new --out, or pass --force to discard them and start over"
            )
        if present:
            run.note(
                f"resuming in {out}: found {', '.join(present)} from an earlier run with the same settings"
            )
    elif present:
        raise UsageError(
            f"{out} already holds {', '.join(present)} not written by 'compress run' with a known fingerprint; "
            "pick a new --out, or pass --force to replace them"
        )
    try:
        (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the output folder {str(out)!r}: {e}") from e
    if not os.access(out, os.W_OK):
        raise UsageError(f"output folder {str(out)!r} is not writable")
    atomic_write_json(state_file, {"format": RUN_STATE_FORMAT, "fingerprint": fingerprint})


# ----------------------------------------------------------------------------------------------
# helpers around the other rooms
# ----------------------------------------------------------------------------------------------


def _val(obj: Any, *names: str, default: Any = None) -> Any:
    """First present attribute / key of ``obj`` among ``names``."""
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if not isinstance(obj, dict) and hasattr(obj, n):
            return getattr(obj, n)
    return default


def _top1(acc: Any) -> float | None:
    v = _val(acc, "top1", default=None) if acc is not None else None
    return None if v is None else float(v)


def _export(
    model: Any, path: Path, s: Settings, target: Any, shape: tuple[int, ...], *, simplify: bool = True
) -> Any:
    from compressor.export import export_onnx

    return export_onnx(
        model,
        path,
        input_shape=(s.batch, *shape),
        opset=int(target.export.opset),
        dynamic_batch=bool(target.export.dynamic_batch),
        simplify=simplify,
    )


def _latency(
    paths: list[Path], target: Any, shape: tuple[int, ...], *, time_budget_s: float = 3.0
) -> list[dict[str, Any]]:
    """Latency of several ONNX files timed interleaved (so machine load falls on all alike), with samples."""
    import numpy as np

    from compressor.export.runtime import (
        concrete_shape,
        input_meta,
        machine_note,
        make_session,
        summarize,
        time_sessions,
    )

    rng = np.random.default_rng(0)
    sessions, infos = [], []
    for p in paths:
        sess, info = make_session(p, target.runtime)
        name, _, _ = input_meta(sess)
        sh = concrete_shape(sess, target.input.batch, (target.input.batch, *shape))
        sessions.append((sess, {name: rng.standard_normal(sh).astype(np.float32)}))
        infos.append(info)
    times = time_sessions(sessions, time_budget_s=time_budget_s)
    out = []
    for p, t, info in zip(paths, times, infos, strict=True):
        r = summarize(t, target.budget.percentile)
        r.update(
            path=str(p),
            session=info.to_dict(),
            measured_on=machine_note(target),
            samples=[round(float(v), 4) for v in t],
        )
        out.append(r)
    return out


def _at_percentile(lat: dict[str, Any], pct: float) -> float:
    v = lat.get("at_percentile")
    if v is not None:
        return float(v)
    import numpy as np

    return float(np.percentile(np.asarray(lat["samples"]), pct))


# ----------------------------------------------------------------------------------------------
# the pipeline
# ----------------------------------------------------------------------------------------------


def run(
    checkpoint: str | os.PathLike[str],
    *,
    target: str | None = None,
    flops: float | None = None,
    latency_ms: float | None = None,
    method: str | None = None,
    data: str | None = None,
    epochs: int | None = None,
    device: str | None = None,
    seed: int | None = None,
    config: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    force: bool = False,
    candidates: int | None = None,
    top_k: int | None = None,
    lr: float | None = None,
    max_acc_drop: float | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    command: str | None = None,
    console: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Compress ``checkpoint`` for ``target`` and return the report (also written to ``out``).

    Arguments left ``None`` take their value from the config file, then the target, then
    :data:`DEFAULTS` (method ``"eagleeye"``, out ``"out"``...). ``dry_run`` loads and profiles
    the model and returns what would run with a time estimate, writing nothing.

    Raises :class:`UsageError` (bad input, exit 2), :class:`BudgetError` (a budget not met, exit 3,
    after writing the report) or :class:`ValidationError` (the ONNX model is wrong, exit 4, after
    writing the report).

    >>> report = run("examples/resnet_mnist.pt", target="mobile", flops=0.5, out="out")  # doctest: +SKIP
    >>> report["status"]
    'passed'
    """
    from rich.console import Console

    console = console or Console(stderr=True, highlight=False)
    ck = Path(checkpoint)
    if ck.is_dir():
        raise UsageError(f"checkpoint {str(ck)!r} is a directory, not a file")
    if not ck.is_file():
        raise UsageError(
            f"checkpoint {str(ck)!r} does not exist" + ("" if ck.suffix else " (expected a .pt file)")
        )
    flags = {
        "target": target,
        "flops": flops,
        "latency_ms": latency_ms,
        "method": method,
        "data": data,
        "epochs": epochs,
        "device": device,
        "seed": seed,
        "out": None if out is None else str(out),
        "candidates": candidates,
        "top_k": top_k,
        "lr": lr,
        "max_acc_drop": max_acc_drop,
        "arch": arch,
    }
    s, tgt = resolve_settings(ck, flags, config)
    r = _Run(console, progress)
    ctx = _Context(s=s, target=tgt, run=r, out=Path(s.out), command=command or _command_line(ck, s))
    ctx.device = _resolve_device(s.device)  # a CUDA request on a machine without CUDA fails here, early
    ctx.ck_sha = sha256_file(ck)
    if dry_run:
        return _dry_run(ctx, trust_pickle=trust_pickle)
    ctx.world = int(os.environ.get("WORLD_SIZE", "1"))
    if ctx.world > 1:  # under torchrun: one process group for the search and DDP fine-tuning
        from compressor.search_loop import init_distributed

        ctx.rank, ctx.world = init_distributed(ctx.device)
        r.progress = progress and ctx.rank == 0
    err = None
    if ctx.rank == 0:
        try:
            fp = {
                "checkpoint_sha256": ctx.ck_sha,
                **s.fingerprint(),
                "target_settings": tgt.to_dict() if hasattr(tgt, "to_dict") else None,
            }
            _prepare_out(ctx.out, fp, force=force, run=r)
        except UsageError as e:
            err = str(e)
            if ctx.world <= 1:
                raise
    err = _shared(ctx, err)
    if err:
        raise UsageError(err)
    return _full_run(ctx, trust_pickle=trust_pickle)


@dataclass
class _Context:
    s: Settings
    target: Any
    run: _Run
    out: Path
    command: str
    ck_sha: str = ""
    model: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] = ()
    graph: Any = None
    bundle: Any = None
    device: str = "cpu"
    original: dict[str, Any] = field(default_factory=dict)
    compressed: dict[str, Any] = field(default_factory=dict)
    plan: Any = None
    search: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)
    export_info: dict[str, Any] = field(default_factory=dict)
    multiple_noted: bool = False
    rank: int = 0
    world: int = 1
    lr: float = FALLBACK_LR

    @property
    def state(self) -> Path:
        return self.out / STATE_DIR


def _load(ctx: _Context, *, trust_pickle: bool) -> None:
    from compressor.checkpoint import load_checkpoint
    from compressor.graph import build_graph

    s = ctx.s
    with ctx.run.stage("load") as st:
        ctx.model, meta = load_checkpoint(s.checkpoint, arch=s.arch, trust_pickle=trust_pickle)
        ctx.meta = dict(meta or {})
        shape = ctx.meta.get("input_shape") or ctx.target.input.shape
        if not shape:
            raise UsageError(
                f"checkpoint {s.checkpoint!r} does not record its input shape and target {s.target!r} gives none; "
                "add [input] shape = [C, H, W] to a target file"
            )
        ctx.shape = tuple(int(v) for v in shape)
        spec = s.data or ctx.meta.get("dataset")
        if not spec:
            raise UsageError(
                f"checkpoint {s.checkpoint!r} does not name its dataset: pass --data (mnist5k, cifar10:DIR or imagefolder:DIR)"
            )
        s.data = str(spec)
        from compressor.data import load_data

        ctx.bundle = load_data(s.data, meta=ctx.meta)
        ctx.lr = _finetune_lr(s, ctx.meta)
        ctx.graph = build_graph(ctx.model, input_shape=(1, *ctx.shape))
        n_pr = len(ctx.graph.prunable)
        st["note"] = (
            f"{ctx.meta.get('arch', type(ctx.model).__name__)}, input {list(ctx.shape)}, data {s.data}, "
            f"{len(ctx.graph.groups)} channel groups ({n_pr} prunable)"
        )


def _finetune_lr(s: Settings, meta: dict[str, Any]) -> float:
    """The fine-tuning learning rate: as given; else the checkpoint's training lr scaled linearly
    to this batch size (a pruned network recovers best with the recipe that trained it); else 0.01."""
    if s.lr is not None:
        return s.lr
    rec: dict[str, Any] = meta["finetune"] if isinstance(meta.get("finetune"), dict) else {}
    lr, bs = rec.get("lr"), rec.get("batch_size")
    if isinstance(lr, (int, float)) and lr > 0 and isinstance(bs, int) and bs > 0:
        return float(lr) * s.batch_size / bs
    return FALLBACK_LR


def _profile(ctx: _Context) -> None:
    """FLOPs, params, accuracy (PyTorch and ONNX Runtime) of the original; cached in .state/."""
    cache = ctx.state / "original.json"
    onnx_path = ctx.state / "original.onnx"
    with ctx.run.stage("profile") as st:
        if ctx.rank != 0:
            st["status"] = "skipped"
            return
        if cache.is_file() and onnx_path.is_file():
            ctx.original = json.loads(cache.read_text(encoding="utf-8"))
            st["status"] = "resumed"
            st["note"] = "profile of the original read from the earlier run"
            return
        from compressor.graph import count

        cost = count(ctx.model, input_shape=(1, *ctx.shape))
        ctx.original = {"macs": int(cost.macs), "params": int(cost.params), "input_shape": list(ctx.shape)}
        _export(ctx.model, onnx_path, ctx.s, ctx.target, ctx.shape, simplify=True)
        v = _run_validate(ctx, onnx_path, ctx.model, write_test_data=False)
        acc = v.accuracy or {}
        ctx.original.update(
            top1=acc.get("torch_top1"),
            top1_ort=acc.get("onnx_top1"),
            top5=acc.get("torch_top5"),
            test_images=acc.get("samples"),
        )
        atomic_write_json(cache, ctx.original)
        st["note"] = (
            f"{ctx.original['macs'] / 1e6:.2f} M MACs, {ctx.original['params'] / 1e3:.1f} k params, "
            f"top-1 {ctx.original['top1']:.2f}% (ONNX Runtime {ctx.original['top1_ort']:.2f}%)"
        )


def _run_validate(
    ctx: _Context, onnx_path: Path, model: Any, *, write_test_data: bool, original_top1: float | None = None
) -> Any:
    """compressor.export.validate without its latency pass (the pipeline times original and
    compressed itself, interleaved, keeping the samples for the report's histogram)."""
    from compressor.export import validate

    return validate(
        onnx_path,
        model,
        target=ctx.target,
        data=ctx.bundle,
        original_accuracy=original_top1,
        batch_size=256,
        latency=False,
        write_test_data=write_test_data,
        seed=ctx.s.seed,
    )


def _accuracy(ctx: _Context, model: Any) -> Any:
    from compressor.data import make_loader
    from compressor.evaluate import accuracy

    return accuracy(model, make_loader(ctx.bundle.test, batch_size=256), device=ctx.device)


# --------------------------------------------------------------------------------- search


def _candidate_plans(ctx: _Context, best_plan: Any) -> Iterator[tuple[dict[str, Any], Any]]:
    """(record, Plan) of the candidates to time against a latency budget, best first, made lazily.

    EagleEye: the method's choice, then the next candidates of ``candidates.jsonl`` by score.
    Deterministic methods: the plan at the FLOPs target, then plans at 15%, 30%... lower FLOPs
    (faster, less accurate), each appended to ``candidates.jsonl``.
    """
    s = ctx.s
    info = best_plan.info or {}
    yield {"index": info.get("candidate", 0), "score": info.get("score")}, best_plan
    if s.method == "eagleeye":
        recs = [c for c in read_jsonl(ctx.out / "candidates.jsonl") if c.get("score") is not None]
        recs.sort(key=lambda c: (-float(c["score"]), int(c.get("index", 0))))
        for c in recs:
            if c.get("index") == info.get("candidate"):
                continue
            plan = _plan_from_record(ctx, c)
            if plan is not None:
                plan.info = {**(plan.info or {}), "candidate": c.get("index"), "score": c.get("score")}
                yield c, plan
        return
    for k in range(1, s.latency_candidates):
        f = round(s.flops * (1.0 - 0.15 * k), 4)
        if f <= 0.05:
            return
        plan = _method_plan(ctx, f)
        plan.info = {**(plan.info or {}), "candidate": k}
        yield _record_candidate(ctx, plan, k, f), plan


def _record_candidate(ctx: _Context, plan: Any, index: int, flops_target: float) -> dict[str, Any]:
    """Append a deterministic method's plan to candidates.jsonl (EagleEye's search writes its own)."""
    cost = ctx.graph.cost(plan)
    rec = {
        "index": index,
        "method": ctx.s.method,
        "flops_target": flops_target,
        "flops": cost.macs / ctx.graph.full.macs,
        "macs": int(cost.macs),
        "params": int(cost.params),
        "counts": {g: len(k) for g, k in plan.groups.items()},
    }
    append_jsonl(ctx.out / "candidates.jsonl", rec)
    return rec


def _plan_from_record(ctx: _Context, rec: dict[str, Any]) -> Any:
    g = ctx.graph
    if rec.get("groups"):
        from compressor.plan import Plan

        return Plan(
            method=ctx.s.method,
            groups={k: list(v) for k, v in rec["groups"].items()},
            group_sizes={k: gr.size for gr in g.groups for k in [gr.name] if k in rec["groups"]},
            seed=ctx.s.seed,
            input_shape=[1, *ctx.shape],
            flops_target=ctx.s.flops,
        )
    if rec.get("counts"):
        return g.plan_from_counts(
            {k: int(v) for k, v in rec["counts"].items()}, method=ctx.s.method, seed=ctx.s.seed
        )
    if rec.get("ratios"):
        return g.plan_from_ratios(
            {k: float(v) for k, v in rec["ratios"].items()}, method=ctx.s.method, seed=ctx.s.seed
        )
    return None


def _method_options(ctx: _Context) -> dict[str, Any]:
    """Options for the method: the run's settings it understands, then the config's [method_options]."""
    import inspect

    from compressor.methods import get_method

    s = ctx.s
    opts: dict[str, Any] = {
        "candidates": s.candidates,
        "calib_batches": s.calib_batches,
        "top_k": s.top_k,
        "batch_size": s.batch_size,
        "candidates_file": str(ctx.out / "candidates.jsonl"),
        "device": ctx.device,
        "progress": ctx.run.progress,
        "meta": ctx.meta,
    }
    if s.channel_multiple > 1:
        opts["multiple"] = s.channel_multiple
    # only the options the method names (methods reject unknown ones); the config's
    # [method_options] go through as given
    params = {
        n
        for n, p in inspect.signature(get_method(s.method)).parameters.items()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    }
    if "multiple" in opts and "multiple" not in params and not ctx.multiple_noted:
        ctx.multiple_noted = True
        ctx.run.note(
            f"method {s.method!r} does not round kept widths to the target's channel multiple "
            f"({s.channel_multiple})"
        )
    opts = {k: v for k, v in opts.items() if k in params}
    opts.update(s.method_options)
    return opts


def _method_plan(ctx: _Context, flops: float) -> Any:
    from compressor.methods import search

    data = ctx.bundle if ctx.s.method == "eagleeye" else None
    return search(
        ctx.model,
        method=ctx.s.method,
        flops=flops,
        data=data,
        graph=ctx.graph,
        input_shape=(1, *ctx.shape),
        seed=ctx.s.seed,
        **_method_options(ctx),
    )


def _search(ctx: _Context) -> None:
    from compressor.plan import Plan

    s = ctx.s
    plan_path = ctx.out / "plan.json"
    cand_path = ctx.out / "candidates.jsonl"
    with ctx.run.stage("search") as st:
        if _shared(ctx, plan_path.is_file()):
            ctx.plan = Plan.load(plan_path)
            ctx.search = dict(ctx.plan.info.get("pipeline") or {})
            st["status"] = "resumed"
            st["note"] = "plan.json from the earlier run; search skipped"
            ctx.run.note("resumed: plan.json found, search skipped")
            return
        if s.method == "eagleeye" and cand_path.is_file():
            n = len(read_jsonl(cand_path))
            ctx.run.note(f"resuming the search: {n} candidates already scored in candidates.jsonl")
            st["status"] = "resumed"
        elif (
            cand_path.is_file() and ctx.rank == 0
        ):  # deterministic methods recompute their few plans in seconds
            cand_path.unlink()
        plan = _method_plan(ctx, s.flops)  # every rank: a search shards its candidates under torchrun
        if ctx.rank != 0:  # rank 0 times candidates on ONNX Runtime and writes the plan
            got = _shared(ctx, None)
            if isinstance(got, str):
                raise BudgetError(got)
            ctx.plan = Plan.from_dict(got)
            return
        try:
            if s.method != "eagleeye":
                plan.info = {**(plan.info or {}), "candidate": 0}
                _record_candidate(ctx, plan, 0, s.flops)
            checked: list[dict[str, Any]] = []
            if s.latency_ms is not None:
                plan, checked = _latency_select(ctx, plan)
        except _BudgetStop as e:
            _shared(ctx, e.message)
            raise
        ctx.search = {"latency_checked": checked}
        plan.info = {**(plan.info or {}), "pipeline": {"latency_checked": checked}}
        plan.save(plan_path)
        ctx.plan = plan
        _shared(ctx, plan.to_dict())
        n = len(read_jsonl(cand_path))
        st["note"] = (
            f"{s.method}: {n} candidate{'s' if n != 1 else ''} in candidates.jsonl, chosen #{plan.info.get('candidate')}"
        )


def _jsonable_info(info: Any) -> Any:
    try:
        json.dumps(info)
        return info
    except TypeError:
        return {k: v for k, v in (info or {}).items() if isinstance(v, (int, float, str, bool, type(None)))}


def _latency_select(ctx: _Context, best_plan: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Time the best candidates on ONNX Runtime; return the first (best) one within the latency budget."""
    import itertools

    from compressor.graph import slim

    s = ctx.s
    assert s.latency_ms is not None
    full = ctx.graph.full.macs
    checked: list[dict[str, Any]] = []
    ctx.run.say(
        f"  timing up to {s.latency_candidates} candidates against the latency budget "
        f"p{s.percentile:g} <= {s.latency_ms:g} ms (ONNX Runtime, target {s.target!r})"
    )
    path = ctx.state / "candidate.onnx"
    for rec, plan in itertools.islice(_candidate_plans(ctx, best_plan), s.latency_candidates):
        small = slim(ctx.model, plan, graph=ctx.graph)
        _export(small, path, s, ctx.target, ctx.shape, simplify=True)
        lat = _latency([path], ctx.target, ctx.shape, time_budget_s=1.5)[0]
        v = _at_percentile(lat, s.percentile)
        fits = v <= s.latency_ms
        row = {
            "id": rec.get("index"),
            "flops": ctx.graph.cost(plan).macs / full,
            "score": rec.get("score"),
            "latency_ms": round(v, 4),
            "p50": lat["p50"],
            "fits": fits,
        }
        checked.append(row)
        ctx.run.say(
            f"    candidate #{row['id']}: FLOPs {row['flops']:.3f}, p{s.percentile:g} {v:.3f} ms "
            + ("[green]fits[/]" if fits else "[red]over budget[/]")
        )
        if fits:
            path.unlink(missing_ok=True)
            return plan, checked
    path.unlink(missing_ok=True)
    best = min(checked, key=lambda c: c["latency_ms"]) if checked else None
    ctx.search = {"latency_checked": checked}
    msg = (
        f"latency budget not met: p{s.percentile:g} <= {s.latency_ms:g} ms on ONNX Runtime (target {s.target!r}); "
        + (
            f"the fastest of {len(checked)} candidates reached {best['latency_ms']:.3f} ms at FLOPs {best['flops']:.3f}"
            if best
            else "no candidate could be timed"
        )
        + "; lower --flops, raise --latency-ms, or use a faster target runtime"
    )
    raise _BudgetStop(msg)


class _BudgetStop(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------------- slim / finetune


def _slim_and_finetune(ctx: _Context) -> Any:
    from compressor.checkpoint import load_checkpoint, save_checkpoint
    from compressor.graph import slim

    s = ctx.s
    model_path = ctx.out / "model.pt"
    done_flag = ctx.state / "finetune.done"
    with ctx.run.stage("slim") as st:
        small = slim(ctx.model, ctx.plan, graph=ctx.graph)
        err = float(ctx.graph.verify(small, ctx.plan))
        ctx.checks.append(
            {
                "name": "slimmed == masked original (max abs diff)",
                "limit": 1e-3,
                "value": err,
                "passed": err <= 1e-3,
                "detail": "proves the physical slimming removed exactly the pruned channels",
            }
        )
        acc = _accuracy(ctx, small)
        ctx.compressed["top1_after_slim"] = _top1(acc)
        st["note"] = (
            f"equivalence error {err:.1e}, top-1 right after slimming {ctx.compressed['top1_after_slim']:.2f}%"
        )

    # the original's training record (accuracy, recipe) moves under compressed_from: it is not this model's
    own = ("accuracy", "finetune", "train_seconds", "train_threads", "trained_by")
    meta = {
        **{k: v for k, v in ctx.meta.items() if k not in own},
        "compressed_from": {
            "checkpoint": s.checkpoint,
            "sha256": ctx.ck_sha,
            **{k: ctx.meta[k] for k in own if k in ctx.meta},
        },
        "compressed_by": {
            "command": ctx.command,
            "method": s.method,
            "flops_target": s.flops,
            "target": s.target,
        },
    }
    with ctx.run.stage("finetune") as st:
        if s.epochs == 0:
            if ctx.rank == 0:
                save_checkpoint(small, model_path, meta=meta)
            st["status"] = "skipped"
            st["note"] = "epochs = 0"
            return small
        if _shared(ctx, done_flag.is_file() and model_path.is_file()):
            model, _ = load_checkpoint(model_path)
            st["status"] = "resumed"
            st["note"] = "fine-tuned model.pt from the earlier run"
            ctx.run.note("resumed: fine-tuning had finished; model.pt reused")
            return model
        from compressor.train import finetune, state_path

        if state_path(model_path).is_file():
            ctx.run.note(
                f"resuming the fine-tune from the last completed epoch in {state_path(model_path).name}"
            )
            st["status"] = "resumed"

        res = finetune(
            small,
            ctx.bundle,
            epochs=s.epochs,
            out=model_path,
            meta=meta,
            lr=ctx.lr,
            batch_size=s.batch_size,
            device=ctx.device,
            seed=s.seed,
            teacher=ctx.model if s.distill else None,
            progress=ctx.run.progress,
            keep_state=False,
        )
        if ctx.rank == 0:
            atomic_write_text(done_flag, "done\n")
        model = res.model.cpu().eval()
        ctx.compressed["finetune_best_acc"] = _val(res, "best_acc")
        return model


# --------------------------------------------------------------------------------- export / validate


def _export_and_validate(ctx: _Context, model: Any) -> None:
    from compressor.graph import count

    s = ctx.s
    # exported and validated in .state/, published to out/ only when the checks pass: a model.onnx
    # in out/ is always a validated one (a failing one stays in .state/ for inspection)
    onnx_path = ctx.state / "model.onnx"
    with ctx.run.stage("export") as st:
        res = _export(model, onnx_path, s, ctx.target, ctx.shape, simplify=True)
        ctx.export_info = res.to_dict() if hasattr(res, "to_dict") else {}
        sim = ctx.export_info.get("simplify") or {}
        st["note"] = f"opset {ctx.export_info.get('opset')}, " + (
            f"simplified {sim.get('nodes_before')} -> {sim.get('nodes_after')} nodes"
            if ctx.export_info.get("simplified")
            else f"not simplified ({sim.get('message') or 'onnxsim off'})"
        )
    with ctx.run.stage("validate") as st:
        cost = count(model, input_shape=(1, *ctx.shape))
        ctx.compressed.update(macs=int(cost.macs), params=int(cost.params))
        v = _run_validate(
            ctx, onnx_path, model, write_test_data=True, original_top1=ctx.original.get("top1_ort")
        )
        acc = v.accuracy or {}
        ctx.compressed.update(
            top1=acc.get("torch_top1"), top1_ort=acc.get("onnx_top1"), top5=acc.get("torch_top5")
        )
        d = v.to_dict()
        ctx.validation = {
            "numerics": d.get("numerics"),
            "accuracy": d.get("accuracy"),
            "test_data_set": d.get("test_data_set"),
            "seconds": d.get("seconds"),
        }
        for c in v.checks:
            if c.kind == "validation":
                ctx.checks.append(
                    {
                        "name": {
                            "numerics": "ONNX Runtime vs PyTorch outputs (max abs diff)",
                            "accuracy_agreement": "top-1 ONNX Runtime vs PyTorch (points)",
                        }.get(c.name, c.name),
                        "limit": c.limit,
                        "value": c.value,
                        "passed": None if c.status == "skipped" else c.status == "pass",
                        "detail": c.detail,
                    }
                )
        lats = _latency([ctx.state / "original.onnx", onnx_path], ctx.target, ctx.shape)
        ctx.original["latency"], ctx.compressed["latency"] = lats
        ctx.validation["latency_measured_on"] = lats[1].get("measured_on")
        mad = (d.get("numerics") or {}).get("random", {}).get("max_abs_diff")
        st["note"] = (
            (f"ONNX vs PyTorch max abs diff {mad:.2g}, " if mad is not None else "")
            + f"top-1 {ctx.compressed['top1_ort']:.2f}% on ONNX Runtime, latency p50 {lats[0]['p50']:.3f} -> {lats[1]['p50']:.3f} ms"
        )
        if any(c.kind == "validation" and c.status == "fail" for c in v.checks):
            ctx.run.note(
                f"the ONNX model failed validation; kept for inspection at {onnx_path}, not published"
            )
        else:
            _publish(ctx, onnx_path)


def _publish(ctx: _Context, onnx_path: Path) -> None:
    """Move the validated model.onnx and its test_data_set_0/ from .state/ into out/."""
    for name in ("test_data_set_0",):
        src, dst = onnx_path.parent / name, ctx.out / name
        if src.is_dir():
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(src, dst)
    os.replace(onnx_path, ctx.out / "model.onnx")
    ctx.export_info["path"] = str(ctx.out / "model.onnx")
    if isinstance(ctx.validation.get("test_data_set"), dict):
        ctx.validation["test_data_set"]["folder"] = str(ctx.out / "test_data_set_0")
        ctx.validation["test_data_set"]["files"] = [
            str(ctx.out / "test_data_set_0" / f) for f in ("input_0.pb", "output_0.pb")
        ]


# --------------------------------------------------------------------------------- the report


def _budgets(ctx: _Context) -> list[dict[str, Any]]:
    s, o, c = ctx.s, ctx.original, ctx.compressed
    out: list[dict[str, Any]] = []
    if c.get("macs") is not None and o.get("macs"):
        v = c["macs"] / o["macs"]
        out.append(
            {
                "name": "FLOPs kept (fraction)",
                "limit": s.flops,
                "value": round(v, 4),
                "passed": v <= s.flops * (1 + s.flops_tolerance) + 1e-9,
                "detail": f"compressed MACs / original MACs; {s.flops_tolerance:.0%} tolerance",
            }
        )
    lat = c.get("latency")
    if s.latency_ms is not None:
        detail = f"ONNX Runtime, target {s.target!r} runtime settings, batch {s.batch}, on this machine"
        v = _at_percentile(lat, s.percentile) if lat else None
        checked = ctx.search.get("latency_checked") or []
        if v is None and checked:  # stopped at the search: the fastest candidate timed
            v = min(float(r["latency_ms"]) for r in checked)
            detail = f"fastest of {len(checked)} candidates timed; " + detail
        out.append(
            {
                "name": f"latency p{s.percentile:g} (ms)",
                "limit": s.latency_ms,
                "value": v,
                "passed": None if v is None else v <= s.latency_ms,
                "detail": detail,
            }
        )
    ref = o.get("top1_ort") if o.get("top1_ort") is not None else o.get("top1")
    new = c.get("top1_ort") if c.get("top1_ort") is not None else c.get("top1")
    if ref is not None and new is not None:
        drop = round(ref - new, 4)
        out.append(
            {
                "name": "accuracy drop (top-1 points)",
                "limit": s.max_acc_drop,
                "value": drop,
                "passed": drop <= s.max_acc_drop + 1e-9,
                "detail": "original vs compressed, test split, ONNX Runtime",
            }
        )
    return out


def _checks(ctx: _Context) -> list[dict[str, Any]]:
    return list(ctx.checks)


def _layers(ctx: _Context) -> list[dict[str, Any]]:
    if ctx.graph is None or ctx.plan is None:
        return []
    rows = []
    for gr in ctx.graph.groups:
        kept = ctx.plan.kept(gr.name) if ctx.plan is not None and gr.name in ctx.plan.groups else gr.size
        rows.append(
            {
                "name": gr.name,
                "before": int(gr.size),
                "after": int(kept),
                "frozen": bool(gr.frozen),
                "reason": getattr(gr, "reason", None),
            }
        )
    return rows


def _search_section(ctx: _Context) -> dict[str, Any]:
    s = ctx.s
    full = ctx.original.get("macs") or 1
    recs = read_jsonl(ctx.out / "candidates.jsonl")
    cands = []
    chosen = (ctx.plan.info or {}).get("candidate") if ctx.plan is not None else None
    for r in recs:
        f = _val(r, "flops_ratio", "flops")
        if f is not None and f > 1.5:  # absolute MACs
            f = f / full
        cands.append(
            {
                "id": r.get("index"),
                "flops": f,
                "score": r.get("score"),
                "chosen": chosen is not None and r.get("index") == chosen,
            }
        )
    info = (ctx.plan.info or {}) if ctx.plan is not None else {}
    topk = []
    for t in info.get("finetuned") or []:
        if isinstance(t, dict):
            topk.append(
                {
                    "id": t.get("index"),
                    "score": t.get("score"),
                    "finetuned": _val(t, "finetuned", "finetuned_acc", "ft_acc"),
                    "chosen": t.get("index") == chosen,
                }
            )
    summary = f"{s.method}: {len(cands)} candidate{'s' if len(cands) != 1 else ''} evaluated"
    if s.method == "eagleeye" and info.get("score") is not None:
        nb = info.get("calib_batches")
        summary += (
            f", scored by top-1 after adaptive BN ({nb} calibration batch{'es' if nb != 1 else ''}) on "
            f"{info.get('val_images')} search-validation images; chosen #{chosen} (score {info['score']:.2f}%"
        )
        ep = info.get("finetune_epochs")
        summary += (
            f", the best of the top {len(topk)} after {ep} epoch{'s' if ep != 1 else ''} of fine-tuning each)"
            if topk
            else ", the best score)"
        )
    elif s.method == "epruner" and info.get("beta") is not None:
        summary += f"; Affinity Propagation exemplars with beta {info['beta']:.4g}" + (
            " (given)" if info.get("beta_given") else " (found by bisection on the FLOPs target)"
        )
    chk = ctx.search.get("latency_checked") or []
    if chk:
        summary += f"; {len(chk)} timed against the latency budget"
    return {
        "method": s.method,
        "summary": summary + ".",
        "candidates": cands,
        "chosen": chosen,
        "topk": topk,
        "latency_checked": ctx.search.get("latency_checked") or [],
        "score_label": "adaptive-BN top-1, search-val (%)" if s.method == "eagleeye" else "score",
        "info": _jsonable_info({k: v for k, v in info.items() if k not in ("pipeline", "finetuned")}),
    }


def _build_report(ctx: _Context, status: str, exit_code: int, message: str) -> dict[str, Any]:
    from compressor.report import collect_versions

    s = ctx.s
    report: dict[str, Any] = {
        "status": status,
        "exit_code": exit_code,
        "message": message,
        "command": ctx.command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoint": {"path": s.checkpoint, "sha256": ctx.ck_sha, "arch": ctx.meta.get("arch")},
        "settings": {**s.to_dict(), "device_used": ctx.device, "lr_used": ctx.lr},
        "seeds": {"seed": s.seed, "plan_seed": getattr(ctx.plan, "seed", None)},
        "target": ctx.target.to_dict() if hasattr(ctx.target, "to_dict") else {},
        "original": ctx.original,
        "compressed": ctx.compressed,
        "budgets": _budgets(ctx),
        "checks": _checks(ctx),
        "layers": _layers(ctx),
        "search": _search_section(ctx),
        "export": ctx.export_info,
        "validation": ctx.validation,
        "stages": ctx.run.stages,
        "versions": collect_versions(),
        "artifacts": {a: str(ctx.out / a) for a in ARTIFACTS if (ctx.out / a).exists()},
        "notes": ctx.run.notes,
    }
    if ctx.plan is not None:
        frozen = [g for g in report["layers"] if g["frozen"]]
        if frozen:
            report["notes"] = report["notes"] + [
                f"{len(frozen)} channel groups frozen (not pruned): "
                + "; ".join(f"{g['name']}: {g.get('reason') or 'frozen'}" for g in frozen[:8])
                + (" ..." if len(frozen) > 8 else "")
            ]
    return report


def _finish(ctx: _Context, status: str, exit_code: int, message: str) -> dict[str, Any]:
    from compressor.report import write_report

    with ctx.run.stage("report"):
        report = _build_report(ctx, status, exit_code, message)
        report["artifacts"].update(
            {"report.json": str(ctx.out / "report.json"), "report.html": str(ctx.out / "report.html")}
        )
        write_report(report, ctx.out)
    # the report's own stage time is known only now: rewrite report.json with it (cheap)
    report["stages"] = ctx.run.stages
    write_report(report, ctx.out)
    return report


def _shared(ctx: _Context, value: Any) -> Any:
    """Rank 0's value on every rank under torchrun (identity in one process)."""
    if ctx.world <= 1:
        return value
    from compressor.search_loop import broadcast_object

    return broadcast_object(value)


def _with_report(err: CompressorError, report: dict[str, Any]) -> CompressorError:
    """Attach the written report to the error so the CLI can still print the summary (and --json)."""
    err.report = report  # type: ignore[attr-defined]
    return err


def _full_run(ctx: _Context, *, trust_pickle: bool) -> dict[str, Any]:
    _load(ctx, trust_pickle=trust_pickle)
    _profile(ctx)
    try:
        _search(ctx)
    except _BudgetStop as e:
        if (ctx.state / "original.onnx").is_file():  # the report still compares with the original's latency
            ctx.original["latency"] = _latency([ctx.state / "original.onnx"], ctx.target, ctx.shape)[0]
        report = _finish(ctx, "budget_not_met", 3, e.message)
        raise _with_report(BudgetError(e.message + f"; report: {ctx.out / 'report.html'}"), report) from None
    model = _slim_and_finetune(ctx)
    if ctx.rank != 0:  # export, validation and the report are rank 0's
        return {"status": "worker", "rank": ctx.rank, "exit_code": 0}
    try:
        _export_and_validate(ctx, model)
    except ValidationError as e:
        report = _finish(ctx, "validation_failed", 4, str(e))
        raise _with_report(ValidationError(f"{e}; report: {ctx.out / 'report.html'}"), report) from None
    budgets = _budgets(ctx)
    checks = _checks(ctx)
    failed_checks = [c["name"] for c in checks if c.get("passed") is False]
    failed_budgets = [b for b in budgets if b.get("passed") is False]
    if failed_checks:
        msg = "validation failed: " + ", ".join(failed_checks)
        report = _finish(ctx, "validation_failed", 4, msg)
        raise _with_report(ValidationError(f"{msg}; report: {ctx.out / 'report.html'}"), report)
    if failed_budgets:
        msg = "budget not met: " + "; ".join(
            f"{b['name']} reached {b['value']} (limit {b['limit']})" for b in failed_budgets
        )
        report = _finish(ctx, "budget_not_met", 3, msg)
        raise _with_report(BudgetError(f"{msg}; report: {ctx.out / 'report.html'}"), report)
    return _finish(ctx, "passed", 0, "all budgets and checks passed")


# --------------------------------------------------------------------------------- dry run


def _dry_run(ctx: _Context, *, trust_pickle: bool) -> dict[str, Any]:
    """Load and profile; say what would run and estimate how long it takes (writes nothing)."""
    import torch

    from compressor.graph import count

    s = ctx.s
    _load(ctx, trust_pickle=trust_pickle)
    with ctx.run.stage("profile") as st:
        cost = count(ctx.model, input_shape=(1, *ctx.shape))
        ctx.original = {"macs": int(cost.macs), "params": int(cost.params), "input_shape": list(ctx.shape)}
        model = ctx.model.to(ctx.device)
        x = torch.randn(s.batch_size, *ctx.shape, device=ctx.device)
        with torch.no_grad():
            model(x)
            t = time.perf_counter()
            for _ in range(3):
                model(x)
            fwd = (time.perf_counter() - t) / 3  # seconds per batch of batch_size, full model
        ctx.model.cpu()
        st["note"] = f"{fwd * 1e3:.1f} ms per forward batch of {s.batch_size}"
    n_train, n_val, n_test = (len(getattr(ctx.bundle, k)) for k in ("train", "val", "test"))
    per_img = fwd / s.batch_size
    est: dict[str, float] = {}
    est["profile"] = n_test * per_img * 2 + 5.0
    if s.method == "eagleeye":
        per_cand = (s.calib_batches * s.batch_size + n_val) * per_img * s.flops + 0.05
        est["search"] = s.candidates * per_cand + s.top_k * n_train * per_img * 3 * s.flops
    else:
        est["search"] = 5.0
    if s.latency_ms is not None:
        est["search"] += s.latency_candidates * 3.0
    est["slim"] = n_test * per_img * s.flops + 1.0
    # a training step costs ~3 forwards; per-image transforms and the optimizer about as much again
    est["finetune"] = s.epochs * (n_train * per_img * 8 + n_val * per_img) * s.flops
    est["export"] = 3.0
    est["validate"] = n_test * per_img * s.flops * 2 + 8.0
    est["report"] = 0.5
    what = {
        "profile": f"FLOPs, params, top-1 on PyTorch and ONNX Runtime over {n_test} test images",
        "search": (
            f"eagleeye: {s.candidates} candidates at {s.flops:g} FLOPs, adaptive BN on {s.calib_batches} "
            f"batches, scored on {n_val} images"
            if s.method == "eagleeye"
            else f"{s.method} at {s.flops:g} FLOPs"
        )
        + (
            f"; up to {s.latency_candidates} timed against p{s.percentile:g} <= {s.latency_ms:g} ms"
            if s.latency_ms is not None
            else ""
        ),
        "slim": "physical slimming, equivalence check",
        "finetune": f"{s.epochs} epochs on {n_train} images, batch {s.batch_size}, lr {ctx.lr:g}"
        if s.epochs
        else "skipped",
        "export": f"ONNX opset {ctx.target.export.opset}, onnxsim",
        "validate": "numerics, top-1 PyTorch vs ONNX Runtime, latency original vs compressed",
        "report": "report.json, report.html",
    }
    plan = [{"name": k, "estimate_s": round(v, 1), "what": what.get(k, "")} for k, v in est.items()]
    total = sum(est.values())
    report = {
        "status": "dry_run",
        "exit_code": 0,
        "command": ctx.command,
        "message": f"would take about {total / 60:.1f} min on this machine (device {ctx.device}); writes nothing now",
        "checkpoint": {"path": s.checkpoint, "sha256": ctx.ck_sha, "arch": ctx.meta.get("arch")},
        "settings": {**s.to_dict(), "device_used": ctx.device},
        "target": ctx.target.to_dict() if hasattr(ctx.target, "to_dict") else {},
        "original": ctx.original,
        "data": {"train": n_train, "val": n_val, "test": n_test},
        "groups": {"total": len(ctx.graph.groups), "prunable": len(ctx.graph.prunable)},
        "plan": plan,
        "estimate_s": round(total, 1),
        "stages": ctx.run.stages,
        "would_resume": [a for a in ARTIFACTS if (ctx.out / a).exists()],
    }
    return report


def estimate_table(report: dict[str, Any]) -> Any:
    """A rich table of a dry run's stages and time estimates."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(title="compress run --dry-run", title_justify="left")
    t.add_column("stage")
    t.add_column("what")
    t.add_column("estimate", justify="right")
    for row in report.get("plan") or []:
        t.add_row(row["name"], row.get("what", ""), f"{row['estimate_s']:.0f} s")
    t.add_row("[bold]total[/]", "", f"[bold]{report.get('estimate_s', 0):.0f} s[/]")
    o = report.get("original") or {}
    g = report.get("groups") or {}
    head = Text(
        f"{report.get('checkpoint', {}).get('path')}: {o.get('macs', 0) / 1e6:.2f} M MACs, "
        f"{o.get('params', 0) / 1e3:.1f} k params, {g.get('total')} channel groups ({g.get('prunable')} prunable)"
    )
    return Group(head, t, Text(str(report.get("message", ""))))


__all__ = ["run", "resolve_settings", "load_config", "Settings", "DEFAULTS", "ARTIFACTS", "estimate_table"]
