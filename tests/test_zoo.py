"""The registered zoo: every architecture builds for MNIST and CIFAR shapes, runs, and traces."""

from __future__ import annotations

import pytest
import torch
import torch.fx

from compressor.errors import UsageError
from compressor.models import build_model, canonical_arch, list_models

TINY = {
    "resnet_cifar": {"depth": 8, "width": 4},
    "mobilenet_v1": {"width_mult": 0.125, "blocks": 4},
    "vgg_small": {"width": 4},
    "mbconv": {"width_mult": 0.25, "head": 16},
}


def test_zoo_is_registered() -> None:
    assert {"resnet_cifar", "mobilenet_v1", "vgg_small", "mbconv"} <= set(list_models())
    for name in TINY:
        assert canonical_arch(name) == f"compressor.models.zoo:{name}"


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 7)])
def test_builds_runs_and_traces(name: str, shape: tuple[int, int, int], classes: int) -> None:
    torch.manual_seed(0)
    m = build_model(name, num_classes=classes, in_channels=shape[0], **TINY[name]).eval()
    x = torch.randn(2, *shape)
    y = m(x)
    assert y.shape == (2, classes)
    assert torch.isfinite(y).all()
    gm = torch.fx.symbolic_trace(m)
    torch.testing.assert_close(gm(x), y)
    # no in-place ops: every activation is its own fx node, so the channel graph sees all of them
    assert not any(getattr(mod, "inplace", False) for mod in m.modules())


def test_resnet_structure() -> None:
    m = build_model("resnet_cifar", num_classes=10, in_channels=1, depth=14, width=8)
    assert [len(s) for s in (m.layer1, m.layer2, m.layer3)] == [2, 2, 2]
    assert m.conv1.in_channels == 1 and m.fc.in_features == 32
    assert m.layer2[0].downsample is not None and m.layer2[1].downsample is None
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3)]
    assert len(convs) == 13  # 6n+2 = 14 weighted layers: 13 3x3 convs + fc


def test_mobilenet_is_depthwise_separable() -> None:
    m = build_model("mobilenet_v1", num_classes=10, in_channels=3, width_mult=0.25)
    dws = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d) and mod.groups > 1]
    assert len(dws) == 13
    assert all(d.groups == d.in_channels == d.out_channels for d in dws)
    assert m.fc.in_features == 256


def test_vgg_flattens_spatial_features_into_linear() -> None:
    m = build_model("vgg_small", num_classes=10, in_channels=3, width=8, pooled=2)
    assert m.classifier[0].in_features == 32 * 2 * 2


@pytest.mark.parametrize(
    "name,kwargs",
    [("resnet_cifar", {"depth": 9}), ("resnet_cifar", {"width": 0}), ("mobilenet_v1", {"blocks": 14}),
     ("vgg_small", {"num_classes": 0}), ("mobilenet_v1", {"width_mult": 0.0})],
)  # fmt: skip
def test_bad_arguments_are_usage_errors(name: str, kwargs: dict[str, int]) -> None:
    with pytest.raises(UsageError, match=name):
        build_model(name, **kwargs)


def test_mbconv_structure() -> None:
    """Inverted residuals: depthwise 3x3, squeeze-excitation with a sigmoid gate, SiLU, residual adds."""
    from compressor.models.zoo import MBConv, SqueezeExcite

    m = build_model("mbconv", num_classes=10, in_channels=1)
    blocks = [b for b in m.modules() if isinstance(b, MBConv)]
    assert len(blocks) == 6 and sum(b.residual for b in blocks) == 3
    assert all(b.dw.groups == b.dw.in_channels == b.dw.out_channels for b in blocks)
    assert all(isinstance(b.se, SqueezeExcite) for b in blocks)
    assert any(isinstance(a, torch.nn.SiLU) for a in m.modules())
    assert not any(isinstance(a, torch.nn.ReLU) for a in m.modules())


@pytest.mark.parametrize(
    "ckpt,arch,min_acc,max_bytes",
    [("resnet_mnist.pt", "resnet_cifar", 97.0, 5 * 2**20), ("mbconv_mnist.pt", "mbconv", 98.0, 2**20)],
)
def test_demo_checkpoint_is_small_and_accurate(ckpt: str, arch: str, min_acc: float, max_bytes: int) -> None:
    from pathlib import Path

    from compressor.checkpoint import load_checkpoint
    from compressor.data import load_data, make_loader
    from compressor.evaluate import accuracy

    path = Path(__file__).resolve().parents[1] / "examples" / ckpt
    assert path.stat().st_size <= max_bytes
    model, meta = load_checkpoint(path)
    assert meta["arch"] == f"compressor.models.zoo:{arch}"
    assert (meta["dataset"], meta["input_shape"], meta["num_classes"]) == ("mnist5k", [1, 28, 28], 10)
    assert len(meta["mean"]) == len(meta["std"]) == 1
    data = load_data(meta["dataset"], meta=meta)
    top1 = accuracy(model, make_loader(data.test, 250))["top1"]
    assert top1 >= min_acc and top1 == pytest.approx(meta["accuracy"]["test"])


def test_mbconv_demo_prunes_at_half_the_flops() -> None:
    """The trained MBConv demo through the engine: l1-uniform at 50% FLOPs (widths x8) slims and verifies."""
    from pathlib import Path

    import compressor
    from compressor.checkpoint import load_checkpoint
    from compressor.graph import build_graph, count, slim

    model, _ = load_checkpoint(Path(__file__).resolve().parents[1] / "examples" / "mbconv_mnist.pt")
    shape = (1, 1, 28, 28)
    g = build_graph(model, input_shape=shape)
    plan = compressor.search(model, method="l1-uniform", flops=0.5, input_shape=shape, graph=g, multiple=8)
    small = slim(model, plan, graph=g)
    assert g.verify(small, plan) < 1e-4
    assert 0.45 < count(small, shape).macs / count(model, shape).macs <= 0.51


@pytest.mark.parametrize("name", sorted(TINY))
def test_zoo_prunes_and_slims_exactly(name: str) -> None:
    """Every zoo net goes through the channel graph: l1-uniform at 50% FLOPs, slim == masked original."""
    import compressor
    from compressor.graph import build_graph, count, slim

    shape = (1, 3, 32, 32)
    torch.manual_seed(0)
    m = build_model(name, num_classes=10, in_channels=3, **TINY[name]).eval()
    for mod in m.modules():  # non-trivial BN statistics, so a wrong slice would show
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    g = build_graph(m, input_shape=shape)
    assert len(g.prunable) >= 5
    plan = compressor.search(m, method="l1-uniform", flops=0.5, input_shape=shape, graph=g)
    small = slim(m, plan, graph=g)
    x = torch.randn(4, 3, 32, 32)
    assert small(x).shape == (4, 10) and m(x).std() > 0
    assert g.verify(small, plan) < 1e-4
    ratio = count(small, shape).macs / count(m, shape).macs
    assert 0.4 < ratio < 0.6
