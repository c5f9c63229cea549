"""The channel engine over torchvision's classification zoo (weights=None, small inputs).

Weights are randomised so that no output is identically zero (torchvision zero-initialises the
ViT heads: an error of exactly 0 would prove nothing); every slim model is checked by the
engine's own ``verify`` and by the independent outside check, and reloaded from its checkpoint
in a fresh process. The default run covers one model per family; ``-m slow`` runs every model.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from compressor.graph import build_graph, count, slim
from compressor.testing.outside_check import outside_check, randomize
from compressor.testing.zoo_check import roundtrip

ALL = torchvision.models.list_models(module=torchvision.models)
TRANSFORMERS = ("vit_", "swin_", "maxvit")
QUICK = [
    "resnet18",
    "mobilenet_v3_small",
    "shufflenet_v2_x0_5",
    "efficientnet_b0",
    "regnet_y_400mf",
    "googlenet",
    "mnasnet0_5",  # its state_dict metadata (version) must survive the checkpoint
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
    randomize(model, shape)  # every output non-zero, so the equivalence checks mean something
    graph = build_graph(model, input_shape=shape)
    if not name.startswith(TRANSFORMERS):
        assert len(graph.prunable) >= 3, f"{name}: only {len(graph.prunable)} prunable groups"
    plan = graph.plan_from_counts(graph.counts_for_flops(0.5), method="l1-uniform")
    small = slim(model, plan, graph=graph)
    x = torch.randn(1, *shape[1:])
    assert bool((model(x) != 0).all()), f"{name}: an output is exactly zero: the check would be vacuous"
    err = graph.verify(small, plan, [x])
    assert 0.0 < err < 1e-4, f"{name}: engine's own check {err}"
    chk = outside_check(model, small, input_shape=shape)
    assert chk.ok and chk.error > 0.0 and chk.layers_pruned > 0, f"{name}: {chk.reason}"
    rt = roundtrip(small, f"torchvision.models:{name}", shape)
    assert rt["ok"], f"{name}: {rt}"
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
