"""Devices and torchrun: one place that picks the device and joins the process group.

Every part that runs a model (the search loop, EagleEye's scoring, fine-tuning, accuracy, adaptive
BN, ``compress run``) resolves its device with :func:`resolve_device` and, under ``torchrun``
(``WORLD_SIZE > 1``), joins the process group with :func:`init_distributed`, which returns a
:class:`Dist` handle with the few collective helpers the package needs (barrier, broadcast,
gather, sums, averaging BatchNorm statistics). In one process every helper is the identity.

torch is imported inside the functions: importing this module is free (``compress --help``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compressor.errors import UsageError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other names as torch understands them.

    A CUDA request on a machine without CUDA, or an unknown name, is a :class:`UsageError`.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"device {device!r} was asked for but CUDA is not available here; use --device cpu or auto"
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use {DEVICE_HELP}") from None


def check_device_name(device: str) -> None:
    """Reject a device name that can never be valid, without importing torch (settings checks)."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UsageError(f"--device {device!r} is not valid; use {DEVICE_HELP}")


def dist_env() -> tuple[int, int]:
    """``(rank, world_size)``: from an initialised process group, else torchrun's environment."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


@dataclass
class Dist:
    """This process's place in a torchrun job (``world == 1``: a single process).

    ``created``: this handle initialised the process group, so its owner should
    :meth:`close` it when done (a group that was already there belongs to someone else).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device this rank uses: under torchrun each rank takes its own GPU (``LOCAL_RANK``)."""
        import torch

        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s object on every rank."""
        return broadcast_object(obj, src) if self.world > 1 else obj

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's object, in rank order, on every rank."""
        if self.world <= 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sums of ``values`` over ranks."""
        if self.world <= 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return [float(v) for v in t.cpu().tolist()]

    def average_buffers(self, model: nn.Module) -> None:
        """Average floating-point buffers (BN running statistics) over ranks: one model everywhere."""
        if self.world <= 1:
            return
        import torch.distributed as dist

        for buf in model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(self.world)

    def close(self) -> None:
        """Destroy the process group if this handle created it."""
        if self.created:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.created = False


def init_distributed(device: Any = None) -> Dist:
    """Join torchrun's process group if ``WORLD_SIZE > 1`` and none is initialised yet.

    Backend: NCCL when ``device`` is CUDA, gloo otherwise. In one process (no torchrun) this
    returns ``Dist()`` without importing torch.distributed's machinery.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        rank, world = dist_env()
        return Dist(rank, world, local_rank(), False)
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise UsageError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    created = False
    if not dist.is_initialized():
        use_cuda = device is not None and torch.device(device).type == "cuda"
        if use_cuda:
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank(), created)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s object on every rank (identity in one process)."""
    _, world = dist_env()
    if world <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


__all__ = [
    "DEVICE_HELP",
    "Dist",
    "broadcast_object",
    "check_device_name",
    "dist_env",
    "init_distributed",
    "local_rank",
    "resolve_device",
]
