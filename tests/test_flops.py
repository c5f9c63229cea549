"""compressor.count agrees with torchvision's published GFLOPS and parameter counts."""

from __future__ import annotations

import pytest
import torch
import torchvision

from compressor.graph import count

QUICK = ["resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121", "vit_b_16", "convnext_tiny"]


def published(name: str):
    for w in torchvision.models.get_model_weights(name):
        if "_ops" in w.meta:
            return w
    return None


def check(name: str) -> None:
    w = published(name)
    if w is None:
        pytest.skip(f"{name} has no published _ops")
    crop = w.transforms().crop_size[0]
    kw = {"num_classes": len(w.meta["categories"])}
    if name.startswith("vit_"):
        kw["image_size"] = crop
    if name == "googlenet":
        kw["aux_logits"] = False  # published parameters exclude the training-only heads
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None, **kw)
    except Exception:  # some builders compute with tensors at construction (RegNet)
        model = torchvision.models.get_model(name, weights=None, **kw).to("meta")
    c = count(model, (1, 3, crop, crop))
    gflops = c.macs / 1e9
    # published figures are rounded to 3 decimals: allow 1% or the rounding, whichever is larger
    assert abs(gflops - w.meta["_ops"]) <= max(0.01 * w.meta["_ops"], 0.0005 + 1e-9), (gflops, w.meta["_ops"])
    assert c.params == w.meta["num_params"]


@pytest.mark.parametrize("name", QUICK)
def test_flops_quick(name: str) -> None:
    check(name)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [n for n in torchvision.models.list_models(module=torchvision.models) if n not in QUICK]
)
def test_flops_full(name: str) -> None:
    check(name)


def test_count_rows_sum_to_total() -> None:
    model = torchvision.models.resnet18()
    c = count(model, (1, 3, 64, 64))
    assert sum(r["macs"] for r in c.rows) == c.macs
    assert sum(r["params"] for r in c.rows) == c.params
