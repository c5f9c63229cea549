"""A seeded generator of random small CNNs, and the check that slimming them is exact.

Each seed gives the Python source of one ``nn.Module`` class with an explicit ``forward``
(residual adds, concatenations, channel splits and chunks, depthwise and grouped convolutions,
ShuffleNetV1 units (grouped 1x1, channel shuffle, depthwise, grouped 1x1),
squeeze-excite, pooling, flatten into ``Linear``, BatchNorm, and some unusual but legal
operations such as a cumulative sum over channels, a channel flip or shuffle, a per-channel
``nn.Parameter``, GroupNorm, a ``torch.fx.wrap``-ed custom function). The source is the
reproduction: ``print(net_source(seed))`` is a standalone module.

:func:`check_net` traces one net, draws random plans over its prunable groups, slims, and asks
the graph whether the slimmed model equals the masked original (``graph.verify``). Either the
result is exact, or the channels involved must have been frozen; anything else is a failure.

    >>> from compressor.testing.fuzz import build_net, check_net
    >>> net = build_net(7)                       # 1x3x16x16 inputs, eval mode, seeded weights
    >>> result = check_net(7, plans=3)
    >>> result.ok, result.n_prunable, result.max_rel_err
"""

from __future__ import annotations

import linecache
import random
import re
import sys
import traceback
import types
from dataclasses import asdict, dataclass, field
from typing import Any

INPUT_SHAPE: tuple[int, int, int, int] = (1, 3, 16, 16)
#: Largest allowed ``max|slim - masked| / max|output|``.
REL_TOL = 1e-4
_WIDTHS = (4, 6, 8, 12, 16)


@dataclass
class _T:
    """A tensor alive in the generated ``forward``: its variable, channels and spatial size."""

    var: str
    c: int
    h: int


class _Builder:
    """Accumulates ``__init__`` and ``forward`` lines of one generated class."""

    def __init__(self, rng: random.Random, unusual: float) -> None:
        self.rng = rng
        self.unusual = unusual
        self.init: list[str] = []
        self.fwd: list[str] = []
        self.helpers: dict[str, str] = {}
        self.ops: list[str] = []
        self.live: list[_T] = []
        self._n = 0

    # -- naming --------------------------------------------------------------------------
    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def mod(self, prefix: str, expr: str) -> str:
        name = self._name(prefix)
        self.init.append(f"self.{name} = {expr}")
        return f"self.{name}"

    def assign(self, expr: str, c: int, h: int) -> _T:
        var = self._name("x")
        self.fwd.append(f"{var} = {expr}")
        t = _T(var, c, h)
        self.live.append(t)
        return t

    # -- building blocks -----------------------------------------------------------------
    def act(self, expr: str) -> str:
        r = self.rng.random()
        if r < 0.45:
            return f"F.relu({expr})"
        if r < 0.55:
            return f"F.relu6({expr})"
        if r < 0.65:
            return f"F.hardswish({expr})"
        if r < 0.72:
            return f"F.silu({expr})"
        if r < 0.78:
            return f"{self.mod('act', 'nn.GELU()')}({expr})"
        if r < 0.83:
            return f"{self.mod('act', 'nn.LeakyReLU(0.1)')}({expr})"
        if r < 0.87:
            return f"torch.tanh({expr})"
        if r < 0.91:  # in place, as torchvision writes it
            return f"F.relu({expr}, inplace=True)"
        if r < 0.94:
            return f"{self.mod('act', 'nn.ReLU(inplace=True)')}({expr})"
        return expr

    def width(self, like: int | None = None) -> int:
        if like is not None and self.rng.random() < 0.3:
            return like
        return self.rng.choice(_WIDTHS)

    def conv(
        self,
        t: _T,
        c_out: int | None = None,
        *,
        k: int | None = None,
        stride: int | None = None,
        groups: int = 1,
        bn: bool | None = None,
        act: bool | None = None,
    ) -> _T:
        rng = self.rng
        c_out = self.width(t.c) if c_out is None else c_out
        k = rng.choice((1, 3, 3)) if k is None else k
        if stride is None:
            stride = 2 if t.h >= 8 and rng.random() < 0.2 else 1
        bn = rng.random() < 0.7 if bn is None else bn
        act = rng.random() < 0.8 if act is None else act
        bias = "True" if (not bn or rng.random() < 0.2) else "False"
        if k == 3 and t.h >= 8 and rng.random() < 0.08:  # dilated, same size
            conv = f"nn.Conv2d({t.c}, {c_out}, 3, stride={stride}, padding=2, dilation=2, groups={groups}, bias={bias})"
        else:
            conv = f"nn.Conv2d({t.c}, {c_out}, {k}, stride={stride}, padding={k // 2}, groups={groups}, bias={bias})"
        h = (t.h + 2 * (k // 2) - k) // stride + 1
        if rng.random() < 0.15:  # a Sequential block, as torchvision writes them
            parts = [conv] + ([f"nn.BatchNorm2d({c_out})"] if bn else []) + (["nn.ReLU()"] if act else [])
            seq = self.mod("block", "nn.Sequential(" + ", ".join(parts) + ")")
            return self.assign(f"{seq}({t.var})", c_out, h)
        expr = f"{self.mod('conv', conv)}({t.var})"
        if bn:
            expr = f"{self.mod('bn', f'nn.BatchNorm2d({c_out})')}({expr})"
        if act:
            expr = self.act(expr)
        return self.assign(expr, c_out, h)

    # -- operations (each appends to forward and returns the new latest tensor) ------------
    def op_conv(self, t: _T) -> _T:
        return self.conv(t)

    def op_depthwise(self, t: _T) -> _T:
        mult = self.rng.choice((1, 1, 1, 2))
        y = self.conv(t, t.c * mult, k=3, groups=t.c)
        return self.conv(y, k=1) if self.rng.random() < 0.6 else y  # the pointwise of a separable conv

    def op_grouped(self, t: _T) -> _T:
        gs = [g for g in (2, 3, 4) if t.c % g == 0]
        if not gs:
            return self.conv(t)
        g = self.rng.choice(gs)
        c_out = g * self.rng.choice((1, 2, 3, 4))
        return self.conv(t, c_out, k=self.rng.choice((1, 3)), groups=g)

    def op_shuffle_unit(self, t: _T) -> _T:
        """ShuffleNetV1 unit: grouped 1x1 -> channel shuffle -> depthwise 3x3 -> grouped 1x1,
        with a residual when the width comes back."""
        rng = self.rng
        gs = [g for g in (2, 3, 4) if t.c % g == 0]
        if not gs:
            return self.op_grouped(t)
        g = rng.choice(gs)
        mid = g * rng.choice((g, 2 * g, 1, 3))  # per group: a multiple of g or not
        y = self.conv(t, mid, k=1, stride=1, groups=g, bn=True, act=True)
        self.helpers["channel_shuffle"] = _CHANNEL_SHUFFLE
        y = self.assign(f"channel_shuffle({y.var}, {g})", mid, y.h)
        y = self.conv(y, mid, k=3, stride=1, groups=mid, bn=True, act=False)
        c_out = t.c if rng.random() < 0.7 else g * rng.choice((1, 2, 3, 4))
        y = self.conv(y, c_out, k=1, stride=1, groups=g, bn=True, act=False)
        if c_out == t.c:
            return self.assign(self.act(f"{t.var} + {y.var}"), t.c, t.h)
        return y

    def op_residual(self, t: _T) -> _T:
        rng = self.rng
        if rng.random() < 0.35 and t.h >= 4:  # projection shortcut (new width and/or stride)
            c2 = self.width()
            s = 2 if t.h >= 8 and rng.random() < 0.5 else 1
            y = self.conv(t, c2, k=3, stride=s, bn=True, act=True)
            y = self.conv(y, c2, k=3, stride=1, bn=True, act=False)
            sc = self.conv(t, c2, k=1, stride=s, bn=True, act=False)
            return self.assign(self.act(f"{sc.var} + {y.var}"), c2, y.h)
        y = self.conv(t, self.width(t.c), k=3, stride=1, bn=True, act=True)
        y = self.conv(y, t.c, k=3, stride=1, bn=True, act=False)
        if rng.random() < 0.3:  # torchvision's BasicBlock: out += identity
            self.fwd.append(f"{y.var} += {t.var}")
            return self.assign(self.act(y.var), t.c, t.h)
        return self.assign(self.act(f"{t.var} + {y.var}"), t.c, t.h)

    def op_add_earlier(self, t: _T) -> _T:
        same = [u for u in self.live[:-1] if u.c == t.c and u.h == t.h and u.var != t.var]
        if not same:
            return self.op_residual(t)
        u = self.rng.choice(same)
        op = self.rng.choice(("+", "+", "-", "*"))
        return self.assign(f"{t.var} {op} {u.var}", t.c, t.h)

    def op_concat(self, t: _T) -> _T:
        rng = self.rng
        same_h = [u for u in self.live[:-1] if u.h == t.h]
        r = rng.random()
        if same_h and r < 0.3:
            u = rng.choice(same_h)
            parts = [t, u] if rng.random() < 0.5 else [u, t]
        elif r < 0.7:  # inception-like branches
            a = self.conv(t, k=1, stride=1)
            b = self.conv(t, k=3, stride=1)
            parts = [a, b] + ([t] if rng.random() < 0.3 else [])
        else:  # dense-like: keep the input, add new features
            a = self.conv(t, stride=1)
            parts = [t, a]
        c = sum(p.c for p in parts)
        dim = rng.choice(("1", "dim=1", "dim=-3"))
        return self.assign(f"torch.cat([{', '.join(p.var for p in parts)}], {dim})", c, t.h)

    def op_split(self, t: _T) -> _T:
        rng = self.rng
        if t.c < 2:
            return self.conv(t)
        r = rng.random()
        if t.c % 2 == 0 and r < 0.4:
            a_c = b_c = t.c // 2
            form = rng.choice(
                ("torch.chunk({}, 2, dim=1)", "{}.chunk(2, 1)", "torch.split({}, {half}, dim=1)")
            )
            src = form.format(t.var, half=a_c)
        elif r < 0.75:
            a_c = rng.randint(1, t.c - 1)
            b_c = t.c - a_c
            forms = (
                "torch.split({}, [{}, {}], dim=1)",
                "{}.split([{}, {}], 1)",
                "torch.split({}, [{}, {}], dim=-3)",
            )
            src = rng.choice(forms).format(t.var, a_c, b_c)
        else:  # slicing
            a_c = rng.randint(1, t.c - 1)
            b_c = t.c - a_c
            a, b = self._name("x"), self._name("x")
            self.fwd.append(f"{a}, {b} = {t.var}[:, :{a_c}], {t.var}[:, {a_c}:]")
            return self._after_split(_T(a, a_c, t.h), _T(b, b_c, t.h))
        a, b = self._name("x"), self._name("x")
        self.fwd.append(f"{a}, {b} = {src}")
        return self._after_split(_T(a, a_c, t.h), _T(b, b_c, t.h))

    def _after_split(self, a: _T, b: _T) -> _T:
        rng = self.rng
        self.live += [a, b]
        r = rng.random()
        if rng.random() < 0.7:
            a = self.conv(a, rng.choice((a.c, b.c, self.width())), stride=1)
        if r < 0.55:
            parts = [a, b] if rng.random() < 0.6 else [b, a]
            return self.assign(f"torch.cat([{parts[0].var}, {parts[1].var}], dim=1)", a.c + b.c, a.h)
        if r < 0.8 and a.c == b.c:
            return self.assign(f"{a.var} {rng.choice(('+', '*'))} {b.var}", a.c, a.h)
        return a  # the other part is dropped: its channels are never read

    def op_se(self, t: _T) -> _T:
        rng = self.rng
        r = max(1, t.c // rng.choice((2, 4)))
        kind = rng.random()
        if kind < 0.6:  # torchvision's SqueezeExcitation: 1x1 convs
            pool = rng.choice(("{}.mean((2, 3), keepdim=True)", "F.adaptive_avg_pool2d({}, 1)"))
            s = self.assign(pool.format(t.var), t.c, 1)
            s = self.assign(f"F.relu({self.mod('fc', f'nn.Conv2d({t.c}, {r}, 1)')}({s.var}))", r, 1)
            gate = rng.choice(("torch.sigmoid({})", "F.hardsigmoid({})"))
            s = self.assign(gate.format(f"{self.mod('fc', f'nn.Conv2d({r}, {t.c}, 1)')}({s.var})"), t.c, 1)
        else:  # Linear-based SE (the original paper's code)
            s = self.assign(f"{t.var}.mean((2, 3))", t.c, 1)
            s = self.assign(f"F.relu({self.mod('fc', f'nn.Linear({t.c}, {r})')}({s.var}))", r, 1)
            s = self.assign(f"torch.sigmoid({self.mod('fc', f'nn.Linear({r}, {t.c})')}({s.var}))", t.c, 1)
            if rng.random() < 0.5:
                s = self.assign(f"{s.var}[:, :, None, None]", t.c, 1)
            else:
                s = self.assign(f"{s.var}.view({s.var}.size(0), -1, 1, 1)", t.c, 1)
        if rng.random() < 0.2:
            return self.assign(f"{t.var} * {s.var}.expand_as({t.var})", t.c, t.h)
        return self.assign(f"{t.var} * {s.var}", t.c, t.h)

    def op_shared(self, t: _T) -> _T:
        """One conv module called twice (weights shared): its input and output channels are one."""
        rng = self.rng
        conv = self.mod(
            "shared", f"nn.Conv2d({t.c}, {t.c}, 3, padding=1, bias={rng.choice(('True', 'False'))})"
        )
        a = self.assign(f"F.relu({conv}({t.var}))", t.c, t.h)
        return self.assign(self.act(f"{conv}({a.var})"), t.c, t.h)

    def op_upconv(self, t: _T) -> _T:
        """A transposed convolution up, then a pooling back down (a decoder step)."""
        if t.h > 8:
            return self.op_pool(t)
        c2 = self.width()
        up = self.mod("up", f"nn.ConvTranspose2d({t.c}, {c2}, 2, stride=2)")
        y = self.assign(self.act(f"{self.mod('bn', f'nn.BatchNorm2d({c2})')}({up}({t.var}))"), c2, t.h * 2)
        return self.conv(y, stride=2, k=3)

    def op_pool(self, t: _T) -> _T:
        if t.h < 4:
            return self.op_bn(t)
        k = self.rng.randrange(4)
        if k == 0:
            return self.assign(f"F.max_pool2d({t.var}, 2)", t.c, t.h // 2)
        if k == 1:
            return self.assign(f"F.avg_pool2d({t.var}, 2)", t.c, t.h // 2)
        if k == 2:
            return self.assign(
                f"{self.mod('pool', 'nn.MaxPool2d(3, 2, 1)')}({t.var})", t.c, (t.h - 1) // 2 + 1
            )
        return self.assign(f"{self.mod('pool', f'nn.AdaptiveAvgPool2d({t.h // 2})')}({t.var})", t.c, t.h // 2)

    def op_bn(self, t: _T) -> _T:
        return self.assign(self.act(f"{self.mod('bn', f'nn.BatchNorm2d({t.c})')}({t.var})"), t.c, t.h)

    def op_unusual(self, t: _T) -> _T:
        """Legal operations that a channel pruner must either handle exactly or freeze."""
        rng = self.rng
        c, h, x = t.c, t.h, t.var
        M = self.mod
        choices: list[tuple[str, Any, int, int]] = [
            ("cumsum", lambda: f"torch.cumsum({x}, dim=1)", c, h),
            ("flip", lambda: f"{x}.flip(1)", c, h),
            ("roll", lambda: f"torch.roll({x}, 1, dims=1)", c, h),
            ("channel_mean_sub", lambda: f"{x} - {x}.mean(1, keepdim=True)", c, h),
            ("spatial_attention", lambda: f"{x} * torch.sigmoid({x}.amax(1, keepdim=True))", c, h),
            ("softmax_c", lambda: f"torch.softmax({x}, dim=1)", c, h),
            ("normalize_c", lambda: f"F.normalize({x}, dim=1)", c, h),
            ("const_add", lambda: f"{x} + 1.0", c, h),
            ("affine_const", lambda: f"{x} * 2.0 - 0.5", c, h),
            ("abs", lambda: f"{x}.abs()", c, h),
            ("clamp", lambda: f"torch.clamp({x}, -1.0, 1.0)", c, h),
            ("where", lambda: f"torch.where({x} > 0, {x}, 0.1 * {x})", c, h),
            ("identity_ops", lambda: f"{x}.contiguous().clone().float()", c, h),
            ("dropout", lambda: f"F.dropout({x}, 0.1, training=self.training)", c, h),
            ("transpose_hw", lambda: f"{x}.transpose(2, 3)", c, h),
            ("pad", lambda: f"F.pad({x}, (1, 1, 1, 1))", c, h + 2),
            ("cat_self", lambda: f"torch.cat([{x}, {x}], dim=1)", 2 * c, h),
            ("param_scale", lambda: f"{x} * {self._param(c)}", c, h),
            ("prelu", lambda: f"{M('prelu', f'nn.PReLU({c})')}({x})", c, h),
            ("wrapped_fn", lambda: f"fuzz_custom_op({x})", c, h),
            ("custom_module", lambda: f"{M('scale', f'ChannelScale({c})')}({x})", c, h),
            ("channel_sum", lambda: f"{x} + {x}.sum(1, keepdim=True)", c, h),
            (
                "layernorm_c",
                lambda: f"{M('ln', f'nn.LayerNorm({c})')}({x}.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)",
                c,
                h,
            ),
            ("instancenorm", lambda: f"{M('inorm', f'nn.InstanceNorm2d({c}, affine=True)')}({x})", c, h),
            ("functional_conv", lambda: f"F.conv2d({x}, {self._weight(c, c)}, padding=1)", c, h),
            ("add_alpha", lambda: f"torch.add({x}, {x}.abs(), alpha=0.5)", c, h),
        ]
        if c % 2 == 0:
            choices.append(("channel_shuffle", lambda: f"channel_shuffle({x}, 2)", c, h))
            choices.append(("groupnorm", lambda: f"{M('gn', f'nn.GroupNorm(2, {c})')}({x})", c, h))
        if h <= 8:
            choices.append(
                ("upsample", lambda: f"F.interpolate({x}, scale_factor=2.0, mode='nearest')", c, 2 * h)
            )
        name, make, c2, h2 = rng.choice(choices)
        expr = make()
        if name == "wrapped_fn":
            self.helpers["wrapped_fn"] = _WRAPPED_FN
        elif name == "custom_module":
            self.helpers["custom_module"] = _CUSTOM_MODULE
        elif name == "channel_shuffle":
            self.helpers["channel_shuffle"] = _CHANNEL_SHUFFLE
        self.ops.append(f"unusual:{name}")
        return self.assign(expr, c2, h2)

    def _weight(self, c_out: int, c_in: int) -> str:
        name = self._name("weight")
        self.init.append(f"self.{name} = nn.Parameter(torch.randn({c_out}, {c_in}, 3, 3) * 0.2)")
        return f"self.{name}"

    def _param(self, c: int) -> str:
        name = self._name("scale")
        self.init.append(f"self.{name} = nn.Parameter(torch.randn(1, {c}, 1, 1))")
        return f"self.{name}"

    def head(self, t: _T, num_classes: int) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.35 or t.c * t.h * t.h > 1024:
            pool = rng.choice(
                (
                    "F.adaptive_avg_pool2d({}, 1).flatten(1)",
                    "torch.flatten(F.adaptive_avg_pool2d({}, 1), 1)",
                    "{}.mean((2, 3))",
                    "{}.mean(dim=(-2, -1))",
                )
            )
            self.ops.append("head:gap")
            if rng.random() < 0.25:
                pool = (
                    f"{self.mod('flat', 'nn.Flatten()')}({self.mod('gap', 'nn.AdaptiveAvgPool2d(1)')}({{}}))"
                )
            f = self.assign(pool.format(t.var), t.c, 1)
        elif r < 0.55:  # flatten into Linear: each channel spans h*h features
            self.ops.append("head:flatten")
            form = rng.choice(
                ("torch.flatten({}, 1)", "{}.view({}.size(0), -1)", "{}.reshape({}.shape[0], -1)")
            )
            permuted = {"unusual:transpose_hw", "unusual:layernorm_c"} & set(self.ops)
            if permuted and ".view(" in form:  # .view of a transposed/permuted tensor is illegal
                form = "{}.reshape({}.shape[0], -1)"
            f = self.assign(form.format(t.var, t.var), t.c * t.h * t.h, 1)
        elif r < 0.75:  # an MLP head: a prunable Linear group
            self.ops.append("head:mlp")
            f = self.assign(f"{t.var}.mean((2, 3))", t.c, 1)
            hid = rng.choice((8, 12, 16))
            if rng.random() < 0.3:  # torchvision's classifier: nn.Sequential(Linear, ReLU, Dropout, Linear)
                seq = f"nn.Sequential(nn.Linear({f.c}, {hid}), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.Linear({hid}, {num_classes}))"
                return f"{self.mod('classifier', seq)}({f.var})"
            mid = f"{self.mod('fc', f'nn.Linear({f.c}, {hid})')}({f.var})"
            if rng.random() < 0.4:
                mid = f"{self.mod('bn', f'nn.BatchNorm1d({hid})')}({mid})"
            f = self.assign(f"F.relu({mid})", hid, 1)
        else:  # a 1x1 conv classifier, then global average
            self.ops.append("head:conv")
            y = self.assign(
                f"{self.mod('cls', f'nn.Conv2d({t.c}, {num_classes}, 1)')}({t.var})", num_classes, t.h
            )
            return f"{y.var}.mean((2, 3))"
        return f"{self.mod('fc', f'nn.Linear({f.c}, {num_classes})')}({f.var})"


_WRAPPED_FN = '''
@torch.fx.wrap
def fuzz_custom_op(x):
    """Opaque to torch.fx (wrapped): a channel-mixing custom function."""
    return x * torch.tanh(x.mean(1, keepdim=True))
'''

_CUSTOM_MODULE = '''
class ChannelScale(nn.Module):
    """A module the engine has never seen, with a per-channel weight."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)
'''

_CHANNEL_SHUFFLE = """
def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
"""

_OPS = (
    ("conv", 3.0),
    ("depthwise", 1.2),
    ("grouped", 1.0),
    ("shuffle_unit", 0.6),
    ("residual", 2.0),
    ("add_earlier", 0.7),
    ("concat", 1.5),
    ("split", 1.5),
    ("se", 1.0),
    ("pool", 0.8),
    ("bn", 0.4),
    ("shared", 0.4),
    ("upconv", 0.4),
)


def net_source(seed: int, *, unusual: float = 0.15, max_ops: int = 6) -> str:
    """The Python source of the random net for ``seed`` (a standalone module)."""
    rng = random.Random(seed)
    b = _Builder(rng, unusual)
    t = _T("x", INPUT_SHAPE[1], INPUT_SHAPE[2])
    b.live.append(t)
    if rng.random() < 0.85:
        t = b.conv(t, b.width(), k=3, stride=1)
        b.ops.append("stem")
    names = [n for n, _ in _OPS]
    weights = [w for _, w in _OPS]
    for _ in range(rng.randint(2, max_ops)):
        if rng.random() < unusual:
            t = b.op_unusual(t)
            continue
        name = rng.choices(names, weights)[0]
        b.ops.append(name)
        t = getattr(b, f"op_{name}")(t)
    num_classes = rng.randint(3, 10)
    out = b.head(t, num_classes)
    cls = f"FuzzNet{seed}"
    lines = [
        f'"""Random CNN for seed {seed} (compressor.testing.fuzz); input {tuple(INPUT_SHAPE)}. Ops: {", ".join(b.ops)}."""',
        "import torch",
        "import torch.nn as nn",
        "import torch.nn.functional as F",
        *b.helpers.values(),
        "",
        f"class {cls}(nn.Module):",
        "    def __init__(self):",
        "        super().__init__()",
        *(f"        {line}" for line in b.init or ["pass"]),
        "",
        "    def forward(self, x):",
        *(f"        {line}" for line in b.fwd),
        f"        return {out}",
        "",
    ]
    return "\n".join(lines)


def load_source(source: str, name: str) -> types.ModuleType:
    """Execute generated source as an importable module ``name`` (tracebacks show its lines)."""
    filename = f"<{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    mod = types.ModuleType(name)
    mod.__file__ = filename
    sys.modules[name] = mod
    exec(compile(source, filename, "exec"), mod.__dict__)
    return mod


def build_net(seed: int, **kwargs: Any) -> Any:
    """Build the net of ``seed`` in eval mode, with seeded weights and non-trivial BN statistics.

    BatchNorm gets random affine parameters and running statistics so that slimming the wrong
    channels of a BN cannot go unnoticed (with the defaults every channel's BN is the same).
    """
    import torch
    import torch.nn as nn

    source = net_source(seed, **kwargs)
    mod = load_source(source, f"compressor_fuzz_net_{seed}")
    cls = getattr(mod, f"FuzzNet{seed}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                assert m.running_mean is not None and m.running_var is not None
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0.0, 0.3)
                    m.running_mean.normal_(0.0, 0.3)
                    m.running_var.uniform_(0.5, 2.0)
                assert m.weight.shape[0] == n
            elif isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)):
                with torch.no_grad():
                    if m.weight is not None:
                        m.weight.uniform_(0.5, 1.5)
                        m.bias.normal_(0.0, 0.3)
            elif isinstance(m, nn.PReLU):
                with torch.no_grad():
                    m.weight.uniform_(0.0, 0.5)
    model.eval()
    model.fuzz_seed = seed
    model.fuzz_source = source
    return model


# ---------------------------------------------------------------------------------------------
# The check


@dataclass
class Failure:
    seed: int
    #: generator (a bug of the fuzzer) | trace (build_graph raised) | graph (groups unreadable or
    #: frozen without reason) | slim (slim raised) | slim_crash (the slimmed model fails to run) |
    #: shape (its output shape differs) | verify (graph.verify raised) | wrong_model (slimmed !=
    #: masked original) | original_modified (slimming changed the original model)
    kind: str
    message: str
    plan: dict[str, list[int]] | None = None


@dataclass
class NetResult:
    seed: int
    ops: list[str]
    n_groups: int = 0
    n_prunable: int = 0
    n_frozen: int = 0
    frozen_reasons: dict[str, int] = field(default_factory=dict)
    plans_slimmed: int = 0
    plans_verified: int = 0
    max_rel_err: float = 0.0  # largest graph.verify(): max error relative to the output scale
    traced: bool = False
    failures: list[Failure] = field(default_factory=list)
    #: plans where the analytic cost model (graph.cost) disagrees with compressor.graph.count on
    #: the slimmed model: {"plan", "macs": [analytic, counted], "params": [analytic, counted]}
    cost_mismatches: list[dict[str, Any]] = field(default_factory=list)
    plans_costed: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) < 600 else text[:600] + "..."


def _slim_shapes(model: Any) -> str:
    """The parameter shapes of a slimmed model (where a crash usually shows)."""
    return (
        "slimmed parameters: "
        + ", ".join(f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items())[:1500]
    )


def random_plan_groups(graph: Any, rng: random.Random, style: str = "random") -> dict[str, list[int]]:
    """Random kept subsets over ``graph.prunable`` (never empty). ``style``: random | one | all_but_one."""
    groups: dict[str, list[int]] = {}
    for g in graph.prunable:
        n = int(g.size)
        if n < 1:
            continue
        if style == "one":
            k = 1
        elif style == "all_but_one":
            k = max(1, n - 1)
        else:
            if rng.random() < 0.25:
                continue  # keep the whole group (absent from the plan)
            k = rng.randint(1, n)
        groups[g.name] = sorted(rng.sample(range(n), k))
    return groups


def _reason_key(reason: str | None) -> str:
    """``"sum_1 (sum): reduces over channels"`` -> ``"sum: reduces over channels"`` (for counting)."""
    text = (reason or "").strip().splitlines()[0] if reason and reason.strip() else "(no reason given)"
    m = re.match(r"^\S+ \(([^)]+)\):? ?(.*)$", text)
    if m:
        text = f"{m.group(1)}: {m.group(2)}" if m.group(2) else m.group(1)
    return text[:90]


def check_net(
    seed: int,
    *,
    plans: int = 3,
    rel_tol: float = REL_TOL,
    check_original: bool = True,
    check_cost: bool = True,
) -> NetResult:
    """Trace the net of ``seed``, slim it at ``plans`` random plans, verify each against the masked original.

    Never raises for a problem of the engine: every problem becomes a :class:`Failure`. With
    ``check_cost`` the analytic cost of each verified plan is compared with the ground-truth count
    of the slimmed model (disagreements go to ``cost_mismatches``, not to failures).
    """
    import torch

    from compressor.plan import Plan

    rng = random.Random(10_000 + seed)
    try:
        src = net_source(seed)
        model = build_net(seed)
        ops = src.splitlines()[0].split("Ops: ")[1].rstrip('."').split(", ")
    except Exception as e:  # noqa: BLE001
        return NetResult(seed, [], failures=[Failure(seed, "generator", _short(e))])
    res = NetResult(seed, ops)
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(2, *INPUT_SHAPE[1:], generator=g)
    try:
        with torch.no_grad():
            ref = model(inputs)
    except Exception as e:  # noqa: BLE001
        res.failures.append(Failure(seed, "generator", _short(e)))
        return res

    from compressor import graph as cgraph

    try:
        graph = cgraph.build_graph(model, input_shape=INPUT_SHAPE)
    except Exception as e:  # noqa: BLE001
        kind = "trace"
        res.failures.append(Failure(seed, kind, _short(e) + "\n" + traceback.format_exc(limit=-3)))
        return res
    res.traced = True
    try:
        res.n_groups = len(graph.groups)
        prunable = list(graph.prunable)
        res.n_prunable = len(prunable)
        for grp in graph.groups:
            if grp.frozen:
                res.n_frozen += 1
                key = _reason_key(grp.reason)
                res.frozen_reasons[key] = res.frozen_reasons.get(key, 0) + 1
                if not grp.reason:
                    res.failures.append(
                        Failure(seed, "graph", f"group {grp.name!r} is frozen without a reason")
                    )
    except Exception as e:  # noqa: BLE001
        res.failures.append(Failure(seed, "graph", _short(e)))
        return res
    if not prunable:
        return res

    styles = ["random"] * plans
    if plans >= 3:
        styles[1] = "one" if seed % 2 else "all_but_one"
    for style in styles:
        kept = random_plan_groups(graph, rng, style)
        if not kept:
            continue
        plan = Plan(
            method="fuzz",
            groups=kept,
            group_sizes={grp.name: int(grp.size) for grp in prunable if grp.name in kept},
            seed=seed,
            input_shape=list(INPUT_SHAPE),
        )
        try:
            slim = cgraph.slim(model, plan, graph=graph)
        except Exception as e:  # noqa: BLE001
            res.failures.append(
                Failure(seed, "slim", _short(e) + "\n" + traceback.format_exc(limit=-3), kept)
            )
            continue
        res.plans_slimmed += 1
        try:
            slim.eval()
            with torch.no_grad():
                out = slim(inputs)
        except Exception as e:  # noqa: BLE001
            res.failures.append(Failure(seed, "slim_crash", _short(e) + "\n" + _slim_shapes(slim), kept))
            continue
        if tuple(out.shape) != tuple(ref.shape):
            res.failures.append(
                Failure(
                    seed, "shape", f"slimmed output {tuple(out.shape)} != original {tuple(ref.shape)}", kept
                )
            )
            continue
        try:  # verify() is already relative to the output scale: used as is, divided by nothing
            rel_err = float(graph.verify(slim, plan, inputs=[inputs]))
        except Exception as e:  # noqa: BLE001
            res.failures.append(
                Failure(seed, "verify", _short(e) + "\n" + traceback.format_exc(limit=-3), kept)
            )
            continue
        res.max_rel_err = max(res.max_rel_err, rel_err)
        if not rel_err < rel_tol:  # also catches NaN
            res.failures.append(
                Failure(
                    seed,
                    "wrong_model",
                    f"max error relative to output scale {rel_err:.3g} >= {rel_tol:g}",
                    kept,
                )
            )
            continue
        res.plans_verified += 1
        if check_cost:
            _check_cost(res, graph, plan, slim, cgraph)
    if check_original:
        with torch.no_grad():
            again = model(inputs)
        if not torch.equal(again, ref):
            res.failures.append(
                Failure(seed, "original_modified", "slimming changed the original model's outputs")
            )
    return res


def _check_cost(res: NetResult, graph: Any, plan: Any, slim: Any, cgraph: Any) -> None:
    try:
        analytic = graph.cost(plan)
        counted = cgraph.count(slim, INPUT_SHAPE)
    except Exception as e:  # noqa: BLE001
        res.cost_mismatches.append({"plan": plan.groups, "error": _short(e)})
        return
    res.plans_costed += 1
    if int(analytic.macs) != int(counted.macs) or int(analytic.params) != int(counted.params):
        res.cost_mismatches.append(
            {
                "plan": plan.groups,
                "macs": [int(analytic.macs), int(counted.macs)],
                "params": [int(analytic.params), int(counted.params)],
            }
        )


def reproduce(seed: int) -> str:
    """A standalone reproduction script for ``seed``: the net's source and the failing check."""
    return (
        net_source(seed)
        + "\n\n# Reproduce:\n#   OMP_NUM_THREADS=1 python -c "
        + f'"from compressor.testing.fuzz import check_net; r = check_net({seed}); print(r.failures)"\n'
    )
