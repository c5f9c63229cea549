"""One model of a zoo slimmed by compressor, checked from the outside and round-tripped.

Shared by the zoo tests and ``benchmarks/timm_zoo.py`` / ``benchmarks/zoo_slim.py``:

* :func:`engine_slim` slims a (randomised) model with l1-uniform at a FLOPs target and says
  what share of its channels the engine froze and why;
* :func:`roundtrip` saves a slim model as a compressor checkpoint, reloads it **in a fresh
  Python process** and compares the outputs there;
* :data:`TIMM_MODELS` lists the timm models the benchmark covers, one or more per
  convolutional family (a timm module) and per convolutional hybrid, with the input size and
  builder arguments that let each run at a small input.

Equivalence itself is :func:`compressor.testing.outside_check.outside_check`, which does not use
the engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


@dataclass
class EngineResult:
    """What the engine did to one model."""

    small: nn.Module | None
    flops_ratio: float
    groups: int
    prunable_groups: int
    frozen_groups: int
    #: share of the channels (summed over groups) the engine froze
    frozen_channel_share: float
    #: reason -> number of channels frozen for it (reasons shortened: node names removed)
    frozen_reasons: dict[str, int] = field(default_factory=dict)
    trace_s: float = 0.0
    plan_s: float = 0.0
    slim_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.trace_s + self.plan_s + self.slim_s


def _short_reason(reason: str | None) -> str:
    """A frozen group's reason without the node name (``batch_norm_5 (batch_norm) is ...``
    becomes ``batch_norm is ...``), so reasons can be counted across a model."""
    r = reason or "unknown"
    head, sep, tail = r.partition(") ")
    if sep and " (" in head:
        return head.rpartition(" (")[2] + " " + tail
    return r


def engine_slim(model: nn.Module, shape: tuple[int, ...], target: float = 0.5) -> EngineResult:
    """Slim ``model`` with l1-uniform at ``target`` of its FLOPs (the engine's own plan)."""
    from compressor.graph import build_graph, count, slim

    t0 = time.perf_counter()
    graph = build_graph(model, input_shape=shape)
    t1 = time.perf_counter()
    plan = graph.plan_from_counts(graph.counts_for_flops(target), method="l1-uniform")
    t2 = time.perf_counter()
    small = slim(model, plan, graph=graph)
    t3 = time.perf_counter()
    total = sum(g.size for g in graph.groups) or 1
    reasons: Counter[str] = Counter()
    for g in graph.frozen:
        reasons[_short_reason(g.reason)] += g.size
    return EngineResult(
        small=small,
        flops_ratio=count(small, shape).macs / max(graph.full.macs, 1),
        groups=len(graph.groups),
        prunable_groups=len(graph.prunable),
        frozen_groups=len(graph.frozen),
        frozen_channel_share=sum(g.size for g in graph.frozen) / total,
        frozen_reasons=dict(reasons.most_common()),
        trace_s=t1 - t0,
        plan_s=t2 - t1,
        slim_s=t3 - t2,
    )


_RELOAD = r"""
import json, sys, torch
from compressor.checkpoint import load_checkpoint
torch.set_num_threads(1)
model, _ = load_checkpoint(sys.argv[1])
x, y = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    got = model(x)
got = got if isinstance(got, torch.Tensor) else got[0]
scale = float(y.abs().max())
print(json.dumps({"max_abs": float((got - y).abs().max()), "scale": scale}))
"""


@torch.no_grad()
def roundtrip(
    small: nn.Module, arch: str, shape: tuple[int, ...], *, arch_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Save ``small`` as a compressor checkpoint, reload it in a fresh process, compare outputs.

    Returns ``{"ok", "error"}`` where ``error`` is ``max |reloaded - saved| / max |saved|``
    (``ok`` needs it <= 1e-6 and the saved output not identically zero), or ``{"ok": False,
    "why": ...}`` when the reload failed.
    """
    from compressor.checkpoint import save_checkpoint

    small.eval()
    x = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reload: another thread count sums in another order (~1e-6)
    try:
        y = small(x)
    finally:
        torch.set_num_threads(threads)
    y = y if isinstance(y, torch.Tensor) else y[0]
    with tempfile.TemporaryDirectory() as tmp:
        ck, io = Path(tmp) / "slim.pt", Path(tmp) / "io.pt"
        save_checkpoint(small, ck, meta={"arch": arch, "arch_kwargs": dict(arch_kwargs or {})})
        torch.save((x, y), io)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        res = subprocess.run(
            [sys.executable, "-c", _RELOAD, str(ck), str(io)], capture_output=True, text=True, env=env
        )
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"ok": False, "why": f"reload failed: {last[:300]}"}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["scale"] == 0.0:
        return {"ok": False, "why": "the saved model's output is identically zero (vacuous)"}
    err = out["max_abs"] / out["scale"]
    return {"ok": err <= 1e-6, "error": err}


#: timm models of the benchmark: name -> (family, input size, builder keyword arguments).
#: Families are timm's modules; ``hybrid`` marks convolution + attention networks.
TIMM_MODELS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "botnet26t_256": ("byoanet", 64, {"img_size": 64}),
    "lambda_resnet26t": ("byoanet", 64, {}),
    "eca_resnet33ts": ("byobnet", 64, {}),
    "gcresnet33ts": ("byobnet", 64, {}),
    "gernet_s": ("byobnet", 64, {}),
    "mobileone_s0": ("byobnet", 64, {}),
    "regnetz_b16": ("byobnet", 64, {}),
    "repvgg_a0": ("byobnet", 64, {}),
    "resnext26ts": ("byobnet", 64, {}),
    "seresnext26ts": ("byobnet", 64, {}),
    "coat_lite_tiny": ("coat", 64, {"img_size": 64}),
    "convmixer_768_32": ("convmixer", 64, {}),
    "convnext_atto": ("convnext", 64, {}),
    "convnext_atto_rms": ("convnext", 64, {}),
    "convnextv2_atto": ("convnext", 64, {}),
    "cpubone_b0_bfrobust": ("cpubone", 64, {}),
    "csatv2": ("csatv2", 64, {}),
    "cs3darknet_s": ("cspnet", 64, {}),
    "cspdarknet53": ("cspnet", 64, {}),
    "cspresnet50": ("cspnet", 64, {}),
    "darknet17": ("cspnet", 64, {}),
    "cspnext_tiny": ("cspnext", 64, {}),
    "davit_tiny": ("davit", 64, {}),
    "densenet121": ("densenet", 64, {}),
    "dla34": ("dla", 64, {}),
    "dla46_c": ("dla", 64, {}),
    "dla46x_c": ("dla", 64, {}),
    "dpn48b": ("dpn", 64, {}),
    "dpn68": ("dpn", 64, {}),
    "edgenext_xx_small": ("edgenext", 64, {}),
    "efficientformer_l1": ("efficientformer", 224, {}),
    "efficientformerv2_s0": ("efficientformer_v2", 64, {"img_size": 64}),
    "efficientnet_b0": ("efficientnet", 64, {}),
    "efficientnet_b0_gn": ("efficientnet", 64, {}),
    "efficientnet_cc_b0_4e": ("efficientnet", 64, {}),
    "efficientnet_lite0": ("efficientnet", 64, {}),
    "efficientnetv2_rw_t": ("efficientnet", 64, {}),
    "fbnetc_100": ("efficientnet", 64, {}),
    "mixnet_s": ("efficientnet", 64, {}),
    "mnasnet_100": ("efficientnet", 64, {}),
    "mobilenetv1_100": ("efficientnet", 64, {}),
    "mobilenetv2_100": ("efficientnet", 64, {}),
    "spnasnet_100": ("efficientnet", 64, {}),
    "tf_efficientnet_b0": ("efficientnet", 64, {}),
    "tf_efficientnetv2_b0": ("efficientnet", 64, {}),
    "tinynet_e": ("efficientnet", 64, {}),
    "efficientvim_m1": ("efficientvim", 64, {}),
    "efficientvit_b0": ("efficientvit_mit", 64, {}),
    "efficientvit_m0": ("efficientvit_msra", 64, {}),
    "fasternet_t0": ("fasternet", 64, {}),
    "fastvit_t8": ("fastvit", 64, {}),
    "focalnet_tiny_srf": ("focalnet", 64, {}),
    "gcvit_xxtiny": ("gcvit", 64, {"img_size": 64}),
    "ghostnet_050": ("ghostnet", 64, {}),
    "ghostnet_100": ("ghostnet", 64, {}),
    "ghostnetv2_100": ("ghostnet", 64, {}),
    "ghostnetv3_050": ("ghostnet", 64, {}),
    "hardcorenas_a": ("hardcorenas", 64, {}),
    "hgnet_tiny": ("hgnet", 64, {}),
    "hgnetv2_b0": ("hgnet", 64, {}),
    "hgnetv2_b1": ("hgnet", 64, {}),
    "hrnet_w18_small": ("hrnet", 64, {}),
    "iformer_t": ("iformer", 64, {}),
    "inception_next_atto": ("inception_next", 64, {}),
    "inception_resnet_v2": ("inception_resnet_v2", 96, {}),
    "inception_v3": ("inception_v3", 96, {}),
    "inception_v4": ("inception_v4", 96, {}),
    "lcnetv2_small": ("lcnetv2", 64, {}),
    "levit_128s": ("levit", 64, {"img_size": 64}),
    "lowformer_b0": ("lowformer", 64, {}),
    "mambaout_femto": ("mambaout", 64, {}),
    "coatnet_nano_rw_224": ("maxxvit", 64, {"img_size": 64}),
    "maxvit_nano_rw_256": ("maxxvit", 64, {"img_size": 64}),
    "poolformer_s12": ("metaformer", 64, {}),
    "fbnetv3_b": ("mobilenetv3", 64, {}),
    "lcnet_050": ("mobilenetv3", 64, {}),
    "mobilenetv3_large_100": ("mobilenetv3", 64, {}),
    "mobilenetv3_small_050": ("mobilenetv3", 64, {}),
    "mobilenetv4_conv_small": ("mobilenetv3", 64, {}),
    "mobilenetv4_hybrid_medium": ("mobilenetv3", 64, {}),
    "tf_mobilenetv3_small_minimal_100": ("mobilenetv3", 64, {}),
    "mobilevit_xxs": ("mobilevit", 64, {}),
    "mobilevitv2_050": ("mobilevit", 64, {}),
    "mvitv2_tiny": ("mvitv2", 64, {}),
    "nasnetalarge": ("nasnet", 64, {}),
    "nextvit_small": ("nextvit", 64, {}),
    "eca_nfnet_l0": ("nfnet", 64, {}),
    "nf_regnet_b0": ("nfnet", 64, {}),
    "nf_resnet26": ("nfnet", 64, {}),
    "pit_ti_224": ("pit", 64, {"img_size": 64}),
    "pnasnet5large": ("pnasnet", 64, {}),
    "pvt_v2_b0": ("pvt_v2", 64, {}),
    "rdnet_tiny": ("rdnet", 64, {}),
    "regnetx_002": ("regnet", 64, {}),
    "regnety_002": ("regnet", 64, {}),
    "regnety_008": ("regnet", 64, {}),
    "repghostnet_050": ("repghost", 64, {}),
    "repvit_m0_9": ("repvit", 64, {}),
    "res2net50_14w_8s": ("res2net", 64, {}),
    "resnest14d": ("resnest", 64, {}),
    "ecaresnet26t": ("resnet", 64, {}),
    "resnet10t": ("resnet", 64, {}),
    "resnet18": ("resnet", 64, {}),
    "resnet50d": ("resnet", 64, {}),
    "seresnext26d_32x4d": ("resnet", 64, {}),
    "resnetv2_18": ("resnetv2", 64, {}),
    "resnetv2_50": ("resnetv2", 64, {}),
    "resnetv2_50x1_bit": ("resnetv2", 64, {}),
    "rexnet_100": ("rexnet", 64, {}),
    "rexnetr_100": ("rexnet", 64, {}),
    "selecsls42b": ("selecsls", 64, {}),
    "legacy_seresnet18": ("senet", 64, {}),
    "shvit_s1": ("shvit", 64, {}),
    "skresnet18": ("sknet", 64, {}),
    "skresnext50_32x4d": ("sknet", 64, {}),
    "starnet_s1": ("starnet", 64, {}),
    "swiftformer_xs": ("swiftformer", 64, {}),
    "tiny_vit_5m_224": ("tiny_vit", 64, {}),
    "tresnet_m": ("tresnet", 64, {}),
    "twins_pcpvt_small": ("twins", 64, {}),
    "vgg11_bn": ("vgg", 64, {}),
    "visformer_tiny": ("visformer", 64, {"img_size": 64}),
    "vit_tiny_r_s16_p8_224": ("vision_transformer_hybrid", 64, {"img_size": 64}),
    "vitamin_small_224": ("vitamin", 64, {"img_size": 64}),
    "eca_vovnet39b": ("vovnet", 64, {}),
    "ese_vovnet19b_dw": ("vovnet", 64, {}),
    "legacy_xception": ("xception", 64, {}),
    "xception41": ("xception_aligned", 64, {}),
    "xcit_nano_12_p16_224": ("xcit", 64, {}),
}

#: timm families (modules) without convolutions beyond a patch embedding: transformers and MLPs,
#: outside the benchmark (the issue asks for the convolutional families and hybrids).
TIMM_NON_CONV_FAMILIES: dict[str, str] = {
    **{
        f: "vision transformer (patch embedding + attention)"
        for f in (
            "beit",
            "cait",
            "convit",
            "crossvit",
            "deepseek_vit",
            "deit",
            "eva",
            "gemma4_vit",
            "hiera",
            "hieradet_sam2",
            "naflexvit",
            "qwen3_vit",
            "swin_transformer",
            "swin_transformer_v2",
            "swin_transformer_v2_cr",
            "tnt",
            "vision_transformer",
            "vision_transformer_relpos",
            "vision_transformer_sam",
        )
    },
    "mlp_mixer": "MLP mixer",
    "sequencer": "LSTM sequencer",
    # convolutional, but left out: none of them runs at a small input, or it is too large
    "mobilenetv5": "left out: 294M parameters (mobilenetv5_300m), too slow for the CPU benchmark",
    "nest": "left out: builds only at its fixed 224x224 input (attention over fixed blocks)",
    "volo": "left out: outlook attention fails at a small input (fixed 14x14 tokens)",
}

#: a quick subset for the default test run (< 60 s in all): timm's plain ResNet, DLA's tree of
#: concatenations, ConvNeXt (depthwise 7x7, LayerNorm2d, layer scale), EfficientNet-Lite
#: (BatchNormAct2d, depthwise); RegNet's ConvNormAct
#: (read-only width properties) is round-tripped in tests/test_timm_arch.py
TIMM_QUICK = ("resnet10t", "dla46_c", "convnext_atto", "efficientnet_lite0")


def torchvision_models() -> dict[str, tuple[str, int, dict[str, Any]]]:
    """torchvision's classification zoo: name -> (family, input size, kwargs). Inputs are small
    (64, Inception 96); the ViTs and MaxViT need 224 (fixed position embeddings / windows)."""
    import torchvision

    out: dict[str, tuple[str, int, dict[str, Any]]] = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        family = name.rstrip("0123456789_").split("_")[0]
        size = 224 if name.startswith(("vit_", "maxvit")) else 96 if name.startswith("inception") else 64
        out[name] = (family, size, {})
    return out
