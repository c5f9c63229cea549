"""The label state of one propagation pass: the object layer handlers are written against.

Channels are tracked as integer *labels*. Beside every real tensor of the traced graph the pass
carries an int64 *id tensor* of the same shape whose entries name the channel each element
belongs to. A producer (conv, linear) mints fresh labels for its output channels
(:meth:`LabelState.module_space`); elementwise ops *union* the labels they combine; shape ops move
labels exactly as they move data. Union-find over the recorded pairs later gives the channels that
live or die together. Anything the engine cannot follow is *frozen* (never pruned), with a reason.

Handlers (see :func:`compressor.graph.registry.register_handler`) receive a :class:`LabelState`
and use only the public methods below; what they learn about their module goes into its
:class:`ModuleRecord` (:meth:`LabelState.record`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx.node import map_aggregate

from compressor.errors import TraceError

SpaceKey = tuple[str, str]  # ("module" | "param" | "node", name)


@dataclass
class ModuleRecord:
    """What the analysis learned about one leaf module (all calls of it merged).

    ``kind`` is free text for reports ("conv", "convT", "linear", "affine", "layernorm",
    "groupnorm", ...). Producers set ``in_labels`` and ``out_labels``; per-channel modules
    (normalisations, PReLU) set ``labels``. ``macs`` are the unpruned module's multiply-accumulates
    over all calls, ``extra`` is free for a handler's own bookkeeping.
    """

    name: str
    kind: str
    in_labels: torch.Tensor | None = None  # label per input channel / feature
    out_labels: torch.Tensor | None = None  # label per output channel (producers)
    labels: torch.Tensor | None = None  # label per channel (per-channel modules)
    macs: int = 0
    calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Space:
    """A contiguous block of labels: ``size`` labels from ``start``, owned by ``key``."""

    key: SpaceKey
    start: int
    size: int


def tensors(x: Any) -> list[torch.Tensor]:
    """The tensors inside a (nested) structure of tensors, tuples, lists and dicts."""
    out: list[torch.Tensor] = []
    map_aggregate(x, lambda t: out.append(t) if isinstance(t, torch.Tensor) else None)
    return out


class LabelState:
    """Mutable state of one labelling pass (see the module docstring).

    Attributes: ``n`` labels minted so far; ``spaces`` (who owns which labels); ``pairs`` (label
    pairs to unite); ``frozen`` ((labels, reason) never to prune); ``records`` (per module name).
    ``recording`` is False during a *masked* pass (:meth:`ChannelGraph.masked_forward`): then
    nothing is recorded, no label is minted and ``mask`` holds a keep flag per label.
    ``grouped`` is how grouped convolutions are tied (``"auto"``, ``"whole"`` or ``"within"``:
    see :func:`compressor.graph.handlers.grouped_structure`); ``grouped_override`` forces the
    structure of single convolutions by module name (set by ``build_graph``).
    """

    def __init__(self) -> None:
        self.grouped = "auto"
        self.grouped_override: dict[str, str] = {}
        self.n = 0
        self.spaces: dict[SpaceKey, Space] = {}
        self.pairs: list[torch.Tensor] = []  # (2, k) label pairs to union
        self.frozen: list[tuple[torch.Tensor, str]] = []
        self.records: dict[str, ModuleRecord] = {}
        self.recording = True
        self.mask: torch.Tensor | None = None  # keep flag per label (masked pass)

    # ------------------------------------------------------------------ minting and recording
    def space(self, key: SpaceKey, size: int) -> torch.Tensor:
        """The ``size`` labels owned by ``key``, minted on first use (the same ones on every call)."""
        s = self.spaces.get(key)
        if s is None:
            if not self.recording:
                raise AssertionError(f"masked pass met a new space {key}")
            s = Space(key, self.n, size)
            self.spaces[key] = s
            self.n += size
        elif s.size != size:
            raise TraceError(f"{key[1]} is called with {size} channels once and {s.size} another time")
        return torch.arange(s.start, s.start + s.size)

    def module_space(self, name: str, size: int) -> torch.Tensor:
        """Labels of the ``size`` output channels of producer module ``name``."""
        return self.space(("module", name), size)

    def record(self, name: str, kind: str) -> ModuleRecord:
        """The record of module ``name`` (created on its first call; a throwaway in a masked pass)."""
        if not self.recording:
            return ModuleRecord(name, kind)
        rec = self.records.get(name)
        if rec is None:
            rec = self.records[name] = ModuleRecord(name, kind)
        rec.calls += 1
        return rec

    def merge_inputs(self, rec: ModuleRecord, labels: torch.Tensor) -> None:
        """Set ``rec.in_labels``; a module called again on other channels unites them with the first."""
        if rec.in_labels is None:
            rec.in_labels = labels
        else:
            self.union(rec.in_labels, labels)

    # ------------------------------------------------------------------ coupling and freezing
    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Labels ``a[i]`` and ``b[i]`` are the same channel (pruned together)."""
        if self.recording and a.numel():
            self.pairs.append(torch.stack([a.reshape(-1), b.reshape(-1)]))

    def union_rows(self, rows: torch.Tensor) -> None:
        """Union the labels within each row of a 2-D tensor."""
        if rows.shape[1] > 1:
            self.union(rows[:, :1].expand(-1, rows.shape[1] - 1), rows[:, 1:])

    def union_all(self, labels: torch.Tensor) -> None:
        """All of ``labels`` are one channel."""
        if labels.numel() > 1:
            self.union(labels[:1].expand(labels.numel() - 1), labels[1:])

    def freeze(self, ids: Any, reason: str) -> None:
        """Never prune the labels in ``ids`` (a tensor or a structure of them); ``reason`` is reported."""
        if not self.recording:
            return
        for t in tensors(ids):
            self.frozen.append((t.reshape(-1).unique(), reason))

    def fresh_frozen(self, like: Any, reason: str, key: str | None = None) -> Any:
        """Labels for tensors the engine cannot see into: one label per channel, all frozen.

        ``like`` is the real output (a tensor or a structure); the result has its structure, with
        dim 1 (or the last dim of a 1-D tensor) as the channel dimension. ``key`` names the new
        label space (``reason`` when None).
        """
        counter = [0]

        def one(t: Any) -> Any:
            if not isinstance(t, torch.Tensor):
                return None
            counter[0] += 1
            dim = 1 if t.dim() >= 2 else max(t.dim() - 1, 0)
            size = t.shape[dim] if t.dim() else 1
            lab = self.space(("node", f"{key or reason}#{counter[0]}"), size)
            self.freeze(lab, reason)
            return self.broadcast_labels(lab, t.shape, dim) if t.dim() else lab[0]

        return map_aggregate(like, one)

    def checked(self, res: Any, out: Any, in_ids: Any, what: str, key: str) -> Any:
        """``res`` if it has the structure and shapes of the real output ``out``; otherwise the
        inputs ``in_ids`` freeze and the output gets fresh frozen labels (space ``key``)."""
        ok = (
            isinstance(res, torch.Tensor)
            and isinstance(out, torch.Tensor)
            and tuple(res.shape) == tuple(out.shape)
        )
        if (
            not ok
            and isinstance(out, (tuple, list))
            and isinstance(res, (tuple, list))
            and len(res) == len(out)
        ):
            ok = all(
                (not isinstance(o, torch.Tensor)) or (isinstance(r, torch.Tensor) and r.shape == o.shape)
                for r, o in zip(res, out)
            )
        if ok:
            return res
        reason = f"{what}: the channel engine could not follow its output"
        self.freeze(in_ids, reason)
        return self.fresh_frozen(out, reason, key=key)

    # ------------------------------------------------------------------ label geometry
    @staticmethod
    def broadcast_labels(lab: torch.Tensor, shape: Sequence[int], dim: int) -> torch.Tensor:
        """An id tensor of ``shape`` whose dimension ``dim`` carries the 1-D labels ``lab``."""
        view = [1] * len(shape)
        view[dim] = -1
        return lab.view(view).expand(*shape)

    def channel_labels(self, ids: torch.Tensor, dim: int, what: str) -> torch.Tensor:
        """The 1-D labels along ``dim`` of ``ids``; freezes them if other dimensions mix channels."""
        idx: list[Any] = [0] * ids.dim()
        idx[dim] = slice(None)
        lab = ids[tuple(idx)].clone()
        if not torch.equal(ids, self.broadcast_labels(lab, ids.shape, dim)):
            self.freeze(ids, f"{what}: channels are mixed with other dimensions")
        return lab

    @staticmethod
    def varying_dims(ids: torch.Tensor) -> list[int]:
        """Dimensions of ``ids`` along which the labels change."""
        return [
            d
            for d in range(ids.dim())
            if ids.shape[d] > 1 and not torch.equal(ids, ids.narrow(d, 0, 1).expand_as(ids))
        ]

    def spatial(self, ids_in: torch.Tensor, out: torch.Tensor, what: str) -> torch.Tensor:
        """Ops that act on each channel separately (pooling, resizing, padding)."""
        if ids_in.dim() < 2 or out.dim() != ids_in.dim() or out.shape[1] != ids_in.shape[1]:
            self.freeze(ids_in, f"{what}: changes the channel dimension")
            return self.fresh_frozen(out, f"{what}: changes the channel dimension")
        lab = self.channel_labels(ids_in, 1, what)
        return self.broadcast_labels(lab, out.shape, 1)

    def along_dim_op(self, ids: torch.Tensor, dim: int, what: str) -> torch.Tensor:
        """Ops that mix values along ``dim`` (softmax): fine unless ``dim`` carries channels."""
        if dim in self.varying_dims(ids):
            self.freeze(ids, f"{what}: mixes channels (softmax/normalisation across them)")
        return ids

    def check_reshape(
        self, ids_in: torch.Tensor, res: torch.Tensor, literal_dims: set[int], what: str
    ) -> None:
        """After a reshape: channels split into two dims tie channel b of every block together;
        a channel dim of literal size (``literal_dims``) cannot shrink and freezes."""
        v = self.varying_dims(res)
        if len(v) > 2:
            self.freeze(res, f"{what}: splits channels into more than two dimensions")
        elif len(v) == 2:
            d0, d1 = v
            idx: list[Any] = [0] * res.dim()
            idx[d0] = slice(None)
            idx[d1] = slice(None)
            blocks = res[tuple(idx)]  # (g, k): channel b of every block must go together
            self.union_rows(blocks.t())
            if d1 in literal_dims:
                self.freeze(res, f"{what}: reshapes channels to a fixed size")
        elif len(v) == 1 and v[0] in literal_dims:
            self.freeze(res, f"{what}: reshapes channels to a fixed size")


# --------------------------------------------------------------------------- masked pass


def apply_mask(r: Any, i: Any, mask: torch.Tensor) -> Any:
    """Zero the elements of ``r`` whose label (in id tensor ``i``) is not kept."""
    if (
        isinstance(r, torch.Tensor)
        and isinstance(i, torch.Tensor)
        and r.is_floating_point()
        and r.shape == i.shape
    ):
        return r * mask[i].to(r.dtype)
    if isinstance(r, (tuple, list)) and isinstance(i, (tuple, list)) and len(r) == len(i):
        return (
            type(r)(apply_mask(a, b, mask) for a, b in zip(r, i))
            if not hasattr(r, "_fields")
            else type(r)(*(apply_mask(a, b, mask) for a, b in zip(r, i)))
        )
    return r


def masked_layer_norm(
    x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, weight: Any, bias: Any, eps: float = 1e-5
) -> torch.Tensor:
    """Layer norm over the last dim whose statistics use the kept channels only (as the slim model's)."""
    m = mask[ids].to(x.dtype)
    cnt = m.sum(-1, keepdim=True).clamp_min(1)
    mean = (x * m).sum(-1, keepdim=True) / cnt
    var = (((x - mean) * m) ** 2).sum(-1, keepdim=True) / cnt
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y * m
