"""Train the demo model: a small CIFAR-style ResNet on the embedded MNIST subset (mnist5k).

    python examples/train_baseline.py            # writes examples/resnet_mnist.pt

It reaches >= 97% test accuracy in a few minutes on one CPU thread and saves a compressor
checkpoint (architecture, weights and meta: dataset, input shape, classes, normalisation,
accuracies), which the README's commands then prune, fine-tune and export.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

ARCH = "resnet_cifar"
ARCH_KWARGS = {"num_classes": 10, "in_channels": 1, "depth": 8, "width": 16}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", type=Path, default=HERE / "resnet_mnist.pt")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--min-test-acc", type=float, default=97.0)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from compressor.data import load_data
    from compressor.models import build_model, canonical_arch
    from compressor.train import finetune

    torch.manual_seed(args.seed)
    data = load_data("mnist5k")
    model = build_model(ARCH, **ARCH_KWARGS)
    meta = {
        "arch": canonical_arch(ARCH),
        "arch_kwargs": dict(ARCH_KWARGS),
        "trained_by": "examples/train_baseline.py",
    }
    t0 = time.perf_counter()
    res = finetune(
        model, data, epochs=args.epochs, out=args.output, meta=meta, lr=args.lr, weight_decay=5e-4,
        batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress, keep_state=False,
    )  # fmt: skip
    took = time.perf_counter() - t0
    # record how it was made (the README quotes the time)
    from compressor.checkpoint import load_checkpoint, save_checkpoint

    model, saved = load_checkpoint(args.output)
    saved.update(train_seconds=round(took, 1), train_threads=args.threads)
    save_checkpoint(model, args.output, meta=saved)
    print(
        f"{args.output}: val top-1 {res.best_acc:.2f}% (epoch {res.best_epoch}), test top-1 {res.test_acc:.2f}%, "
        f"{took:.0f} s on {args.threads} thread(s), {args.output.stat().st_size / 1024:.0f} KiB"
    )
    if res.test_acc is None or res.test_acc < args.min_test_acc:
        print(f"test accuracy below {args.min_test_acc}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
