"""Adaptive batch normalisation (EagleEye, ECCV 2020): recompute BN statistics of a sub-net.

A pruned network evaluated with the BatchNorm statistics it inherited from the full network
scores near chance; recomputing the statistics on a few training batches restores a score
that ranks sub-nets the way fine-tuning will. Also importable from :mod:`compressor.evaluate`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from compressor.device import resolve_device
from compressor.errors import DataError


def _inputs_of(batch: Any) -> torch.Tensor:
    """A batch is a tensor of inputs or an ``(inputs, targets, ...)`` tuple/list."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise DataError(
        f"adaptive_bn got a batch of type {type(batch).__name__}; pass tensors of inputs or (inputs, targets) pairs"
    )


def bn_modules(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm of the model (1d/2d/3d, SyncBatchNorm, lazy variants) that tracks statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def adaptive_bn(model: nn.Module, batches: Iterable[Any], *, device: str | torch.device = "cpu") -> nn.Module:
    """Recompute the running statistics of every BatchNorm of ``model`` from ``batches``, in place.

    Resets the running mean/variance, sets ``momentum=None`` (cumulative average, so the result is
    the mean over the batches of each batch's statistics), runs the batches forward with only the
    BN modules in train mode (dropout and everything else stay as they were, under ``no_grad``, so
    no weight changes), then restores every module's ``momentum`` and ``training`` flag.

    ``batches``: tensors of inputs, or ``(inputs, targets)`` pairs (a DataLoader works). The model
    is moved to ``device`` and returned (the same object).

    >>> model = adaptive_bn(model, calib_batches, device="cpu")  # doctest: +SKIP
    """
    dev = resolve_device(device)
    model.to(dev)
    bns = bn_modules(model)
    if not bns:
        return model
    training = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bns}
    n = 0
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for batch in batches:
            x = _inputs_of(batch).to(dev, non_blocking=True)
            model(x)
            n += 1
    finally:
        for m in bns:
            m.momentum = momenta[m]
        for mod, flag in training.items():
            mod.train(flag)
    if n == 0:
        raise DataError("adaptive_bn got no calibration batches; pass at least one batch of training images")
    return model
