"""EagleEye's sampled strategies on real channel graphs, pinned.

The expected counts were produced by the code on main before the refinement routine was shared
between ``ChannelGraph.counts_for_flops`` and EagleEye's sampler (tests that pass on both sides
show the strategies did not change). The cases include tight tolerances and channel multiples,
where the sampler's final correction moves channels (at the default 1% it rarely has to).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

from compressor.graph import build_graph
from compressor.methods.eagleeye import sample_strategy
from compressor.models.zoo import mobilenet_v1, resnet_cifar, vgg_small

NETS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    # the README demo's architecture (examples/resnet_mnist.pt)
    "demo": (lambda: resnet_cifar(num_classes=10, in_channels=1, depth=8, width=16), (1, 1, 28, 28)),
    "vgg_small": (vgg_small, (1, 3, 32, 32)),
    "mobilenet_v1": (mobilenet_v1, (1, 3, 32, 32)),
}

# (net, flops, multiple, tolerance, seed) -> per index 0..3: (kept counts in prunable-group order, MACs, draws)
PINNED = [
    (("demo", 0.5, 8, 0.01, 0), [([8, 16, 32, 32, 32, 16], 4672960, 1), ([16, 8, 16, 24, 48, 48], 4717024, 3), ([16, 8, 16, 24, 56, 40], 4638704, 1), ([16, 8, 32, 24, 8, 32], 4628816, 2)]),
    (("demo", 0.3, 1, 0.001, 1), [([11, 3, 22, 16, 55, 36], 2804428, 3), ([8, 4, 30, 32, 6, 6], 2804232, 3), ([15, 5, 14, 26, 36, 11], 2803062, 2), ([16, 11, 2, 2, 4, 51], 2801762, 1)]),
    (("demo", 0.5, 1, 0.001, 0), [([9, 13, 32, 32, 27, 21], 4674429, 1), ([7, 16, 18, 18, 64, 60], 4675240, 2), ([15, 11, 20, 26, 38, 21], 4673118, 2), ([8, 14, 29, 28, 37, 38], 4668943, 5)]),
    (("vgg_small", 0.5, 1, 0.001, 0), [([8, 13, 31, 32, 21, 14, 63], 4954302, 1), ([9, 12, 18, 16, 61, 56, 72], 4952016, 1), ([13, 12, 27, 23, 28, 37, 73], 4953614, 2), ([8, 8, 26, 27, 53, 40, 51], 4961694, 1)]),
    (("vgg_small", 0.3, 8, 0.001, 2), [([8, 16, 24, 8, 8, 40, 128], 2970880, 16), ([8, 16, 24, 8, 8, 40, 128], 2970880, 2), ([16, 8, 8, 32, 16, 32, 128], 2966784, 9), ([16, 8, 16, 16, 16, 32, 128], 2966784, 3)]),
    (("vgg_small", 0.5, 16, 0.001, 0), [([10, 13, 32, 16, 48, 32, 128], 4957440, 7), ([16, 2, 16, 32, 64, 48, 64], 4952704, 2), ([15, 9, 16, 32, 48, 32, 112], 4955232, 1), ([8, 15, 32, 16, 48, 32, 112], 4955232, 2)]),
    (("mobilenet_v1", 0.5, 8, 0.001, 0), [([24, 56, 128, 128, 136, 120, 336, 304, 352, 240, 272, 512, 536, 1008], 23181376, 1), ([16, 40, 56, 48, 248, 216, 232, 504, 256, 296, 512, 472, 920, 480], 23178112, 1), ([32, 48, 72, 112, 224, 192, 464, 360, 320, 408, 320, 168, 504, 488], 23157904, 1), ([16, 32, 104, 104, 208, 144, 408, 272, 488, 456, 224, 344, 624, 880], 23182080, 1)]),
    (("mobilenet_v1", 0.5, 1, 0.01, 3), [([31, 53, 54, 74, 239, 176, 334, 453, 238, 470, 366, 319, 703, 586], 23209064, 1), ([28, 50, 103, 97, 177, 123, 416, 359, 293, 328, 340, 428, 825, 473], 23176706, 1), ([32, 18, 27, 113, 256, 245, 284, 354, 498, 421, 507, 28, 736, 455], 23182486, 1), ([30, 50, 39, 111, 108, 158, 348, 453, 458, 384, 182, 456, 752, 1009], 23167386, 1)]),
]  # fmt: skip

_graphs: dict[str, object] = {}


def _graph(net: str) -> object:
    if net not in _graphs:
        factory, shape = NETS[net]
        torch.manual_seed(0)
        _graphs[net] = build_graph(factory().eval(), input_shape=shape)
    return _graphs[net]


@pytest.mark.parametrize("case,expected", PINNED, ids=["-".join(map(str, c)) for c, _ in PINNED])
def test_sampled_strategies_are_pinned(case: tuple, expected: list) -> None:
    net, flops, multiple, tolerance, seed = case
    graph = _graph(net)
    names = [g.name for g in graph.prunable]  # type: ignore[attr-defined]
    got = []
    for index in range(len(expected)):
        s = sample_strategy(graph, flops, seed=seed, index=index, multiple=multiple, tolerance=tolerance)
        got.append(([s.counts[n] for n in names], s.macs, s.attempts))
    assert got == [tuple(e) for e in expected]
