"""The channel engine over torchvision's classification zoo (weights=None, small inputs).

The default run covers one model per family; ``-m slow`` runs every model.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from compressor.graph import build_graph, calibrate_bn, count, slim

ALL = torchvision.models.list_models(module=torchvision.models)
TRANSFORMERS = ("vit_", "swin_", "maxvit")
QUICK = [
    "resnet18",
    "mobilenet_v3_small",
    "shufflenet_v2_x0_5",
    "efficientnet_b0",
    "regnet_y_400mf",
    "googlenet",
]


def size(name: str) -> int:
    if name.startswith(("vit_", "maxvit")):
        return 224
    if name.startswith("inception"):
        return 96
    return (
        64
        if name in ("alexnet", "googlenet") or not name.startswith(("mobilenet", "shufflenet", "mnasnet"))
        else 32
    )


def check(name: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    shape = (1, 3, size(name), size(name))
    calibrate_bn(model, shape)  # healthy activations, so the equivalence check means something
    graph = build_graph(model, input_shape=shape)
    if not name.startswith(TRANSFORMERS):
        assert len(graph.prunable) >= 3, f"{name}: only {len(graph.prunable)} prunable groups"
    plan = graph.plan_from_counts(graph.counts_for_flops(0.5), method="l1-uniform")
    small = slim(model, plan, graph=graph)
    assert graph.verify(small, plan, [torch.randn(1, *shape[1:])]) < 1e-4
    if not name.startswith(TRANSFORMERS):
        ratio = count(small, shape).macs / graph.full.macs
        assert ratio == pytest.approx(0.5, abs=0.02), name
    # the slim model also runs in training mode (auxiliary heads, batch statistics)
    small.train()
    train_size = 299 if name.startswith("inception") else shape[-1]  # its auxiliary head needs its full size
    out = small(torch.randn(2, 3, train_size, train_size))
    assert out is not None


@pytest.mark.parametrize("name", QUICK)
def test_zoo_quick(name: str) -> None:
    check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if n not in QUICK])
def test_zoo_full(name: str) -> None:
    check(name)
