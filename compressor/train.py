"""Fine-tuning: SGD (momentum, nesterov), cosine schedule with warm-up, optional distillation.

One function, :func:`finetune`, runs in a single process or, started by
``torchrun --nproc-per-node N``, as N DistributedDataParallel processes (NCCL on GPUs, gloo on
CPUs) with a distributed sampler; ``batch_size`` is per process. Only rank 0 writes files.

Resuming: with ``out`` set, every completed epoch writes ``<out>.state`` atomically (model,
optimizer, scheduler, AMP scaler, epoch, best weights, history). Rerunning with the same ``out``
and options continues after the last completed epoch and gives the same weights as an
uninterrupted run (per-epoch seeding). A finished state makes a rerun return at once.
``out`` itself is a compressor checkpoint of the best epoch (by search-validation accuracy).

>>> from compressor.data import load_data
>>> res = finetune(model, load_data("mnist5k"), epochs=5, out="ft.pt", meta=meta)   # doctest: +SKIP
>>> res.best_acc, res.test_acc                                                         # doctest: +SKIP
(98.6, 98.2)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.data import DataBundle, make_loader
from compressor.device import Dist, init_distributed, resolve_device
from compressor.errors import DataError, UsageError
from compressor.evaluate import accuracy
from compressor.io import atomic_write

STATE_VERSION = 1


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns. ``model`` is the best epoch's model, in eval mode, on CPU."""

    model: nn.Module
    best_acc: float  # search-validation top-1 (%) of the best epoch
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch
    best_epoch: int = 0  # 1-based; 0 when no epoch ran
    test_acc: float | None = None  # test top-1 (%) of the best model
    out: Path | None = None
    resumed_from: int = 0  # epochs that were already done when this call started
    world_size: int = 1


def state_path(out: str | os.PathLike[str]) -> Path:
    """Where the resumable training state of ``out`` lives."""
    return Path(str(out) + ".state")


def lr_factor(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Linear warm-up from 1/warmup_steps to 1 over ``warmup_steps``, then a half cosine to 0 at
    ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KL(teacher || student) on softened logits, scaled by T^2."""
    t = float(temperature)
    log_p = F.log_softmax(student.float() / t, dim=1)
    q = F.softmax(teacher.float() / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * (t * t)


# --------------------------------------------------------------------------------------------- helpers
def _check_outputs(model: nn.Module, data: DataBundle, device: torch.device, what: str) -> None:
    x = torch.stack([data.val[i][0] for i in range(min(2, len(data.val)))]).to(device)  # type: ignore[arg-type]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as e:
        raise DataError(
            f"the {what} cannot run on {data.name!r} images of shape {list(x.shape[1:])} "
            f"({str(e).splitlines()[0]}); load the data with the model's meta (input_shape, mean, std) "
            "or pass the data it was trained on"
        ) from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise DataError(
            f"the {what} returned {getattr(out, 'shape', type(out).__name__)}; expected (batch, classes) logits"
        )
    if out.shape[1] != data.num_classes:
        raise DataError(
            f"the {what} predicts {out.shape[1]} classes but dataset {data.name!r} has {data.num_classes}; "
            "pass the data it was trained on (--data)"
        )


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights of convolutions and linear layers, not on BN parameters and biases."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"cannot read the fine-tuning state {path} ({e}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise UsageError(
            f"{path} is not a fine-tuning state this version understands; delete it to start over"
        )
    return state


class _Bar:
    """A rich progress bar (loss, accuracy, images/s) on stderr; silent when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "loss {task.fields[loss]:.4f}  acc {task.fields[acc]:5.1f}%  {task.fields[ips]:6.0f} img/s"
                ),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start(self, epoch: str, total: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task("train", total=total, epoch=epoch, loss=0.0, acc=0.0, ips=0.0)

    def update(self, advance: int = 1, **fields: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=advance, **fields)

    def log(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)


# -------------------------------------------------------------------------------------------- finetune
@dataclass(frozen=True)
class FinetuneConfig:
    """The training recipe. A resumed fine-tune must use the same recipe as the interrupted one.

    ``lr``: peak learning rate of SGD (``momentum``, Nesterov when ``nesterov``), a linear warm-up
    over ``warmup_epochs`` then a half cosine to 0; ``weight_decay`` on conv/linear weights only;
    ``batch_size`` per process; ``kd_alpha``/``kd_temperature``: the distillation term when a
    teacher is given; ``amp`` (default: on for CUDA): bfloat16 autocast where supported, else
    float16 with a gradient scaler. Invalid values are a :class:`UsageError` on construction.
    """

    epochs: int
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    batch_size: int = 64
    seed: int = 0
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    eval_batch_size: int = 256
    num_workers: int = 0
    amp: bool | None = None

    def __post_init__(self) -> None:
        epochs = self.epochs
        if int(epochs) != epochs or epochs < 0:
            raise UsageError(f"epochs must be a whole number >= 0, got {epochs}")
        object.__setattr__(self, "epochs", int(epochs))
        if not self.lr > 0:
            raise UsageError(f"learning rate must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0 or (self.epochs and self.warmup_epochs > self.epochs):
            raise UsageError(f"warmup epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if not 0.0 <= self.kd_alpha <= 1.0 or self.kd_temperature <= 0:
            raise UsageError(
                f"kd_alpha must be in [0, 1] and kd_temperature > 0, got {self.kd_alpha}, {self.kd_temperature}"
            )

    def state_key(self, *, world: int, steps: int, distill: bool) -> dict[str, Any]:
        """What ``<out>.state`` records to refuse resuming with another recipe."""
        return {
            "epochs": self.epochs, "lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
            "weight_decay": self.weight_decay, "warmup_epochs": float(self.warmup_epochs),
            "label_smoothing": self.label_smoothing, "batch_size": self.batch_size, "seed": self.seed,
            "world_size": world, "steps_per_epoch": steps, "distill": distill,
            "kd_alpha": self.kd_alpha if distill else None,
            "kd_temperature": self.kd_temperature if distill else None,
        }  # fmt: skip


@dataclass
class _Job:
    """Where one fine-tune runs and what it writes (everything that is not the recipe)."""

    dist: Dist
    device: torch.device
    out: Path | None
    meta: dict[str, Any] | None
    teacher: nn.Module | None
    progress: bool
    keep_state: bool


def finetune(
    model: nn.Module,
    data: DataBundle,
    config: FinetuneConfig | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    meta: dict[str, Any] | None = None,
    teacher: nn.Module | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    keep_state: bool = True,
    **recipe: Any,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``data.train``, keep the epoch best on ``data.val``; see the module doc.

    The recipe is ``config`` (a :class:`FinetuneConfig`), or its fields as keyword arguments
    (``finetune(model, data, epochs=5, lr=0.05)``), which also override a given ``config``.
    ``teacher`` (e.g. the unpruned model) adds distillation: loss = (1 - kd_alpha) * CE +
    kd_alpha * T^2 * KL on logits softened by ``kd_temperature``. ``out`` needs
    ``meta['arch']`` (a checkpoint's meta); the data's dataset, input shape, classes and
    normalisation, and the accuracies reached, are written into the saved meta.
    ``keep_state=False`` deletes ``<out>.state`` once ``out`` is written.
    """
    if config is None:
        if "epochs" not in recipe:
            raise UsageError("finetune needs a number of epochs (epochs=N, or a FinetuneConfig)")
        config = FinetuneConfig(**recipe)
    elif recipe:
        config = dataclasses.replace(config, **recipe)
    if out is not None:
        from compressor.io import ensure_parent

        ensure_parent(out)  # an impossible output path fails now, not after the first epoch
    if out is not None and not (meta or {}).get("arch"):
        raise UsageError(
            "finetune(out=...) writes a compressor checkpoint and needs meta['arch'] (use the meta that "
            "load_checkpoint returned, or {'arch': 'resnet_cifar', 'arch_kwargs': {...}})"
        )

    dev = resolve_device(device)
    d = init_distributed(dev)
    dev = d.device(dev)
    job = _Job(d, dev, None if out is None else Path(out), meta, teacher, progress, keep_state)
    try:
        return _finetune(model, data, config, job)
    finally:
        d.close()


def _finetune(model: nn.Module, data: DataBundle, cfg: FinetuneConfig, job: _Job) -> FinetuneResult:
    d, dev, out, meta, teacher = job.dist, job.device, job.out, job.meta, job.teacher
    world = d.world
    lr, batch_size, seed, label_smoothing = cfg.lr, cfg.batch_size, cfg.seed, cfg.label_smoothing
    kd_alpha, kd_temperature, epochs = cfg.kd_alpha, cfg.kd_temperature, cfg.epochs
    num_workers, eval_batch_size = cfg.num_workers, cfg.eval_batch_size
    torch.manual_seed(seed)
    model = model.to(dev)
    _check_outputs(model, data, dev, "model")
    teacher_device = next(iter(teacher.parameters()), torch.empty(0)).device if teacher is not None else None
    teacher_grads = [p.requires_grad for p in teacher.parameters()] if teacher is not None else []
    if teacher is not None:
        teacher = teacher.to(dev).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        _check_outputs(teacher, data, dev, "teacher")

    use_amp = dev.type == "cuda" if cfg.amp is None else bool(cfg.amp and dev.type == "cuda")
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    n_train = len(data.train)  # type: ignore[arg-type]
    per_rank = n_train // world
    train_loader = make_loader(
        data.train, batch_size, shuffle=True, seed=seed, drop_last=per_rank > batch_size,
        distributed=world > 1, num_workers=num_workers,
    )  # fmt: skip
    val_loader = make_loader(data.val, eval_batch_size, distributed=world > 1, num_workers=num_workers)
    steps = len(train_loader)
    if steps == 0:
        raise DataError(
            f"the train split of {data.name!r} ({n_train} images) gives no batch of size {batch_size}"
        )

    optimizer = torch.optim.SGD(
        _param_groups(model, cfg.weight_decay),
        lr=lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
    )
    total, warm = epochs * steps, int(round(cfg.warmup_epochs * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps=total, warmup_steps=warm)
    )

    config = cfg.state_key(world=world, steps=steps, distill=teacher is not None)
    spath = state_path(out) if out is not None else None
    start, best_acc, best_epoch = 0, -1.0, 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = []
    if spath is not None and spath.exists():
        state = _load_state(spath)
        old = state.get("config", {})
        diff = [k for k in config if old.get(k) != config[k]]
        if diff:
            changes = ", ".join(f"{k}={old.get(k)!r} -> {config[k]!r}" for k in diff)
            raise UsageError(
                f"{spath} holds an interrupted fine-tune with other options ({changes}); rerun with the same "
                f"options to resume it, or delete {spath} to start over"
            )
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise UsageError(
                f"{spath} was written for another model ({str(e).splitlines()[0]}); delete it to start over"
            ) from None
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start, best_acc, best_epoch = int(state["epoch"]), float(state["best_acc"]), int(state["best_epoch"])
        best_state, history = state.get("best_model"), list(state.get("history", []))
        # an uninterrupted run would have lr_lambda bound to this schedule: nothing else to restore
    resumed_from = start

    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    with _Bar(job.progress and d.main) as bar:
        if start:
            bar.log(
                f"resuming {out} after epoch {start}/{epochs} (best val {best_acc:.2f}% at epoch {best_epoch})"
            )
        for epoch in range(start, epochs):
            # Per-epoch seeding: a resumed run draws the same shuffles and augmentations.
            torch.manual_seed(seed + 1_000_003 * (epoch + 1) + 7919 * d.rank)
            sampler = train_loader.sampler
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            if train_loader.generator is not None:
                train_loader.generator.manual_seed(seed + epoch)
            bar.start(f"{epoch + 1}/{epochs}", steps)
            net.train()
            t0 = time.perf_counter()
            # running sums stay on the device; reading them (a sync) happens every few steps only
            loss_t = torch.zeros((), dtype=torch.float64, device=dev)
            correct_t = torch.zeros((), dtype=torch.float64, device=dev)
            seen = 0
            for step, (x, y) in enumerate(train_loader):
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                    logits = net(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
                    if teacher is not None:
                        with torch.no_grad():
                            t_logits = teacher(x)
                        loss = (1.0 - kd_alpha) * loss + kd_alpha * distill_loss(
                            logits, t_logits, kd_temperature
                        )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                n = len(y)
                loss_t += loss.detach().double() * n
                correct_t += (logits.detach().argmax(1) == y).sum()
                seen += n
                if step % 10 == 0 or step == steps - 1:
                    loss_sum = float(loss_t)
                    if not math.isfinite(loss_sum):
                        raise UsageError(
                            f"the training loss became {loss_sum / seen} in epoch {epoch + 1}; lower the learning "
                            f"rate (--lr {lr} now) or add warm-up (--warmup-epochs)"
                        )
                    ips = seen * world / max(time.perf_counter() - t0, 1e-9)
                    bar.update(advance=0, loss=loss_sum / seen, acc=100.0 * float(correct_t) / seen, ips=ips)
                bar.update(advance=1)
            train_time = time.perf_counter() - t0
            loss_sum, correct = float(loss_t), float(correct_t)
            d.average_buffers(model)
            loss_sum, correct, seen_all = d.all_sum([loss_sum, correct, float(seen)], dev)
            val = accuracy(net, val_loader, device=dev)["top1"]
            entry = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": loss_sum / seen_all,
                "train_acc": 100.0 * correct / seen_all,
                "val_acc": val,
                "train_time_s": train_time,
                "img_per_s": seen_all / max(train_time, 1e-9),
            }
            history.append(entry)
            if val > best_acc:
                best_acc, best_epoch, best_state = val, epoch + 1, _cpu_state(model)
            bar.log(
                f"epoch {epoch + 1}/{epochs}: loss {entry['train_loss']:.4f}  train {entry['train_acc']:.2f}%  "
                f"val {val:.2f}%  (best {best_acc:.2f}% @ {best_epoch})  {entry['img_per_s']:.0f} img/s"
            )
            if spath is not None and d.main:
                _save_state(spath, {
                    "version": STATE_VERSION, "config": config, "epoch": epoch + 1, "done": False,
                    "model": _cpu_state(model), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "best_acc": best_acc, "best_epoch": best_epoch, "best_model": best_state, "history": history,
                })  # fmt: skip
            d.barrier()

    if best_state is not None:
        model.load_state_dict(best_state)
    else:  # no epoch ran: the model as given
        best_acc = accuracy(net, val_loader, device=dev)["top1"]
    test_acc: float | None = None
    if len(data.test):  # type: ignore[arg-type]
        test_loader = make_loader(data.test, eval_batch_size, distributed=world > 1, num_workers=num_workers)
        test_acc = accuracy(model, test_loader, device=dev)["top1"]

    model = model.cpu().eval()
    if teacher is not None and teacher_device is not None:  # hand the teacher back as it came
        teacher.to(teacher_device)
        for p, g in zip(teacher.parameters(), teacher_grads, strict=True):
            p.requires_grad_(g)
    out_path = out
    if out_path is not None:
        if d.main:
            from compressor.checkpoint import save_checkpoint

            m = copy.deepcopy(dict(meta or {}))
            m.update(data.meta())
            m["accuracy"] = {"val": best_acc, "test": test_acc}
            m["finetune"] = {**config, "best_epoch": best_epoch, "epochs_run": len(history)}
            save_checkpoint(model, out_path, meta=m)
            if spath is not None:
                if job.keep_state:
                    final = (
                        _load_state(spath) if spath.exists() else {"version": STATE_VERSION, "config": config}
                    )
                    final.update(
                        done=True, epoch=epochs, best_acc=best_acc, best_epoch=best_epoch, history=history
                    )
                    final.setdefault("best_model", best_state)
                    _save_state(spath, final)
                elif spath.exists():
                    spath.unlink()
        d.barrier()
    return FinetuneResult(
        model=model, best_acc=best_acc, history=history, best_epoch=best_epoch, test_acc=test_acc,
        out=out_path, resumed_from=resumed_from, world_size=world,
    )  # fmt: skip
