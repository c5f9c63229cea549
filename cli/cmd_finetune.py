"""``compress finetune``: fine-tune a checkpoint (optionally distilling from a teacher)."""

from __future__ import annotations

from pathlib import Path

import typer
from compressor.cli._common import cli_errors, console, print_json


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_cmd)


def finetune_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to fine-tune (e.g. a slimmed model.pt)."),
    data: str | None = typer.Option(
        None,
        help="Data spec: mnist5k, cifar10:DIR or imagefolder:DIR (default: the checkpoint's meta 'dataset').",
    ),
    epochs: int = typer.Option(
        ..., "--epochs", "-e", min=1, help="Number of epochs (a rerun with the same -o resumes)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the fine-tuned checkpoint."),
    teacher: Path | None = typer.Option(
        None, help="Checkpoint to distil from (usually the unpruned model): CE + KL on softened logits."
    ),
    lr: float = typer.Option(0.01, help="Peak learning rate of SGD (cosine schedule to 0)."),
    batch_size: int = typer.Option(64, help="Batch size (per process under torchrun)."),
    weight_decay: float = typer.Option(1e-4, help="Weight decay on conv/linear weights."),
    momentum: float = typer.Option(0.9, help="SGD momentum (nesterov)."),
    warmup_epochs: float = typer.Option(0.0, help="Epochs of linear learning-rate warm-up."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing of the cross-entropy, in [0, 1)."),
    kd_alpha: float = typer.Option(0.5, help="Weight of the distillation term (with --teacher)."),
    kd_temperature: float = typer.Option(4.0, help="Softmax temperature of the distillation term."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (CUDA uses mixed precision)."),
    seed: int = typer.Option(0, help="Seed of initial shuffles and augmentations: same seed, same run."),
    workers: int = typer.Option(0, help="DataLoader worker processes."),
    arch: str | None = typer.Option(
        None, help="Architecture for a bare state_dict, e.g. torchvision.models:resnet18."
    ),
    trust_pickle: bool = typer.Option(
        False, help="Allow a pickled nn.Module checkpoint (runs code from the file)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the result (accuracies, history) as JSON."),
) -> None:
    """Fine-tune CHECKPOINT on its data and write the best epoch to -o (resumable; DDP under torchrun)."""
    with cli_errors():
        from compressor.checkpoint import load_checkpoint
        from compressor.data import load_data
        from compressor.errors import UsageError
        from compressor.train import FinetuneConfig, finetune

        model, meta = load_checkpoint(checkpoint, arch=arch, trust_pickle=trust_pickle)
        spec = data or meta.get("dataset")
        if not spec:
            raise UsageError(
                f"{checkpoint} does not say which dataset it was trained on; pass --data (mnist5k, cifar10:DIR, imagefolder:DIR)"
            )
        bundle = load_data(spec, meta=meta)
        teacher_model = None
        if teacher is not None:
            teacher_model, _ = load_checkpoint(teacher, trust_pickle=trust_pickle)
        recipe = FinetuneConfig(
            epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
            label_smoothing=label_smoothing, batch_size=batch_size, seed=seed, kd_alpha=kd_alpha,
            kd_temperature=kd_temperature, num_workers=workers,
        )  # fmt: skip
        res = finetune(
            model, bundle, recipe, out=output, meta=meta, teacher=teacher_model, device=device,
            progress=progress and not as_json,
        )  # fmt: skip
        from compressor.device import dist_env

        if dist_env()[0] != 0:
            return
        summary = {
            "output": str(output), "dataset": bundle.name, "best_epoch": res.best_epoch, "val_top1": res.best_acc,
            "test_top1": res.test_acc, "resumed_from_epoch": res.resumed_from, "world_size": res.world_size,
            "history": res.history,
        }  # fmt: skip
        if as_json:
            print_json(summary)
            return
        test = f"{res.test_acc:.2f}%" if res.test_acc is not None else "n/a"
        console.print(
            f"[bold]wrote[/] {output}: best epoch {res.best_epoch}/{epochs}, val top-1 {res.best_acc:.2f}%, "
            f"test top-1 {test} ({bundle.name})"
        )
