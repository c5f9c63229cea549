"""An equivalence check of a slimmed model that does not use compressor's channel engine.

Given the original model and a slimmed copy with the same module names (made by compressor,
Torch-Pruning or by hand), :func:`outside_check` finds, from the weights alone, which original
channels every slimmed layer keeps, runs the original with every other channel forced to zero,
and compares its outputs with the slimmed model's, relative to the output scale. Nothing here
imports ``compressor.graph``: the check trusts no bookkeeping of the tool that slimmed.

What is matched, and how the original is masked:

* ``Conv1d/2d/3d`` (and subclasses such as timm's ``Conv2dSame`` / ``StdConv2d``),
  ``ConvTranspose`` and ``Linear``: the weights compared are the ones each layer really
  convolves with (for a subclass that transforms its weight in ``forward``, such as timm's
  weight-standardised ``StdConv2d``, the weight it passes to ``F.conv2d``, captured by running
  it); every slimmed filter row is located among the original's rows, then every slimmed input column within that row (grouped and depthwise convolutions
  per group: a slimmed group must read inputs of one original group). The slimmed weights must
  equal ``W[kept_out][:, kept_in]`` exactly (and the bias ``b[kept_out]``). The original then
  runs with a forward pre-hook that zeroes every input channel the slimmed layer does not read
  and a forward hook that zeroes every output channel it does not produce (so reductions over
  channels, such as attention's ``q @ k``, see what the slimmed model sees). A pruned layer
  whose ``forward`` the model never calls (its weight used functionally, as in torchvision's
  Swin) is masked in its weights instead, and the result says so.
* Normalisation layers (BatchNorm, InstanceNorm, GroupNorm, LayerNorm and their subclasses, any
  module of these types): matched by their per-channel tensors (weight, bias, running
  statistics) taken together as rows. BatchNorm and InstanceNorm are per channel, so the kept
  slice needs no mask. LayerNorm, GroupNorm and RMSNorm take statistics over channels: in the
  original their statistics are taken over the kept channels only (``F.layer_norm``,
  ``F.group_norm`` and ``F.rms_norm`` are intercepted while that module runs). A pruned norm
  module that computes its statistics some other way is reported, not trusted.
* Every other parameter (layer scales, PReLU slopes, position embeddings, ...) and every buffer
  whose shape changed must be a box slice of the original's (each dimension keeps a subset of
  indices); it needs no mask (its consumers are masked).

Anything that is not a slice of the original (for instance weights folded into another layer)
is reported as *unmatched* with the layer's name, and the check fails: it never passes a model
it could not match.

The check is only meaningful when outputs are not identically zero (torchvision zero-initialises
ViT heads, timm zero-initialises layer scales and NFNet gains): :func:`randomize` gives every
parameter random values (unique, so that slices are located unambiguously) and BatchNorm
statistics from random inputs, and :func:`outside_check` fails a *vacuous* comparison: an
output that is identically zero or does not depend on the input.

    >>> from compressor.testing.outside_check import outside_check, randomize
    >>> randomize(model, (1, 3, 64, 64))        # before slimming
    >>> slim_model = ...                        # any tool
    >>> res = outside_check(model, slim_model, input_shape=(1, 3, 64, 64))
    >>> res.ok, res.error, res.unmatched
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

#: Largest ``max |masked original - slim| / max |masked original|`` that passes (float32 agrees to ~1e-6).
REL_TOL = 1e-4

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_STAT_NORMS = (nn.GroupNorm, nn.LayerNorm)  # statistics over channels
_RMS_NORM = getattr(nn, "RMSNorm", None)
if _RMS_NORM is not None:
    _NORMS = (*_NORMS, _RMS_NORM)
    _STAT_NORMS = (*_STAT_NORMS, _RMS_NORM)
_CHANNEL_TENSORS = ("weight", "bias", "running_mean", "running_var")


# --------------------------------------------------------------------------- randomisation


@torch.no_grad()
def randomize(
    model: nn.Module, input_shape: Sequence[int] | None = None, *, seed: int = 0, calibrate: bool = True
) -> nn.Module:
    """Give every parameter of ``model`` random, distinct values (in place) and, with
    ``input_shape``, its BatchNorm layers statistics measured on random inputs.

    Matrices and filters are drawn from N(0, 1/fan_in) so activations keep their scale; vectors
    and scalars named like biases from N(0, 0.2); every other vector or scalar (norm weights,
    layer scales, skip gains, PReLU slopes) from U(0.5, 1.5), so no branch is switched off
    (timm and torchvision initialise some of them to zero). Returns ``model`` in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if not p.is_floating_point():
            continue
        leaf = name.rpartition(".")[2]
        if p.dim() >= 2:
            fan_in = max(1, p[0].numel())
            v = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
        elif "bias" in leaf:
            v = torch.randn(p.shape, generator=gen) * 0.2
        else:
            v = torch.rand(p.shape, generator=gen) + 0.5
        p.copy_(v.to(p.dtype))
    model.eval()
    if calibrate and input_shape is not None:
        _calibrate_norm_stats(model, input_shape, gen)
    for m in model.modules():  # distinct statistics also for channels that saw no signal
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            if m.running_mean is not None:
                m.running_mean.add_(torch.randn(m.running_mean.shape, generator=gen) * 1e-2)
                m.running_var.mul_(torch.rand(m.running_var.shape, generator=gen) * 0.2 + 0.9).add_(1e-3)
    return model


@torch.no_grad()
def _calibrate_norm_stats(model: nn.Module, input_shape: Sequence[int], gen: torch.Generator) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    try:
        for _ in range(4):
            model(torch.randn((max(2, int(input_shape[0])), *input_shape[1:]), generator=gen))
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()


# --------------------------------------------------------------------------- result


@dataclass
class LayerMatch:
    """Which original channels a slimmed layer keeps (indices into the original's channels)."""

    name: str
    kind: str  # conv | linear | norm | param | buffer
    out_idx: np.ndarray | None = None  # conv/linear output channels, or a norm's channels
    in_idx: np.ndarray | None = None  # conv/linear input channels (features for Linear)
    out_size: int = 0
    in_size: int = 0

    @property
    def pruned(self) -> bool:
        out_cut = self.out_idx is not None and len(self.out_idx) < self.out_size
        in_cut = self.in_idx is not None and len(self.in_idx) < self.in_size
        return out_cut or in_cut

    @property
    def changed(self) -> bool:
        """Pruned or reordered."""
        if self.pruned:
            return True
        for idx in (self.out_idx, self.in_idx):
            if idx is not None and not np.array_equal(idx, np.arange(len(idx))):
                return True
        return False


@dataclass
class OutsideCheckResult:
    ok: bool
    #: max over outputs and inputs of ``max |masked original - slim| / max |masked original|``
    error: float
    tolerance: float
    #: why it failed ("" when ok)
    reason: str = ""
    #: largest |output| of the masked original (0 means the check would be vacuous)
    output_scale: float = 0.0
    #: share of output elements of the masked original that are non-zero
    nonzero_fraction: float = 0.0
    #: relative change of the output between two different inputs (0: does not depend on the input)
    input_sensitivity: float = 0.0
    layers_matched: int = 0
    layers_pruned: int = 0
    #: (layer, why) for every slimmed layer that is not a slice of the original
    unmatched: list[tuple[str, str]] = field(default_factory=list)
    #: pruned layers the model never calls through ``forward``: masked in their weights
    weight_masked: list[str] = field(default_factory=list)
    #: the precision of the comparison that decided: "float32", or "float64" when a float32
    #: error above the tolerance was checked again in float64 (see :func:`outside_check`)
    precision: str = "float32"
    #: the float32 error, when the float64 comparison decided
    float32_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unmatched"] = [list(u) for u in self.unmatched]
        return d


# --------------------------------------------------------------------------- matching helpers


class _Unmatched(Exception):
    pass


def _as_rows(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1)


def _segment_mode(seg: np.ndarray, val: np.ndarray, n_seg: int) -> np.ndarray:
    """Per segment id in ``range(n_seg)``, the most frequent value (-1 for an empty segment)."""
    return _segment_votes(seg, val, n_seg)[0]


def _segment_votes(seg: np.ndarray, val: np.ndarray, n_seg: int) -> tuple[np.ndarray, dict[int, list[int]]]:
    """Per segment, the most frequent value (-1 if none) and, for segments where several values
    share the top count, all of them (a tie)."""
    out = np.full(n_seg, -1, dtype=np.int64)
    if len(seg) == 0:
        return out, {}
    span = int(val.max()) + 2
    key = seg.astype(np.int64) * span + (val.astype(np.int64) + 1)
    uniq, counts = np.unique(key, return_counts=True)
    s, v = uniq // span, uniq % span - 1
    order = np.lexsort((-counts, s))  # by segment, most frequent first
    s, v, c = s[order], v[order], counts[order]
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    out[s[first]] = v[first]
    top = np.repeat(c[first], np.diff(np.append(np.nonzero(first)[0], len(s))))
    tied = ~first & (c == top)
    ties: dict[int, list[int]] = {}
    for seg_id in np.unique(s[tied]):
        ties[int(seg_id)] = v[(s == seg_id) & (c == top)].tolist()
    return out, ties


def _locate_rows(
    orig_rows: torch.Tensor, new_rows: torch.Tensor, samples: int = 8
) -> tuple[np.ndarray, dict[int, list[int]]]:
    """For every row of ``new_rows``, the original row that holds its values (-1: none), and
    the candidates of rows whose samples fit several original rows equally well (a narrow row
    whose few values also occur elsewhere).

    A few values of each new row are looked up in one pass over the original, in chunks (a
    VGG classifier has 100M weights: sorting them would take gigabytes); a table of the low bits
    of the sought values screens out almost every original value before the binary search. Every
    row takes the original row most of its samples were found in.
    """
    n_new, width = new_rows.shape
    cols = np.unique(np.linspace(0, width - 1, num=min(samples, width)).round().astype(np.int64))
    sample = new_rows[:, torch.from_numpy(cols)].reshape(-1).float().contiguous()
    sample_row = np.repeat(np.arange(n_new), len(cols))
    s_vals, s_order = torch.sort(sample)
    bits = 22
    table = torch.zeros(1 << bits, dtype=torch.bool)
    table[sample.view(torch.int32) & ((1 << bits) - 1)] = True
    flat = orig_rows.reshape(-1)
    row_len = orig_rows.shape[1]
    hit_sample: list[np.ndarray] = []
    hit_row: list[np.ndarray] = []
    chunk = 1 << 23
    for start in range(0, flat.numel(), chunk):
        part = flat[start : start + chunk].float().contiguous()
        cand = torch.nonzero(table[part.view(torch.int32) & ((1 << bits) - 1)]).flatten()
        if not len(cand):
            continue
        vals = part[cand]
        pos = torch.searchsorted(s_vals, vals).clamp(max=len(s_vals) - 1)
        hit = s_vals[pos] == vals
        if bool(hit.any()):
            hit_sample.append(s_order[pos[hit]].numpy())
            hit_row.append(((cand[hit] + start) // row_len).numpy())
    if not hit_sample:
        raise _Unmatched("its weights are not a slice of the original's (no value occurs in it)")
    hs, hr = np.concatenate(hit_sample), np.concatenate(hit_row)
    return _segment_votes(sample_row[hs], hr, n_new)


def _locate_within_rows(
    orig_rows: torch.Tensor, new_rows: torch.Tensor, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (within its original row ``rows[r]``) of every element of ``new_rows[r]``, and
    whether that value occurs more than once in the row (a tie: the position is then uncertain;
    random float32 weights repeat a value within a row of a few thousand now and then)."""
    out = np.empty(tuple(new_rows.shape), dtype=np.int64)
    tie = np.zeros(tuple(new_rows.shape), dtype=bool)
    step = max(1, (1 << 22) // max(1, orig_rows.shape[1]))
    width = orig_rows.shape[1]
    for a in range(0, len(rows), step):
        src = orig_rows[torch.from_numpy(rows[a : a + step])].float()
        vals, order = torch.sort(src, dim=1)
        q = new_rows[a : a + step].float().contiguous()
        pos = torch.searchsorted(vals.contiguous(), q).clamp(max=width - 1)
        if not bool((torch.gather(vals, 1, pos) == q).all()):
            raise _Unmatched(
                "its weights are not a slice of the original's (a filter's values are not among one original filter's)"
            )
        nxt = torch.gather(vals, 1, (pos + 1).clamp(max=width - 1))
        tie[a : a + step] = ((nxt == q) & (pos + 1 < width)).numpy()
        out[a : a + step] = torch.gather(order, 1, pos).numpy()
    return out, tie


def _conv_layout(m: nn.Module, w: torch.Tensor) -> torch.Tensor:
    """Weight as (out_channels, in_channels/groups, *kernel), also for transposed convolutions."""
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        g = m.groups
        i, og = w.shape[0], w.shape[1]
        w = w.reshape(g, i // g, og, *w.shape[2:]).transpose(1, 2).reshape(g * og, i // g, *w.shape[2:])
    return w.detach()


class _Captured(Exception):
    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight


_CONV_FNS = {
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
    F.linear,
}


class _CaptureWeight(TorchFunctionMode):
    """Stops a layer's forward at its convolution (or linear) and keeps the weight it passes."""

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _CONV_FNS:
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            if isinstance(w, torch.Tensor):
                raise _Captured(w)
        return func(*args, **kwargs)


_PLAIN_FORWARDS = {
    c.forward
    for c in (
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.ConvTranspose1d,
        nn.ConvTranspose2d,
        nn.ConvTranspose3d,
        nn.Linear,
    )
}


@torch.no_grad()
def _effective_weight(m: nn.Module) -> Any:
    """The weight ``m`` really applies. A layer that keeps torch's own forward applies
    ``m.weight``; one whose class overrides ``forward`` (a weight-standardised convolution, a
    weight reparametrisation) is run once on zeros and its weight taken where it reaches the
    convolution or linear function. Falls back to ``m.weight`` when that does not work."""
    w = getattr(m, "weight", None)
    if type(m).forward in _PLAIN_FORWARDS or not isinstance(w, torch.Tensor):
        return w
    if isinstance(m, nn.Linear):
        x = torch.zeros(1, m.in_features, dtype=w.dtype, device=w.device)
    elif isinstance(m, nn.modules.conv._ConvNd):
        k = [(kk - 1) * d + 1 for kk, d in zip(m.kernel_size, m.dilation)]
        x = torch.zeros(1, m.in_channels, *k, dtype=w.dtype, device=w.device)
    else:
        return w
    try:
        with _CaptureWeight():
            m(x)
    except _Captured as c:
        return c.weight if c.weight.shape == w.shape else w
    except Exception:
        return w
    return w


def _is_cond_conv(m: nn.Module) -> bool:
    """A conditionally parameterised convolution (timm's ``CondConv2d``): ``num_experts`` sets of
    filters, flattened one set per row of ``weight``, mixed per sample by routing weights."""
    return (
        hasattr(m, "num_experts")
        and isinstance(getattr(m, "weight_shape", None), tuple)
        and isinstance(getattr(m, "weight", None), torch.Tensor)
    )


def _experts_side_by_side(m: nn.Module) -> nn.Conv2d:
    """A stand-in ``nn.Conv2d`` for matching a CondConv's filters: every expert's filter of an
    output channel next to each other along the kernel height, biases as ``(out, experts)``."""
    e = int(m.num_experts)  # type: ignore[arg-type]
    out, per_group, kh, kw = m.weight_shape  # type: ignore[misc]
    conv = nn.Conv2d.__new__(nn.Conv2d)
    nn.Module.__init__(conv)
    conv.groups = int(m.groups)  # type: ignore[arg-type]
    w = m.weight.detach().reshape(e, out, per_group, kh, kw)  # type: ignore[operator]
    conv.weight = nn.Parameter(w.permute(1, 2, 0, 3, 4).reshape(out, per_group, e * kh, kw))
    b = getattr(m, "bias", None)
    conv.bias = nn.Parameter(b.detach().t().contiguous()) if isinstance(b, torch.Tensor) else None
    return conv


def _is_grn(m: nn.Module) -> bool:
    """A global response norm (ConvNeXt-V2's ``GlobalResponseNorm``): per channel, its L2 norm over
    the positions divided by the mean of those norms over the channels, weight and bias per channel."""
    return (
        type(m).__name__ == "GlobalResponseNorm" and hasattr(m, "channel_dim") and hasattr(m, "spatial_dim")
    )


def _match_filters(name: str, om: nn.Module, sm: nn.Module) -> LayerMatch:
    """Kept output and input channels of a slimmed Conv/Linear, from the weights they apply."""
    is_conv = isinstance(om, nn.modules.conv._ConvNd)
    ow, sw = _effective_weight(om), _effective_weight(sm)
    if not isinstance(ow, torch.Tensor) or not isinstance(sw, torch.Tensor) or ow.dim() != sw.dim():
        raise _Unmatched("its weight is missing or has another number of dimensions")
    if is_conv:
        W, Ws = _conv_layout(om, ow), _conv_layout(sm, sw)
        g, gs = int(om.groups), int(sm.groups)
    else:
        W, Ws = ow.detach(), sw.detach()
        g = gs = 1
    if tuple(W.shape[2:]) != tuple(Ws.shape[2:]):
        raise _Unmatched(f"kernel {tuple(Ws.shape[2:])} differs from the original's {tuple(W.shape[2:])}")
    n_out, Ig = W.shape[0], W.shape[1]
    n_out_s, Igs = Ws.shape[0], Ws.shape[1]
    if n_out % g or n_out_s % gs:
        raise _Unmatched("its groups do not divide its output channels")
    k = int(np.prod(W.shape[2:])) if W.dim() > 2 else 1
    rows_o, rows_s = W.reshape(n_out, -1), Ws.reshape(n_out_s, -1)
    if (n_out, Ig) == (n_out_s, Igs) and g == gs and torch.equal(W, Ws):
        out_idx = np.arange(n_out)
        in_idx = np.arange(Ig * g)
    else:
        out_idx, ambiguous = _locate_rows(rows_o, rows_s)
        if (out_idx < 0).any():
            raise _Unmatched("its weights are not a slice of the original's (a filter occurs nowhere in it)")
        rpg = n_out_s // gs  # slimmed filters per slimmed group
        s_of_row = np.arange(n_out_s) // rpg
        # per slimmed group s and local input i, the original local input: a vote of up to 8
        # filters of the group (unambiguous ones first; values tied within a row abstain unless
        # nothing else votes), checked exactly below
        voters_l = []
        for s_ in range(gs) if ambiguous else ():
            rows = [r for r in range(s_ * rpg, (s_ + 1) * rpg) if r not in ambiguous]
            rows += [r for r in range(s_ * rpg, (s_ + 1) * rpg) if r in ambiguous]
            voters_l.extend(rows[:8])
        voters = (
            np.asarray(voters_l, dtype=np.int64)
            if ambiguous
            else (np.arange(gs)[:, None] * rpg + np.arange(min(rpg, 8))[None, :]).reshape(-1)
        )
        pos, tie = _locate_within_rows(rows_o, rows_s[torch.from_numpy(voters)], out_idx[voters])
        col = pos // k  # flat positions in (Ig, k) -> original local input
        local_i = np.repeat(np.arange(Igs), k)[None, :].repeat(len(voters), 0)
        seg = (s_of_row[voters][:, None] * Igs + local_i).reshape(-1)
        sure = ~tie.reshape(-1)
        local = _segment_mode(seg[sure], col.reshape(-1)[sure], gs * Igs)
        if (local < 0).any():
            fill = _segment_mode(seg, col.reshape(-1), gs * Igs)
            local = np.where(local < 0, fill, local)
        local = local.reshape(gs, Igs)
        if ambiguous:  # a filter whose values fit several original filters: the one that fits exactly
            ob = getattr(om, "bias", None)
            sb = getattr(sm, "bias", None)
            for r, cands in ambiguous.items():
                fits = [
                    c
                    for c in cands
                    if torch.equal(W[c, torch.from_numpy(local[s_of_row[r]])], Ws[r])
                    and (
                        not isinstance(ob, torch.Tensor) or not isinstance(sb, torch.Tensor) or ob[c] == sb[r]
                    )
                ]
                used = {int(o) for i, o in enumerate(out_idx) if i != r}
                fits.sort(key=lambda c: c in used)  # an original filter not taken by another first
                if fits:
                    out_idx[r] = fits[0]
        if len(set(out_idx.tolist())) != n_out_s:
            raise _Unmatched("two slimmed filters map to the same original filter")
        group_of = out_idx // (n_out // g)
        by_group = group_of.reshape(gs, n_out_s // gs)
        mixed = np.nonzero((by_group != by_group[:, :1]).any(1))[0]
        if len(mixed):
            s = int(mixed[0])
            raise _Unmatched(
                f"its group {s} mixes filters of original groups {np.unique(by_group[s]).tolist()[:4]}"
            )
        G = by_group[:, 0]
        in_idx = (G[:, None] * Ig + local).reshape(-1)
        expect = W[torch.from_numpy(out_idx)[:, None], torch.from_numpy(local[s_of_row])]
        if not torch.equal(expect, Ws):
            raise _Unmatched("its weights are not W[kept outputs][:, kept inputs] of the original's")
        if len(set(in_idx.tolist())) != len(in_idx):
            raise _Unmatched("two slimmed input channels map to the same original input channel")
    ob, sb = getattr(om, "bias", None), getattr(sm, "bias", None)
    if (ob is None) != (sb is None):
        raise _Unmatched("one of the two layers has a bias and the other has not")
    if isinstance(ob, torch.Tensor) and isinstance(sb, torch.Tensor):
        if not torch.equal(ob.detach()[torch.from_numpy(out_idx)], sb.detach()):
            raise _Unmatched("its bias is not the original's bias at the kept output channels")
    return LayerMatch(name, "conv" if is_conv else "linear", out_idx, in_idx, out_size=n_out, in_size=Ig * g)


def _channel_rows(m: nn.Module) -> torch.Tensor | None:
    cols = []
    for t in _CHANNEL_TENSORS:
        v = getattr(m, t, None)
        if isinstance(v, torch.Tensor) and v.dim() == 1 and v.is_floating_point():
            cols.append(v.detach().float())
    if not cols or len({c.shape[0] for c in cols}) != 1:
        return None
    return torch.stack(cols, 1)


def _match_norm(name: str, om: nn.Module, sm: nn.Module) -> LayerMatch:
    R, Rs = _channel_rows(om), _channel_rows(sm)
    if R is None or Rs is None:
        if R is None and Rs is None:
            return LayerMatch(name, "norm")  # nothing per channel (LayerNorm without affine)
        raise _Unmatched("its per-channel tensors do not correspond to the original's")
    if R.shape[1] != Rs.shape[1]:
        raise _Unmatched("it has other per-channel tensors than the original")
    if R.shape == Rs.shape and torch.equal(R, Rs):
        idx = np.arange(R.shape[0])
    else:
        lookup = {r.numpy().tobytes(): i for i, r in enumerate(R)}
        idx = np.array([lookup.get(r.numpy().tobytes(), -1) for r in Rs], dtype=np.int64)
        if (idx < 0).any():
            raise _Unmatched(
                f"{int((idx < 0).sum())} of its {len(idx)} channels (weight, bias, statistics) are not "
                "channels of the original"
            )
    if isinstance(om, nn.GroupNorm) and isinstance(sm, nn.GroupNorm):
        per = om.num_channels // om.num_groups
        kept_groups = np.unique(idx // per)
        if len(idx) % sm.num_groups:
            raise _Unmatched("its channels are not divisible by its groups")
        sper = len(idx) // sm.num_groups
        for s in range(sm.num_groups):  # a slimmed group must hold channels of one original group
            if len(np.unique(idx[s * sper : (s + 1) * sper] // per)) != 1:
                raise _Unmatched(f"its group {s} mixes channels of several original groups")
        if sm.num_groups != len(kept_groups):
            raise _Unmatched(
                f"it has {sm.num_groups} groups but keeps channels of {len(kept_groups)} original groups"
            )
    return LayerMatch(name, "norm", idx, None, out_size=R.shape[0])


def _box_slice(name: str, t: torch.Tensor, ts: torch.Tensor, kind: str) -> LayerMatch:
    """``ts`` must equal ``t`` indexed by one index list per dimension."""
    if t.dim() != ts.dim():
        raise _Unmatched(f"{kind} has {ts.dim()} dimensions, the original's {t.dim()}")
    if t.shape == ts.shape and torch.equal(t, ts):
        return LayerMatch(name, kind)
    if t.numel() == 0 or ts.numel() == 0 or t.dim() == 0:
        raise _Unmatched(f"{kind} differs from the original's")
    flat = t.detach().reshape(-1).double()
    vals, order = torch.sort(flat)
    q = ts.detach().reshape(-1).double()
    pos = torch.searchsorted(vals, q).clamp(max=len(vals) - 1)
    if not bool((vals[pos] == q).all()):
        raise _Unmatched(f"{kind} is not a slice of the original's (values that do not occur in it)")
    where = np.stack(np.unravel_index(order[pos].numpy(), tuple(t.shape)), 0)  # (dims, numel)
    grid = np.stack(np.unravel_index(np.arange(ts.numel()), tuple(ts.shape)), 0)
    idx = [_segment_mode(grid[d], where[d], ts.shape[d]) for d in range(t.dim())]
    if any((i < 0).any() for i in idx):
        raise _Unmatched(f"{kind} is not a slice of the original's")
    expect = t.detach()[tuple(torch.from_numpy(a) for a in np.ix_(*idx))]
    if not torch.equal(expect.to(ts.dtype), ts.detach()):
        raise _Unmatched(f"{kind} is not a slice of the original's (not a box of kept indices)")
    return LayerMatch(name, kind)


def match_layers(original: nn.Module, slim: nn.Module) -> tuple[dict[str, LayerMatch], list[tuple[str, str]]]:
    """Which original channels every layer of ``slim`` keeps, and the layers that do not match.

    Returns ``(matches, unmatched)``: ``matches`` maps module (or tensor) names to
    :class:`LayerMatch`; ``unmatched`` lists ``(name, why)``.
    """
    omods = dict(original.named_modules())
    smods = dict(slim.named_modules())
    matches: dict[str, LayerMatch] = {}
    unmatched: list[tuple[str, str]] = []
    covered: set[str] = set()  # tensor names checked with their module
    for name, sm in smods.items():
        om = omods.get(name)
        if om is None:
            if next(sm.parameters(recurse=False), None) is not None:
                unmatched.append((name or "<root>", "this module does not exist in the original"))
            continue
        try:
            if isinstance(om, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(
                getattr(om, "weight", None), torch.Tensor
            ):
                matches[name] = _match_filters(name, om, sm)
                covered.update(f"{name}.{t}" if name else t for t in ("weight", "bias"))
                if (
                    type(om).forward not in _PLAIN_FORWARDS
                ):  # its own tensors (a gain) are in the weight it applies
                    covered.update(
                        f"{name}.{t}" if name else t for t, _ in om.named_parameters(recurse=False)
                    )
            elif _is_cond_conv(om) and _is_cond_conv(sm):
                matches[name] = _match_filters(name, _experts_side_by_side(om), _experts_side_by_side(sm))
                covered.update(f"{name}.{t}" if name else t for t in ("weight", "bias"))
            elif isinstance(om, _NORMS) or _is_grn(om):
                matches[name] = _match_norm(name, om, sm)
                covered.update(f"{name}.{t}" if name else t for t in _CHANNEL_TENSORS)
            elif isinstance(om, nn.MultiheadAttention):
                if any(
                    p.shape != sp.shape
                    for p, sp in zip(om.parameters(recurse=False), sm.parameters(recurse=False))
                ):
                    raise _Unmatched("nn.MultiheadAttention is pruned: the check cannot mask inside it")
        except _Unmatched as e:
            unmatched.append((name or "<root>", str(e)))
            covered.update(f"{name}.{t}" if name else t for t in ("weight", "bias", *_CHANNEL_TENSORS))
    for kind, oget, sget in (
        ("param", dict(original.named_parameters()), dict(slim.named_parameters())),
        ("buffer", dict(original.named_buffers()), dict(slim.named_buffers())),
    ):
        for tname, ts in sget.items():
            if tname in covered:
                continue
            t = oget.get(tname)
            if t is None:
                unmatched.append((tname, f"this {kind} does not exist in the original"))
                continue
            if kind == "buffer" and t.shape == ts.shape:
                continue  # constant buffers (masks, indices) cannot be located; unchanged shape is enough
            try:
                _box_slice(tname, t, ts, kind)
            except _Unmatched as e:
                unmatched.append((tname, str(e)))
        missing = [n for n in oget if n not in sget and n not in covered]
        if missing:
            unmatched.append((missing[0], f"this {kind} of the original is missing from the slimmed model"))
    return matches, unmatched


# --------------------------------------------------------------------------- masking


def _mask(idx: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    m = torch.zeros(size, dtype=torch.bool, device=device)
    m[torch.from_numpy(idx).to(device)] = True
    return m


def _masked_layer_norm(
    x: torch.Tensor, keep: torch.Tensor, weight: Any, bias: Any, eps: float
) -> torch.Tensor:
    out = torch.zeros_like(x)
    w = weight[keep] if weight is not None else None
    b = bias[keep] if bias is not None else None
    out[..., keep] = F.layer_norm(x[..., keep], (int(keep.sum()),), w, b, eps)
    return out


def _masked_rms_norm(x: torch.Tensor, keep: torch.Tensor, weight: Any, eps: Any) -> torch.Tensor:
    out = torch.zeros_like(x)
    w = weight[keep] if weight is not None else None
    out[..., keep] = F.rms_norm(x[..., keep], (int(keep.sum()),), w, eps)
    return out


def _masked_group_norm(
    x: torch.Tensor, groups: int, keep: torch.Tensor, weight: Any, bias: Any, eps: float
) -> torch.Tensor:
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, c // groups, -1)
    mg = keep.reshape(1, groups, c // groups, 1).to(x.dtype)
    cnt = (mg.sum(2, keepdim=True) * xg.shape[-1]).clamp(min=1)
    mean = (xg * mg).sum((2, 3), keepdim=True) / cnt
    var = (((xg - mean) * mg) ** 2).sum((2, 3), keepdim=True) / cnt
    y = ((xg - mean) / torch.sqrt(var + eps) * mg).reshape(x.shape)
    shape = (1, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape) * keep.reshape(shape).to(x.dtype)
    return y


def _stat_norm(m: nn.Module) -> bool:
    """A norm whose statistics are taken over the channels (a pruned one takes them over the kept)."""
    return isinstance(m, _STAT_NORMS) or _is_grn(m)


class _NormMode(TorchFunctionMode):
    """Takes the statistics of pruned LayerNorm / GroupNorm / RMSNorm over the kept channels, and
    a global response norm's mean over the channels (of norms that are zero where a channel is
    not kept) as the sum over the kept ones divided by their count."""

    def __init__(self, keep: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.keep = keep  # id(module) -> kept-channel mask
        self.stack: list[nn.Module] = []
        self.hits: set[int] = set()

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        mod = self.stack[-1] if self.stack else None
        keep = self.keep.get(id(mod)) if mod is not None else None
        if keep is not None:
            if func in (F.layer_norm, torch.layer_norm):
                a = list(args) + [None] * (5 - len(args))
                x, _shape, w, b, eps = a[:5]
                w, b = kwargs.get("weight", w), kwargs.get("bias", b)
                eps = kwargs.get("eps", eps if eps is not None else 1e-5)
                self.hits.add(id(mod))
                return _masked_layer_norm(x, keep, w, b, eps)
            if func in (F.group_norm, torch.group_norm):
                a = list(args) + [None] * (5 - len(args))
                x, groups, w, b, eps = a[:5]
                groups = kwargs.get("num_groups", groups)
                w, b = kwargs.get("weight", w), kwargs.get("bias", b)
                eps = kwargs.get("eps", eps if eps is not None else 1e-5)
                self.hits.add(id(mod))
                return _masked_group_norm(x, int(groups), keep, w, b, eps)
            if func in (torch.Tensor.mean, torch.mean) and _is_grn(mod):
                x = args[0]
                dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
                if isinstance(dim, int) and dim % x.dim() == mod.channel_dim % x.dim():  # type: ignore[union-attr, operator]
                    keepdim = bool(kwargs.get("keepdim", args[2] if len(args) > 2 else False))
                    self.hits.add(id(mod))
                    return x.sum(dim=dim, keepdim=keepdim) / keep.sum().to(x.dtype)
            rms = getattr(F, "rms_norm", None)
            if rms is not None and func in (rms, getattr(torch, "rms_norm", rms)):
                a = list(args) + [None] * (4 - len(args))
                x, _shape, w, eps = a[:4]
                w, eps = kwargs.get("weight", w), kwargs.get("eps", eps)
                self.hits.add(id(mod))
                return _masked_rms_norm(x, keep, w, eps)
        return func(*args, **kwargs)


@contextmanager
def _masked(original: nn.Module, matches: dict[str, LayerMatch], weight_masked: set[str]) -> Iterator[dict]:
    """Hooks on ``original`` that zero every channel the slimmed model does not keep."""
    mods = dict(original.named_modules())
    handles = []
    state: dict[str, Any] = {"called": set(), "mode": None}
    saved: list[tuple[nn.Module, str, torch.Tensor]] = []
    norm_keep: dict[int, torch.Tensor] = {}
    mode = _NormMode(norm_keep)
    state["mode"] = mode
    for name, mt in matches.items():
        m = mods[name]
        if mt.kind in ("conv", "linear") and mt.changed:
            w = m.weight
            dim = 1 if mt.kind == "conv" else -1
            keep_in = _mask(mt.in_idx, mt.in_size, w.device) if mt.in_idx is not None else None
            keep_out = _mask(mt.out_idx, mt.out_size, w.device) if mt.out_idx is not None else None
            if name in weight_masked:
                saved.append((m, "weight", m.weight.data))
                W = _conv_layout(m, w).clone() if mt.kind == "conv" else w.detach().clone()
                W[~keep_out] = 0
                if keep_in is not None:
                    g = int(getattr(m, "groups", 1))
                    per = mt.in_size // g
                    for gi in range(g):
                        sub = ~keep_in[gi * per : (gi + 1) * per]
                        rows = slice(gi * (mt.out_size // g), (gi + 1) * (mt.out_size // g))
                        W[rows][:, sub] = 0
                if isinstance(m, nn.modules.conv._ConvTransposeNd):
                    W = _conv_layout_back(m, W)
                m.weight.data = W
                if getattr(m, "bias", None) is not None:
                    saved.append((m, "bias", m.bias.data))
                    m.bias.data = m.bias.detach() * keep_out.to(m.bias.dtype)
                continue

            def pre(
                mod: nn.Module, args: tuple, kw: dict, *, _n: str = name, _k: Any = keep_in, _d: int = dim
            ):
                state["called"].add(_n)
                if not args or not isinstance(args[0], torch.Tensor):
                    return None
                x = args[0]
                shape = [1] * x.dim()
                shape[_d] = -1
                return (x * _k.reshape(shape).to(x.dtype), *args[1:]), kw

            def post(mod: nn.Module, args: tuple, out: Any, *, _k: Any = keep_out, _d: int = dim) -> Any:
                if not isinstance(out, torch.Tensor):
                    return None
                shape = [1] * out.dim()
                shape[_d] = -1
                return out * _k.reshape(shape).to(out.dtype)

            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post))
        elif mt.kind == "norm" and mt.pruned and _stat_norm(m):
            norm_keep[id(m)] = _mask(mt.out_idx, mt.out_size, next(m.parameters()).device)

            def npre(mod: nn.Module, args: tuple, *, _n: str = name) -> None:
                state["called"].add(_n)
                mode.stack.append(mod)

            def npost(mod: nn.Module, args: tuple, out: Any) -> None:
                if mode.stack and mode.stack[-1] is mod:
                    mode.stack.pop()

            handles.append(m.register_forward_pre_hook(npre))
            handles.append(m.register_forward_hook(npost))
    state["ctx"] = mode if norm_keep else nullcontext()
    try:
        yield state
    finally:
        for h in handles:
            h.remove()
        for m, pname, data in saved:
            getattr(m, pname).data = data


def _conv_layout_back(m: nn.Module, W: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_conv_layout` for transposed convolutions."""
    g = m.groups
    o, ig = W.shape[0], W.shape[1]
    return W.reshape(g, o // g, ig, *W.shape[2:]).transpose(1, 2).reshape(g * ig, o // g, *W.shape[2:])


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    out = getattr(x, "logits", None)  # model-output objects
    return [out] if isinstance(out, torch.Tensor) else []


# --------------------------------------------------------------------------- the check


@torch.no_grad()
def outside_check(
    original: nn.Module,
    slim: nn.Module,
    inputs: Sequence[torch.Tensor] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    tol: float = REL_TOL,
    seed: int = 0,
    double: bool = True,
) -> OutsideCheckResult:
    """Compare ``slim`` with ``original`` whose channels that ``slim`` does not keep are zeroed.

    ``inputs`` default to two random batches of two of ``input_shape``. Both models are run in
    eval mode (and put back). Fails when a layer does not match (``unmatched``), when the
    comparison is vacuous (an output identically zero, or not depending on the input), or when
    the relative error exceeds ``tol``. With ``double`` (the default), a float32 error above
    ``tol`` is checked again in float64 and that comparison decides (``precision``): rounding
    that random weights amplify shrinks by orders of magnitude in float64, a pruning error does
    not.
    """
    if inputs is None:
        if input_shape is None:
            raise ValueError("outside_check needs inputs or an input_shape such as (1, 3, 64, 64)")
        gen = torch.Generator().manual_seed(seed)
        inputs = [torch.randn((2, *input_shape[1:]), generator=gen) for _ in range(2)]
    inputs = list(inputs)
    if len(inputs) < 2:
        inputs = inputs + [torch.randn_like(inputs[0])]
    matches, unmatched = match_layers(original, slim)
    res = OutsideCheckResult(ok=False, error=float("inf"), tolerance=tol, unmatched=unmatched)
    res.layers_matched = len(matches)
    res.layers_pruned = sum(1 for m in matches.values() if m.pruned)
    if unmatched:
        res.reason = "unmatched: " + "; ".join(f"{n}: {why}" for n, why in unmatched[:3])
        if len(unmatched) > 3:
            res.reason += f" (+{len(unmatched) - 3} more)"
        return res
    was_o, was_s = original.training, slim.training
    original.eval()
    slim.eval()
    try:
        changed = {n for n, m in matches.items() if m.kind in ("conv", "linear") and m.changed}
        stat_norms = {
            n
            for n, m in matches.items()
            if m.kind == "norm" and m.pruned and _stat_norm(original.get_submodule(n))
        }
        with _masked(original, matches, set()) as st:
            with st["ctx"]:
                original(inputs[0])
            uncalled = sorted(changed - st["called"])
        weight_masked = set(uncalled)
        res.weight_masked = uncalled
        refs: list[list[torch.Tensor]] = []
        with _masked(original, matches, weight_masked) as st:
            mode = st["mode"]
            with st["ctx"]:
                for x in inputs:
                    mode.stack.clear()
                    refs.append([t.detach().float() for t in _tensors(original(x))])
            missed = sorted(
                n for n in stat_norms if id(original.get_submodule(n)) not in mode.hits and n in st["called"]
            )
        if missed:
            res.unmatched = [
                (
                    n,
                    "pruned norm layer that computes its statistics without F.layer_norm/F.group_norm/F.rms_norm",
                )
                for n in missed
            ]
            res.reason = "unmatched: " + "; ".join(f"{n}: {why}" for n, why in res.unmatched[:3])
            return res
        gots = [[t.detach().float() for t in _tensors(slim(x))] for x in inputs]
    finally:
        original.train(was_o)
        slim.train(was_s)
    worst, scale, nonzero, total = 0.0, 0.0, 0, 0
    for ref, got in zip(refs, gots):
        if not ref:
            res.reason = "the model returns no tensor"
            return res
        if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
            res.reason = (
                f"output shapes differ: original {[tuple(a.shape) for a in ref]}, "
                f"slim {[tuple(b.shape) for b in got]}"
            )
            return res
        for a, b in zip(ref, got):
            s = float(a.abs().max()) if a.numel() else 0.0
            if not math.isfinite(s) or not bool(torch.isfinite(b).all()):
                res.reason = "an output is not finite (inf or nan); randomize() the model's weights"
                return res
            scale = max(scale, s)
            nonzero += int((a != 0).sum())
            total += a.numel()
            if s == 0.0:
                res.reason = (
                    "vacuous: an output of the original is identically zero; randomize() the weights "
                    "(zero-initialised heads or gains) before slimming"
                )
                res.output_scale = 0.0
                return res
            worst = max(worst, float((a - b).abs().max()) / s)
    res.output_scale = scale
    res.nonzero_fraction = nonzero / max(total, 1)
    diffs = [
        float((a - b).abs().max()) / max(float(a.abs().max()), 1e-30)
        for a, b in zip(refs[0], refs[1])
        if a.shape == b.shape
    ]
    res.input_sensitivity = max(diffs) if diffs else 0.0
    res.error = worst
    if res.input_sensitivity == 0.0:
        res.reason = "vacuous: the output does not depend on the input"
        return res
    if worst > tol:
        res.reason = (
            f"the slimmed model differs from the masked original: relative error {worst:.2e} > {tol:.0e}"
        )
        if double:
            return _in_float64(original, slim, inputs, tol, res)
        return res
    res.ok = True
    return res


def _in_float64(
    original: nn.Module,
    slim: nn.Module,
    inputs: Sequence[torch.Tensor],
    tol: float,
    res32: OutsideCheckResult,
) -> OutsideCheckResult:
    """The same comparison on float64 copies of both models. Random weights can make a deep
    network chaotic enough that float32 rounding (the slim layers add fewer zeros, in another
    order) grows past the tolerance; a pruning error does not shrink with the precision. The
    float64 result decides when both models are float32; the float32 error is kept."""
    params = [p for m in (original, slim) for p in m.parameters()]
    if not params or any(p.dtype != torch.float32 for p in params):
        return res32
    res = outside_check(
        copy.deepcopy(original).double(),
        copy.deepcopy(slim).double(),
        [x.double() for x in inputs],
        tol=tol,
        double=False,
    )
    res.precision = "float64"
    res.float32_error = res32.error
    return res
