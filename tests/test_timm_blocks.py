"""timm's building blocks in small nets: what the engine prunes, what it freezes and names, and that
every slim model equals the masked original (the engine's own check) and passes the outside check
(:func:`compressor.testing.outside_check.outside_check`, which does not use the engine), with
weights that make every output non-zero."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn

from compressor.errors import TraceError
from compressor.graph import build_graph
from compressor.testing.outside_check import outside_check, randomize
from compressor.testing.zoo_check import engine_slim

timm = pytest.importorskip("timm")


def _slim_checked(model: nn.Module, shape: tuple[int, ...], target: float = 0.5) -> Any:
    """l1-uniform at ``target``: the engine's result, checked from the outside and by the engine."""
    model = randomize(model.eval(), shape)
    res = engine_slim(model, shape, target)
    chk = outside_check(model, res.small, input_shape=shape)
    assert chk.ok, chk.reason
    assert chk.output_scale > 0 and chk.nonzero_fraction > 0.5
    assert chk.layers_pruned > 0  # something was cut: not a vacuous comparison
    graph = build_graph(model, input_shape=shape)
    plan = graph.plan_from_counts(graph.counts_for_flops(target), method="t")
    assert graph.verify(res.small, plan) < 1e-4
    return res


def _broken(small: nn.Module, conv_name: str) -> nn.Module:
    """``small`` with one kept filter of ``conv_name`` changed: the outside check must catch it."""
    conv = small.get_submodule(conv_name)
    with torch.no_grad():
        conv.weight[0].mul_(-3.0)
    return small


# ----------------------------------------------------------------------------- GhostNet's slice
class Ghost(nn.Module):
    """timm's GhostModule (``cat([x1, x2])[:, :out_chs]``) between two convolutions."""

    def __init__(self, out_chs: int) -> None:
        super().__init__()
        from timm.models.ghostnet import GhostModule

        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.ghost = GhostModule(16, out_chs)
        self.head = nn.Conv2d(out_chs, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ghost(torch.relu(self.stem(x))))


def test_ghost_slice_that_takes_the_whole_concatenation_is_pruned() -> None:
    shape = (1, 3, 12, 12)
    res = _slim_checked(Ghost(24), shape)  # 12 + 12 channels, [:, :24]: the whole of it
    assert not any("slices channels" in r for r in res.frozen_reasons), res.frozen_reasons
    assert res.flops_ratio == pytest.approx(0.5, abs=0.05)
    model = randomize(Ghost(24).eval(), shape)  # the same weights as the checked one (seeded)
    broken = _broken(engine_slim(model, shape, 0.5).small, "ghost.primary_conv.0")
    assert not outside_check(model, broken, input_shape=shape).ok


def test_ghost_slice_that_cuts_the_concatenation_is_frozen_and_named() -> None:
    shape = (1, 3, 12, 12)
    model = randomize(Ghost(23).eval(), shape)  # 12 + 12 channels, [:, :23]: the last one dropped
    res = engine_slim(model, shape, 0.5)
    assert any("slices channels" in r for r in res.frozen_reasons), res.frozen_reasons
    assert outside_check(model, res.small, input_shape=shape).ok


# ----------------------------------------------------------------------------- attention blocks
class Attn(nn.Module):
    """conv -> BN -> act -> attention block -> conv, with a residual around the block."""

    def __init__(self, block: nn.Module, c: int = 16) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)
        self.block = block
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.c1(x)))
        return self.head(y + self.block(self.c2(y)))


def _attn_blocks() -> dict[str, Any]:
    from timm.layers import EcaModule, EffectiveSEModule, GlobalContext, SelectiveKernel, SEModule, SplitAttn
    from timm.layers.cbam import CbamModule

    return {
        "se": lambda: SEModule(16, rd_ratio=0.25),
        "gc": lambda: GlobalContext(16, rd_ratio=0.25),
        "cbam": lambda: CbamModule(16, rd_ratio=0.25),
        "sk": lambda: SelectiveKernel(16, 16, rd_ratio=0.25, split_input=False),
        "sk_split": lambda: SelectiveKernel(16, 16, rd_ratio=0.25),
        "ese": lambda: EffectiveSEModule(16),
        "eca": lambda: EcaModule(16),
        "split": lambda: SplitAttn(16, 16, radix=2, rd_ratio=0.25),
    }


@pytest.mark.parametrize("kind", ["se", "gc", "sk", "ese", "split"])
def test_attention_blocks_are_pruned_exactly(kind: str) -> None:
    shape = (1, 3, 12, 12)
    res = _slim_checked(Attn(_attn_blocks()[kind]()), shape)
    assert set(res.frozen_reasons) == {"network output"}, res.frozen_reasons
    if kind != "split":  # its radix conv is grouped: whole groups, and the radix sum ties them all
        assert res.flops_ratio == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        # ECA convolves along the channel axis: removing a channel changes its neighbours' inputs
        ("eca", "mixed with other dimensions"),
        # CBAM's spatial gate takes the mean and max over channels: both change with their count
        ("cbam", "reduces over channels"),
        # SelectiveKernel splitting its input at in_channels // paths, a number the slim model keeps
        ("sk_split", "splits channels at fixed sizes"),
    ],
)
def test_blocks_that_read_across_channels_are_frozen_and_named(kind: str, why: str) -> None:
    shape = (1, 3, 12, 12)
    model = randomize(Attn(_attn_blocks()[kind]()).eval(), shape)
    res = engine_slim(model, shape, 0.5)
    assert any(why in r for r in res.frozen_reasons), res.frozen_reasons
    assert outside_check(model, res.small, input_shape=shape).ok


class Heads(nn.Module):
    """``softmax(q @ k^T) @ v`` over pixels: the q/k contraction is a sum over channels."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (m(x).flatten(2) for m in (self.q, self.k, self.v))  # (B, C, N)
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, N, N): q's and k's channels summed
        out = v @ attn.transpose(1, 2)  # (B, 6, N)
        return self.head(out.reshape(x.shape[0], 6, x.shape[2], x.shape[3]))


def test_a_product_summing_over_channels_ties_both_sides_and_prunes_them() -> None:
    shape = (1, 3, 6, 6)
    model = randomize(Heads().eval(), shape)
    graph = build_graph(model, input_shape=shape)
    qk = [g for g in graph.prunable if ("q", "out") in g.members]
    assert qk and ("k", "out") in qk[0].members, [g.members for g in graph.groups]
    res = _slim_checked(Heads(), shape, 0.7)
    assert res.small.q.out_channels == res.small.k.out_channels < 8


# ----------------------------------------------------------------------------- MixedConv2d
class Mixed(nn.Module):
    """MixNet's mixed depthwise convolution (uneven splits, kernels 3/5/7) between pointwise ones."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import MixedConv2d

        self.pw = nn.Conv2d(3, 20, 1)
        self.mix = MixedConv2d(20, 20, kernel_size=[3, 5, 7], depthwise=True)
        self.mix_pw = MixedConv2d(20, 12, kernel_size=[1, 1])
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix_pw(torch.relu(self.mix(torch.relu(self.pw(x))))))


def test_mixed_conv_is_pruned_and_its_checkpoint_reloads(tmp_path: Any) -> None:
    from compressor.checkpoint import load_checkpoint, save_checkpoint

    shape = (1, 3, 12, 12)
    res = _slim_checked(Mixed(), shape)
    assert set(res.frozen_reasons) == {"network output"}, res.frozen_reasons
    mix = res.small.mix
    assert sum(mix.splits) == mix.in_channels == mix.out_channels < 20
    assert [c.in_channels for c in mix.values()] == list(mix.splits)
    path = tmp_path / "mixed.pt"
    save_checkpoint(res.small, path, meta={"arch": "tests.test_timm_blocks:Mixed"})
    again, _ = load_checkpoint(path, arch="tests.test_timm_blocks:Mixed")
    x = torch.randn(2, *shape[1:])
    with torch.no_grad():
        assert torch.equal(again.eval()(x), res.small.eval()(x))
    assert list(again.mix.splits) == list(mix.splits)


# ----------------------------------------------------------------------------- branches on shapes
class PadOdd(nn.Module):
    """Pads an odd spatial size (a branch on the input's height, as timm's cpubone attention)."""

    def __init__(self, branch_on_channels: bool = False) -> None:
        super().__init__()
        self.branch_on_channels = branch_on_channels
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        if x.shape[-1] % 2:
            x = nn.functional.pad(x, (0, 1, 0, 1))
        if self.branch_on_channels and x.shape[1] == 8:  # the slim model would take the other branch
            x = x * 2
        return self.head(torch.relu(self.c2(x)))


def test_a_branch_on_the_spatial_size_traces_and_is_pruned() -> None:
    shape = (1, 3, 11, 11)
    res = _slim_checked(PadOdd(), shape)
    assert set(res.frozen_reasons) == {"network output"}, res.frozen_reasons


def test_a_branch_on_a_channel_count_freezes_those_channels() -> None:
    shape = (1, 3, 11, 11)
    model = randomize(PadOdd(branch_on_channels=True).eval(), shape)
    graph = build_graph(model, input_shape=shape)
    assert graph.group("c1").frozen and "branches on these channels' count" in str(graph.group("c1").reason)
    assert not graph.group("c2").frozen


def test_a_branch_on_tensor_values_still_fails_to_trace() -> None:
    class OnValues(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.c(x)
            return y if y.mean() > 0 else -y

    with pytest.raises(TraceError, match="control flow"):
        build_graph(OnValues().eval(), input_shape=(1, 3, 8, 8))


class AuxHead(PadOdd):
    """:class:`PadOdd` with BatchNorm before the branch and a head used only in training (so the
    engine traces the training graph too, where the branch is evaluated as well)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.aux = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> Any:
        y = super().forward(self.bn(x))
        return (y, self.aux(torch.relu(self.c1(x)))) if self.training else y


def test_evaluating_a_branch_never_changes_the_model() -> None:
    model = randomize(AuxHead().eval(), (1, 3, 11, 11))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_graph(model, input_shape=(1, 3, 11, 11))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


# ----------------------------------------------------------------------------- multi-head attention
class Heads2(nn.Module):
    """Multi-head self-attention over pixels, ``qkv`` split as ``(3, heads, -1)``: the head size
    shrinks, the same positions in every head of q, k and v."""

    def __init__(self, fused: str = "") -> None:
        super().__init__()
        self.fused = fused
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.qkv = nn.Linear(8, 3 * 2 * 6)
        self.proj = nn.Linear(12, 8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(t).reshape(B, H * W, 3, 2, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused == "scale":
            a = nn.functional.scaled_dot_product_attention(q, k, v, scale=0.4)
        elif self.fused == "default":
            a = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax((q @ k.transpose(-2, -1)) * 0.4, dim=-1) @ v
        t = t + self.proj(a.transpose(1, 2).reshape(B, H * W, -1))
        return self.head(t.transpose(1, 2).reshape(B, C, H, W))


@pytest.mark.parametrize("fused", ["", "scale"])
def test_multi_head_attention_prunes_the_head_size(fused: str) -> None:
    shape = (1, 3, 5, 5)
    res = _slim_checked(Heads2(fused), shape, 0.6)
    assert res.small.qkv.out_features < 36 and res.small.qkv.out_features % 6 == 0  # 3 x 2 heads
    assert res.small.proj.in_features * 3 == res.small.qkv.out_features


def test_attention_with_its_default_scale_freezes_the_head_size_by_name() -> None:
    shape = (1, 3, 5, 5)
    model = randomize(Heads2("default").eval(), shape)
    graph = build_graph(model, input_shape=shape)
    assert "default scale reads the query's channel count" in str(graph.group("qkv").reason)
    assert not graph.group("stem").frozen


# ----------------------------------------------------------------------------- weight standardisation
class Std(nn.Module):
    """timm's weight-standardised convolutions (ResNetV2-BiT, NFNet): plain, scaled, and with
    TensorFlow "same" padding computed from the input."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame

        self.stem = ScaledStdConv2d(3, 16, 3, padding=1)
        self.a = StdConv2d(16, 16, 3)
        self.b = StdConv2dSame(16, 16, 3, stride=2)
        self.c = ScaledStdConv2dSame(16, 12, 3, stride=2)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in (self.stem, self.a, self.b, self.c):
            x = torch.relu(m(x))
        return self.head(x)


def test_weight_standardised_convs_are_pruned_exactly_and_folded_where_inputs_are_cut(tmp_path: Any) -> None:
    from timm.layers import ScaledStdConv2d, StdConv2d
    from timm.layers.conv2d_same import Conv2dSame

    from compressor.checkpoint import load_checkpoint, save_checkpoint

    shape = (1, 3, 13, 13)
    res = _slim_checked(Std(), shape)
    assert set(res.frozen_reasons) == {"network output"}, res.frozen_reasons
    small = res.small
    # the stem reads the image (no input cut): it stays weight-standardised, its gain sliced
    assert type(small.stem) is ScaledStdConv2d and small.stem.gain.shape[0] == small.stem.out_channels < 16
    # every layer that lost inputs now applies the standardised weights as a plain convolution
    assert type(small.a) is nn.Conv2d and small.a.in_channels < 16
    assert type(small.b) is Conv2dSame and type(small.c) is Conv2dSame  # dynamic "same" padding kept
    assert "gain" not in dict(small.c.named_parameters())
    path = tmp_path / "std.pt"
    save_checkpoint(small, path, meta={"arch": "tests.test_timm_blocks:Std"})
    again, _ = load_checkpoint(path, arch="tests.test_timm_blocks:Std")
    assert type(again.a) is nn.Conv2d and type(again.stem) is ScaledStdConv2d
    x = torch.randn(2, *shape[1:])
    with torch.no_grad():
        assert torch.equal(again.eval()(x), small.eval()(x))
    # the naive cut (the raw weights sliced, the standardisation kept) applies other weights:
    # standardising is invariant to a per-filter affine map, so re-standardising the folded
    # weights gives exactly the naive cut's weights; the outside check must refuse it
    model = randomize(Std().eval(), shape)  # the original, as _slim_checked randomised it
    naive = StdConv2d(small.a.in_channels, small.a.out_channels, 3)
    with torch.no_grad():
        naive.weight.copy_(small.a.weight)
    broken = load_checkpoint(path, arch="tests.test_timm_blocks:Std")[0]
    broken.a = naive
    assert outside_check(model, small, input_shape=shape).ok
    assert not outside_check(model, broken, input_shape=shape).ok


def test_a_class_token_passed_between_stages_is_counted_and_slimmed() -> None:
    """PiT hands its class token to its transformer stages in a tuple: counting the slim model's
    FLOPs must not trip the FLOP counter's autograd hooks (it did: 'Expected gradient function')."""
    from compressor.models import build_model

    shape = (1, 3, 64, 64)
    model = build_model("timm:pit_ti_224", img_size=64)
    res = _slim_checked(model, shape)
    assert res.flops_ratio == pytest.approx(0.5, abs=0.02)
    assert all(p.requires_grad for p in res.small.parameters())  # restored after counting


class Cond(nn.Module):
    """EfficientNet-CondConv's block: pooled features route each sample to a mix of expert
    filters (a dense CondConv with bias, then a depthwise one, then a pointwise one)."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import CondConv2d

        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.route = nn.Linear(12, 3)
        self.expand = CondConv2d(12, 16, 1, num_experts=3, bias=True)
        self.dw = CondConv2d(16, 16, 3, padding=1, groups=16, num_experts=3)
        self.project = CondConv2d(16, 10, 1, num_experts=3)
        self.head = nn.Conv2d(10, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        r = torch.sigmoid(self.route(x.mean((2, 3))))
        x = torch.relu(self.dw(torch.relu(self.expand(x, r)), r))
        return self.head(self.project(x, r))


def test_cond_conv_experts_are_pruned_exactly_and_the_checkpoint_reloads(tmp_path: Any) -> None:
    from compressor.checkpoint import load_checkpoint, save_checkpoint

    shape = (1, 3, 8, 8)
    res = _slim_checked(Cond(), shape)
    # the routing weights (one per expert) keep their size; everything else is cut
    assert set(res.frozen_reasons) == {
        "network output",
        "expand (CondConv2d): its further inputs keep their size",
    }
    assert abs(res.flops_ratio - 0.5) <= 0.02  # the cost model counts the experts' mixing too
    small = res.small
    assert small.route.out_features == 3 and small.dw.groups == small.dw.out_channels < 16
    assert small.expand.weight.shape == (3, small.expand.out_channels * small.expand.in_channels)
    path = tmp_path / "cond.pt"
    save_checkpoint(small, path, meta={"arch": "tests.test_timm_blocks:Cond"})
    again, _ = load_checkpoint(path, arch="tests.test_timm_blocks:Cond")
    x = torch.randn(2, *shape[1:])
    with torch.no_grad():
        assert torch.equal(again.eval()(x), small.eval()(x))
    # one expert's kept filter changed: the outside check must refuse it
    model = randomize(Cond().eval(), shape)
    with torch.no_grad():
        again.expand.weight[1, 0] += 1.0
    assert not outside_check(model, again, input_shape=shape).ok


class Grn(nn.Module):
    """ConvNeXt-V2's MLP: a global response norm between the two pointwise layers, channels last
    (as in ConvNeXt-V2) and channels first."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers.grn import GlobalResponseNorm

        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 16)
        self.grn_last = GlobalResponseNorm(16, channels_last=True)
        self.fc2 = nn.Linear(16, 8)
        self.pw = nn.Conv2d(8, 12, 1)
        self.grn_first = GlobalResponseNorm(12, channels_last=False)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.fc2(self.grn_last(torch.nn.functional.gelu(self.fc1(x.permute(0, 2, 3, 1)))))
        x = x + y.permute(0, 3, 1, 2)
        return self.head(self.grn_first(torch.relu(self.pw(x))))


def test_global_response_norm_is_cut_like_a_layer_norm() -> None:
    shape = (1, 3, 6, 6)
    res = _slim_checked(Grn(), shape)
    assert set(res.frozen_reasons) == {"network output"}, res.frozen_reasons
    small = res.small
    assert small.grn_last.weight.shape[0] == small.fc1.out_features < 16
    assert small.grn_first.bias.shape[0] == small.pw.out_channels < 12
    # one kept channel's weight changed: the outside check must refuse it
    model = randomize(Grn().eval(), shape)
    with torch.no_grad():
        small.grn_last.weight[0] += 1.0
    assert not outside_check(model, small, input_shape=shape).ok


class CondAux(Cond):
    """Cond with an auxiliary head used only in training: the engine traces the training graph
    too, and what it counted for the CondConvs in the eval graph must not be counted twice."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training:
            return out + self.aux(torch.relu(self.stem(x)))
        return out


def test_cond_conv_cost_is_exact_with_a_training_only_head() -> None:
    from compressor.graph import count, slim

    shape = (1, 3, 8, 8)
    model = randomize(CondAux().eval(), shape)
    graph = build_graph(model, input_shape=shape)
    plan = graph.plan_from_counts(graph.counts_for_flops(0.5), method="t")
    small = slim(model, plan, graph=graph)
    assert graph.full.macs == count(model, shape).macs
    assert graph.cost(plan).macs == count(small, shape).macs
