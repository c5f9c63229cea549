"""Tiny EagleEye fixtures, and a worker run under ``torchrun --nproc-per-node 2`` by tests/test_search_cli.py (gloo on CPU).

``loop OUT``: the bare search loop with a deterministic toy score; rank 0 writes OUT (JSON).
``eagleeye OUT``: an EagleEye search on a tiny ResNet-like net and synthetic data; rank 0 writes
the plan to OUT.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import TensorDataset


def toy_score(i: int) -> float:
    return float((i * 7919) % 101) / 3.0


class TinyNet(nn.Module):
    """conv-bn-relu stem, one residual block (a coupled group), a plain conv, pool, linear."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(12, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12))
        self.c = nn.Sequential(
            nn.Conv2d(12, 20, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(20), nn.ReLU()
        )
        self.head = nn.Linear(20, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.b(self.a(x)))
        x = self.c(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def tiny_setup(n_train: int = 96, n_val: int = 64) -> tuple[nn.Module, Any, Any]:
    """A deterministic tiny net, its channel graph and a synthetic DataBundle-like namespace."""
    from compressor.graph import build_graph

    torch.manual_seed(0)
    model = TinyNet().eval()
    g = torch.Generator().manual_seed(1)
    protos = torch.randn(4, 3, 16, 16, generator=g)

    def split(n: int) -> TensorDataset:
        y = torch.arange(n) % 4
        return TensorDataset(protos[y] + 0.8 * torch.randn(n, 3, 16, 16, generator=g), y)

    train = split(n_train)
    data = SimpleNamespace(
        name="synthetic",
        num_classes=4,
        input_shape=(3, 16, 16),
        train=train,
        train_eval=train,
        val=split(n_val),
        test=split(n_val),
    )
    graph = build_graph(model, input_shape=(1, 3, 16, 16))
    return model, graph, data


def run_tiny_search(candidates: int = 6, **options: Any) -> Any:
    from compressor.methods.eagleeye import eagleeye

    model, graph, data = tiny_setup()
    opts: dict[str, Any] = dict(
        candidates=candidates, calib_batches=2, batch_size=16, device="cpu", progress=False
    )
    opts.update(options)
    return eagleeye(model, graph, flops=0.5, data=data, seed=3, **opts)


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    from compressor.device import init_distributed
    from compressor.search_loop import run_search

    d = init_distributed("cpu")
    rank, world = d.rank, d.world
    if mode == "loop":
        res = run_search(
            lambda i: {"score": toy_score(i), "pid": os.getpid()},
            candidates=9,
            candidates_file=out.with_suffix(".jsonl"),
            search_key="toy",
            progress=False,
        )
        pids = sorted({r["pid"] for r in res.records})
        if rank == 0:
            out.write_text(
                json.dumps(
                    {
                        "indices": [r["index"] for r in res.records],
                        "ranks": {str(r["index"]): r["rank"] for r in res.records},
                        "best": res.best()["index"],
                        "n_pids": len(pids),
                        "world": world,
                    }
                )
            )
    else:
        plan = run_tiny_search(candidates_file=out.with_suffix(".jsonl"))
        if rank == 0:
            plan.save(out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
