"""timm architectures by name (``timm:NAME``), widths rebuilt as layer objects, state_dict
metadata kept, and every checkpoint reloading in a fresh process with equal outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from compressor.checkpoint import load_checkpoint, save_checkpoint
from compressor.errors import CheckpointError, UsageError
from compressor.graph import build_graph, slim
from compressor.graph.widths import apply_widths, get_widths
from compressor.models import build_model, canonical_arch
from compressor.testing.outside_check import outside_check, randomize
from compressor.testing.zoo_check import roundtrip

timm = pytest.importorskip("timm")


def _slim(model: nn.Module, shape: tuple[int, ...], target: float = 0.5) -> nn.Module:
    graph = build_graph(model, input_shape=shape)
    plan = graph.plan_from_counts(graph.counts_for_flops(target), method="l1-uniform")
    return slim(model, plan, graph=graph)


def test_timm_arch_builds_without_pretrained_weights() -> None:
    assert canonical_arch(" timm:resnet10t ") == "timm:resnet10t"
    model = build_model("timm:resnet10t", num_classes=7)
    assert type(model).__module__.startswith("timm.") and model.num_classes == 7
    with pytest.raises(UsageError, match="pretrained=True is not allowed"):
        build_model("timm:resnet10t", pretrained=True)


def test_unknown_timm_name_says_what_is_allowed() -> None:
    with pytest.raises(UsageError, match=r"unknown timm architecture 'resnet10tt'.*timm.list_models\(\)"):
        canonical_arch("timm:resnet10tt")


def test_cli_profile_takes_a_timm_arch() -> None:
    from compressor.cli.main import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["profile", "--arch", "timm:resnet10t", "--input-shape", "3,32,32"])
    assert res.exit_code == 0, res.output
    assert "timm:resnet10t" in res.output or "MACs" in res.output or "macs" in res.output.lower()
    bad = CliRunner().invoke(app, ["profile", "--arch", "timm:no_such_net", "--input-shape", "3,32,32"])
    assert bad.exit_code == 2 and "unknown timm architecture" in bad.output


def test_timm_checkpoint_is_trusted_data_and_drops_pretrained(tmp_path: Path) -> None:
    model = build_model("timm:resnet10t", num_classes=5).eval()
    ck = tmp_path / "m.pt"
    save_checkpoint(model, ck, meta={"arch": "timm:resnet10t", "arch_kwargs": {"num_classes": 5}})
    obj = torch.load(ck, weights_only=True)
    assert obj["arch"] == "timm:resnet10t"
    obj["arch_kwargs"]["pretrained"] = True  # a file may not ask for a download: dropped
    torch.save(obj, ck)
    loaded, meta = load_checkpoint(ck)
    assert meta["arch"] == "timm:resnet10t" and "pretrained" not in meta["arch_kwargs"]
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    obj["arch"] = "timm:no_such_net"
    torch.save(obj, ck)
    with pytest.raises(CheckpointError, match="no_such_net"):
        load_checkpoint(ck)


def test_widths_never_written_through_properties() -> None:
    """timm's ConvNormAct reports in_channels through a read-only property: widths record only
    what a module stores itself, and re-applying them rebuilds layer objects."""
    from timm.layers import ConvNormAct

    net = nn.Sequential(ConvNormAct(3, 8, 3), ConvNormAct(8, 4, 1))
    widths = get_widths(net)
    assert "0" not in widths and widths["0.conv"]["out_channels"] == 8
    fresh = nn.Sequential(ConvNormAct(3, 8, 3), ConvNormAct(8, 4, 1))
    old_conv = fresh[1].conv
    widths["0.conv"]["out_channels"] = 6
    widths["1.conv"]["in_channels"] = 6
    widths["0.bn"]["num_features"] = 6
    sd = {k: v for k, v in fresh.state_dict().items()}
    for k in ("0.conv.weight", "0.bn.weight", "0.bn.bias", "0.bn.running_mean", "0.bn.running_var"):
        sd[k] = sd[k][:6]
    sd["1.conv.weight"] = sd["1.conv.weight"][:, :6]
    out = apply_widths(fresh, widths, sd)
    out.load_state_dict(sd)
    assert out[1].in_channels == 6 and out[1].conv is not old_conv  # a new layer object
    assert old_conv.in_channels == 8 and old_conv.weight.shape[1] == 8  # the old one untouched
    assert out(torch.randn(1, 3, 8, 8)).shape == (1, 4, 8, 8)


@pytest.mark.parametrize(
    ("arch", "size"),
    [
        ("torchvision.models:mnasnet0_5", 32),  # state_dict metadata (its version) must survive
        ("timm:regnetx_002", 32),  # ConvNormAct: read-only width properties
    ],
)
def test_slim_checkpoint_reloads_in_a_fresh_process(arch: str, size: int) -> None:
    shape = (1, 3, size, size)
    model = randomize(build_model(arch), shape)
    small = _slim(model, shape)
    res = roundtrip(small, arch, shape)
    assert res["ok"], res
    assert 0.0 <= res["error"] <= 1e-6


def test_state_dict_metadata_is_saved(tmp_path: Path) -> None:
    model = build_model("torchvision.models:mnasnet0_5")
    ck = tmp_path / "m.pt"
    save_checkpoint(model, ck, meta={"arch": "torchvision.models:mnasnet0_5"})
    sd = torch.load(ck, weights_only=True)["state_dict"]
    assert sd._metadata[""]["version"] == 2  # MNASNet refuses a state_dict without it


def test_outside_check_passes_the_engine_and_fails_a_broken_model() -> None:
    shape = (1, 3, 32, 32)
    model = randomize(build_model("timm:resnet10t"), shape)
    small = _slim(model, shape)
    res = outside_check(model, small, input_shape=shape)
    assert res.ok, res.reason
    assert res.layers_pruned > 0 and res.output_scale > 0 and res.nonzero_fraction == 1.0
    assert 0.0 < res.error < 1e-4  # never exactly zero: the masked original differs by rounding
    broken = _slim(model, shape)
    with torch.no_grad():  # a kept BN slice taken from other channels: no longer a slice
        bn = broken.bn1
        bn.running_mean.copy_(bn.running_mean.flip(0))
    assert not outside_check(model, broken, input_shape=shape).ok
    shifted = _slim(model, shape)
    with torch.no_grad():  # a bias changed: a slice of the original still, but other outputs
        shifted.fc.bias.add_(1.0)
    bad = outside_check(model, shifted, input_shape=shape)
    assert not bad.ok


def test_outside_check_decides_in_float64_what_float32_rounding_cannot() -> None:
    shape = (1, 3, 32, 32)
    model = randomize(build_model("timm:resnet10t"), shape)
    small = _slim(model, shape)
    # a tolerance below float32 rounding: only the float64 comparison can meet it
    res = outside_check(model, small, input_shape=shape, tol=1e-9)
    assert res.ok and res.precision == "float64", res.reason
    assert res.float32_error is not None and res.error < 1e-9 < res.float32_error
    assert next(model.parameters()).dtype == torch.float32  # the models themselves are untouched
    assert not outside_check(model, small, input_shape=shape, tol=1e-9, double=False).ok
    # an error the weights do not show (a hook shifts the logits): it does not shrink in float64
    small.fc.register_forward_hook(lambda m, args, out: out + 1e-3 * out.abs().max())
    bad = outside_check(model, small, input_shape=shape)
    assert not bad.ok and bad.precision == "float64" and bad.error > 1e-4


def test_outside_check_refuses_a_vacuous_comparison() -> None:
    shape = (1, 3, 32, 32)
    net = randomize(build_model("timm:resnet10t"), shape)
    with torch.no_grad():  # every logit far below zero: the ReLU after it outputs only zeros
        net.fc.bias.sub_(1e6)
    model = nn.Sequential(net, nn.ReLU()).eval()
    small = _slim(model, shape)
    res = outside_check(model, small, input_shape=shape)
    assert not res.ok and "vacuous" in res.reason
