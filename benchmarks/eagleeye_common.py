"""Shared pieces of the EagleEye benchmarks (demo model, cached batches, an identical short fine-tune)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from machine_info import machine_info  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEMO = ROOT / "examples" / "resnet_mnist.pt"


def machine() -> dict[str, Any]:
    return machine_info(
        "2-core CPU shared with other engineers' test and benchmark runs while measuring; "
        "timings are noisy and pessimistic"
    )


def load_demo(checkpoint: Path = DEMO) -> tuple[nn.Module, dict[str, Any], Any, Any]:
    """(model, meta, DataBundle, ChannelGraph) of the demo checkpoint and its embedded data."""
    from compressor.checkpoint import load_checkpoint
    from compressor.data import load_data
    from compressor.graph import build_graph

    model, meta = load_checkpoint(checkpoint)
    data = load_data(meta.get("dataset") or "mnist5k", meta=meta)
    graph = build_graph(model, input_shape=(1, *[int(s) for s in meta["input_shape"]]))
    return model.eval(), meta, data, graph


def batches(
    dataset: Any, batch_size: int, n: int | None = None, *, shuffle: bool = False, seed: int = 0
) -> list[Any]:
    from compressor.methods.eagleeye import cache_batches

    return cache_batches(dataset, batch_size=batch_size, n_batches=n, shuffle=shuffle, seed=seed)


@torch.no_grad()
def top1(model: nn.Module, cached: list[Any]) -> float:
    was = model.training
    model.eval()
    correct = total = 0
    for x, y in cached:
        correct += int((model(x).argmax(1) == y).sum())
        total += int(y.numel())
    model.train(was)
    return 100.0 * correct / total


def short_finetune(
    model: nn.Module, train: list[Any], *, steps: int, lr: float = 0.01, seed: int = 0
) -> nn.Module:
    """The same few SGD steps for every candidate: the same cached batches in the same order, SGD
    with nesterov momentum 0.9, weight decay 1e-4 (compressor.train.finetune's defaults), cosine lr."""
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / steps))
        x, y = train[step % len(train)]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return model.eval()
