"""Measuring a model: top-k accuracy over a loader (adaptive BN is :mod:`compressor.bn`, re-exported here).

>>> from compressor.data import load_data, make_loader
>>> data = load_data("mnist5k")
>>> accuracy(model, make_loader(data.test, 256))   # doctest: +SKIP
{'top1': 98.4, 'top5': 99.8}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from compressor.bn import adaptive_bn, bn_modules
from compressor.device import resolve_device

__all__ = ["accuracy", "adaptive_bn", "bn_modules"]


@torch.no_grad()
def accuracy(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: str | torch.device = "cpu",
    topk: Sequence[int] = (1,),
) -> dict[str, float]:
    """Top-k accuracy in percent over ``loader``'s (images, labels) batches.

    Always returns ``"top1"`` and ``"top5"`` (top-5 is 100 when there are at most 5 classes),
    plus ``"top{k}"`` for each requested k. The model runs in eval mode (its previous mode is
    restored). Under an initialised process group with a sharded loader
    (:func:`compressor.data.make_loader` with ``distributed=True``), counts are summed over ranks.
    """
    import torch.distributed as dist

    from compressor.data import ShardSampler
    from compressor.errors import DataError

    dev = resolve_device(device)
    net = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    ks = sorted({1, 5, *(int(k) for k in topk)})
    was_training = net.training
    first = next(iter(net.parameters()), None)
    home = first.device if first is not None else dev
    if home != dev:
        net.to(dev)  # moved back below
    net.eval()
    correct = torch.zeros(len(ks), dtype=torch.float64)
    total = 0
    try:
        for batch in loader:
            x, y = batch[0].to(dev, non_blocking=True), batch[1].to(dev, non_blocking=True)
            out = net(x)
            if isinstance(out, (tuple, list)):
                out = out[0]
            if out.ndim != 2:
                raise DataError(
                    f"the model returned outputs of shape {tuple(out.shape)}; expected (batch, classes)"
                )
            if int(y.max()) >= out.shape[1]:
                raise DataError(
                    f"label {int(y.max())} is out of range for a model with {out.shape[1]} outputs; "
                    "is this the data the model was trained on?"
                )
            kmax = min(max(ks), out.shape[1])
            pred = out.topk(kmax, dim=1).indices
            hit = pred.eq(y[:, None])
            for i, k in enumerate(ks):
                correct[i] += hit[:, : min(k, kmax)].any(dim=1).sum().item()
            total += len(y)
    finally:
        net.train(was_training)
        if home != dev:
            net.to(home)
    sampler = getattr(loader, "sampler", None)
    if dist.is_available() and dist.is_initialized() and isinstance(sampler, ShardSampler):
        t = torch.cat([correct, torch.tensor([float(total)], dtype=torch.float64)])
        t = t.to(dev) if dist.get_backend() == "nccl" else t
        dist.all_reduce(t)
        t = t.cpu()
        correct, total = t[:-1], int(t[-1].item())
    if total == 0:
        raise DataError("accuracy over an empty loader: the evaluation split has no images")
    return {f"top{k}": float(100.0 * correct[i].item() / total) for i, k in enumerate(ks)}
