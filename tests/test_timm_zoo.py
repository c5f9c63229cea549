"""timm models slimmed by the engine, checked from the outside (compressor.testing.outside_check,
which does not use the engine) and reloaded from their checkpoint in a fresh process.

The default run covers :data:`TIMM_QUICK`; ``-m slow`` every model of the benchmark.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.models import build_model
from compressor.testing.outside_check import outside_check, randomize
from compressor.testing.zoo_check import (
    TIMM_MODELS,
    TIMM_NON_CONV_FAMILIES,
    TIMM_QUICK,
    engine_slim,
    roundtrip,
)

timm = pytest.importorskip("timm")

#: models the engine prunes to the target today (others keep frozen groups: see the benchmark)
ON_TARGET = {
    "resnet10t",
    "dla46_c",
    "convnext_atto",
    "efficientnet_lite0",
    "regnetx_002",
    # weight-standardised convolutions (folded where their inputs are cut)
    "resnetv2_50x1_bit",
    "nf_resnet26",
    "nf_regnet_b0",
    "eca_nfnet_l0",
    # reshapes by another tensor's channel count freeze both tensors; a class token passed as is
    "pvt_v2_b0",
    "twins_pcpvt_small",
    "xcit_nano_12_p16_224",
    "pit_ti_224",
    "mvitv2_tiny",  # an in-place write into a slice (traced, its channels frozen)
    # windows folded into the batch (counted in full), a query repeated over windows, a class
    # token concatenated before the patches, CondConv's experts, ConvNeXt-V2's response norm
    "tiny_vit_5m_224",
    "gcvit_xxtiny",
    "maxvit_nano_rw_256",
    "mobilevit_xxs",
    "vit_tiny_r_s16_p8_224",
    "efficientnet_cc_b0_4e",
    "convnextv2_atto",
    "csatv2",
}


def check(name: str) -> None:
    family, size, kwargs = TIMM_MODELS[name]
    shape = (1, 3, size, size)
    model = randomize(build_model("timm:" + name, **kwargs), shape)
    res = engine_slim(model, shape, 0.5)
    chk = outside_check(model, res.small, input_shape=shape)
    assert chk.ok, f"{name}: {chk.reason}"
    assert chk.output_scale > 0 and chk.nonzero_fraction > 0.5 and chk.input_sensitivity > 0
    if res.flops_ratio < 0.999:  # something was pruned: the error is rounding, never exactly 0
        assert chk.layers_pruned > 0 and chk.error > 0.0
    if name in ON_TARGET:
        assert res.flops_ratio == pytest.approx(0.5, abs=0.02), name
    rt = roundtrip(res.small, "timm:" + name, shape, arch_kwargs=kwargs)
    assert rt["ok"], f"{name}: {rt}"


def test_the_benchmark_covers_every_convolutional_family() -> None:
    covered = {family for family, _s, _k in TIMM_MODELS.values()}
    missing = set(timm.list_modules()) - covered - set(TIMM_NON_CONV_FAMILIES)
    assert not missing, f"timm families neither benchmarked nor listed as non-convolutional: {missing}"
    assert len(TIMM_MODELS) >= 80


@pytest.mark.parametrize("name", TIMM_QUICK)
def test_timm_quick(name: str) -> None:
    check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TIMM_MODELS if n not in TIMM_QUICK])
def test_timm_full(name: str) -> None:
    check(name)


class _TimmBlocks(nn.Module):
    """timm's norm+act, TF-'same' convolution and Linear in one small net."""

    def __init__(self, act: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        from timm.layers import BatchNormAct2d, GroupNormAct, Linear
        from timm.layers.conv2d_same import Conv2dSame

        self.c1 = Conv2dSame(3, 16, 3, stride=2)
        self.n1 = BatchNormAct2d(16, act_layer=act)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.n2 = GroupNormAct(16, num_groups=4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.n2(self.c2(self.n1(self.c1(x))))
        return self.fc(self.pool(x).flatten(1))


def test_timm_blocks_are_understood_and_slim_exactly() -> None:
    shape = (1, 3, 17, 17)  # odd: Conv2dSame pads asymmetrically
    model = randomize(_TimmBlocks(), shape)
    res = engine_slim(model, shape, 0.5)
    assert res.frozen_reasons == {"network output": 5}, res.frozen_reasons
    chk = outside_check(model, res.small, input_shape=shape)
    assert chk.ok and chk.error > 0 and chk.layers_pruned >= 3, chk.reason
    assert res.flops_ratio == pytest.approx(0.5, abs=0.05)


def test_a_norm_act_with_per_channel_parameters_is_frozen_by_name() -> None:
    shape = (1, 3, 16, 16)
    model = randomize(_TimmBlocks(act=lambda inplace=False: nn.PReLU(16)), shape)  # type: ignore[arg-type]
    res = engine_slim(model, shape, 0.5)
    assert any("PReLU is not an element-wise activation" in r for r in res.frozen_reasons), res.frozen_reasons
    assert outside_check(model, res.small, input_shape=shape).ok
