"""Train the second demo model: a small MBConv network (depthwise convolutions, squeeze-excitation,
SiLU; MobileNetV2/EfficientNet-like) on the embedded MNIST subset (mnist5k).

    python examples/train_mobile.py            # writes examples/mbconv_mnist.pt

It trains on mnist5k's training split only, for a fixed number of epochs, and keeps the last
epoch: nothing is selected on the search-validation or test split, so both stay held out for the
benchmarks that use this model. Both are measured once, at the end, and recorded in the meta.
The checkpoint is a compressor checkpoint (architecture, weights and meta: dataset, input shape,
classes, normalisation, accuracies), as ``examples/train_baseline.py`` writes for the ResNet.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

ARCH = "mbconv"
ARCH_KWARGS = {"num_classes": 10, "in_channels": 1, "width_mult": 1.0, "head": 128}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", type=Path, default=HERE / "mbconv_mnist.pt")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--min-test-acc", type=float, default=98.0)
    args = ap.parse_args()

    import torch
    import torch.nn as nn

    torch.set_num_threads(args.threads)
    from compressor.checkpoint import save_checkpoint
    from compressor.data import load_data, make_loader
    from compressor.evaluate import accuracy
    from compressor.models import build_model, canonical_arch
    from compressor.train import lr_factor

    torch.manual_seed(args.seed)
    data = load_data("mnist5k")
    model = build_model(ARCH, **ARCH_KWARGS)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # BN scales/shifts and biases
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        momentum=0.9,
        nesterov=True,
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    steps = args.epochs * len(make_loader(data.train, args.batch_size, drop_last=True))
    warmup = int(args.warmup_epochs * steps / max(args.epochs, 1))
    step = 0
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        torch.manual_seed(args.seed * 1000 + epoch)  # the augmentation stream of this epoch
        loader = make_loader(
            data.train, args.batch_size, shuffle=True, seed=args.seed + epoch, drop_last=True
        )
        model.train()
        total, n = 0.0, 0
        for x, y in loader:
            for g in opt.param_groups:
                g["lr"] = args.lr * lr_factor(step, total_steps=steps, warmup_steps=warmup)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total += loss.item() * len(y)
            n += len(y)
        print(
            f"epoch {epoch + 1}/{args.epochs}: train loss {total / n:.4f} ({time.perf_counter() - t0:.0f} s)"
        )
    took = time.perf_counter() - t0
    model.eval()
    # measured once, after training: neither split chose anything
    val = accuracy(model, make_loader(data.val, 250))["top1"]
    test = accuracy(model, make_loader(data.test, 250))["top1"]
    meta = {
        "arch": canonical_arch(ARCH),
        "arch_kwargs": dict(ARCH_KWARGS),
        "trained_by": "examples/train_mobile.py",
        **data.meta(),
        "classes": list(data.classes),
        "accuracy": {"val": val, "test": test},
        "finetune": {
            "epochs": args.epochs,
            "lr": args.lr,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": args.weight_decay,
            "warmup_epochs": args.warmup_epochs,
            "label_smoothing": args.label_smoothing,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "world_size": 1,
            "selection": "last epoch of a fixed schedule (training split only)",
            "epochs_run": args.epochs,
        },
        "train_seconds": round(took, 1),
        "train_threads": args.threads,
    }
    save_checkpoint(model, args.output, meta=meta)
    print(
        f"{args.output}: val top-1 {val:.2f}%, test top-1 {test:.2f}% (last epoch), "
        f"{took:.0f} s on {args.threads} thread(s), {args.output.stat().st_size / 1024:.0f} KiB"
    )
    if test < args.min_test_acc:
        print(f"test accuracy below {args.min_test_acc}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
